//! The CUDA device engine (feature `cuda`): runs the device executor's programs
//! ([`acspeed_core::device`]) on streams, one per queue, with no host thread on the data path.
//!
//! - **Peer memory**: legacy CUDA IPC. Each receiver allocates, per connection, one `cuMemAlloc`
//!   buffer holding the connection's slots and its *ready* counter; each sender allocates the
//!   connection's *taken* counter. The handles (`cuIpcGetMemHandle`) are traded once, when
//!   a program first uses the connection, through the communicator ([`PeerExchange`]), and
//!   opened with `cuIpcOpenMemHandle` (lazy peer access). Why not the VMM path: docs/CUDA.md.
//! - **Ordering**: a wait is `cuStreamWaitValue64` (GEQ) on this GPU's own memory, a signal is
//!   `cuStreamWriteValue64` into the peer's (fenced, so the bytes copied before it are visible
//!   first); a send is `cuMemcpyAsync` into the peer's slot; a reduction is a kernel from
//!   `reduce.ptx`, loaded with `cuModuleLoadData` (the driver JIT-compiles it).
//! - **Failure**: before each wait the queue writes the wait's index into mapped host memory,
//!   so a call that misses its deadline names the rank it waits for; its waits are then
//!   released by raising this GPU's counters, and the engine refuses further calls.
//!
//! The engine needs P2P between the two GPUs of every connection (NVLink, or PCIe up to a
//! switch); pairs without it keep the staging path (docs/CUDA.md).

use crate::cuda::cuda_err;
use acspeed_core::device::{
    Conn, DevBuffers, DevCall, DevOp, DeviceEngine, Halt, Loc, PeerExchange, SlotShape,
    READY_TAG_BITS,
};
use acspeed_core::kernels::device::{avg_kernel, reduce_kernel, REDUCE_PTX};
use acspeed_core::plan::{Buf, Rank};
use acspeed_core::{DType, Error, Result};
use cudarc::driver::{result, sys, CudaContext};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Queues one engine can run (two per lane; verified plans have at most 16 channels, so 16
/// lanes of one channel each).
const MAX_QUEUES: usize = 32;
/// Threads per block of the reduction kernels, and the most blocks one launch uses (the
/// kernels stride over the rest).
const BLOCK: u32 = 512;
const MAX_BLOCKS: u64 = 1024;
/// What a released wait sees: above any counter a job reaches (and positive as a signed
/// difference, which is how GEQ compares).
const RELEASED: u32 = 0x4000_0000;

/// A receiving connection: this GPU's slots and ready counter, the sender's taken counter.
struct Inbound {
    own: sys::CUdeviceptr,
    peer_taken: sys::CUdeviceptr,
}

/// A sending connection: this GPU's taken counter, the receiver's slots and ready counter.
struct Outbound {
    own: sys::CUdeviceptr,
    peer_slots: sys::CUdeviceptr,
}

struct Inner {
    shape: Option<SlotShape>,
    module: sys::CUmodule,
    funcs: HashMap<String, sys::CUfunction>,
    streams: Vec<sys::CUstream>,
    /// One u64 per queue: marks passed so far (device memory, waited on by sibling queues).
    marks: sys::CUdeviceptr,
    mark_base: [u64; MAX_QUEUES],
    /// One u64 per queue in mapped host memory: the index of the wait it reached.
    progress_host: *mut u64,
    progress_dev: sys::CUdeviceptr,
    inbound: HashMap<Conn, Inbound>,
    outbound: HashMap<Conn, Outbound>,
    /// Allocations of this process, freed on drop; IPC mappings, closed on drop.
    owned: Vec<sys::CUdeviceptr>,
    opened: Vec<sys::CUdeviceptr>,
    scratch: (sys::CUdeviceptr, usize),
    failed: Option<String>,
}

// SAFETY: the raw handles are used only with the engine's context bound, under the mutex.
unsafe impl Send for Inner {}

/// One rank's GPU as a device engine.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    rank: Rank,
    exchange: Arc<dyn PeerExchange>,
    inner: Mutex<Inner>,
}

impl CudaDevice {
    /// Binds to device `ordinal` (torch's primary context) for `rank`; handles travel through
    /// `exchange`. Fails with the reason where the GPU cannot run the device executor.
    pub fn new(ordinal: usize, rank: Rank, exchange: Arc<dyn PeerExchange>) -> Result<Self> {
        let ctx = crate::cuda::open_context(ordinal)?;
        let dev = ctx.cu_device();
        for (attr, what) in [
            (
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS,
                "64-bit stream memory operations (cuStreamWaitValue64)",
            ),
            (
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING,
                "unified addressing",
            ),
        ] {
            // SAFETY: a valid device and attribute.
            let v = unsafe { result::device::get_attribute(dev, attr) }
                .map_err(|e| cuda_err("reading a device attribute", e))?;
            if v == 0 {
                return Err(Error::Device(format!(
                    "device {ordinal} does not support {what}, which the device executor needs"
                )));
            }
        }
        let ptx = CString::new(REDUCE_PTX).map_err(|_| Error::invalid("PTX with a NUL byte"))?;
        // SAFETY: a NUL-terminated PTX text.
        let module = unsafe { result::module::load_data(ptx.as_ptr() as *const c_void) }
            .map_err(|e| cuda_err("loading the reduction kernels (JIT of reduce.ptx)", e))?;
        // SAFETY: plain allocations in the bound context.
        let marks = unsafe { result::malloc_sync(MAX_QUEUES * 8) }
            .map_err(|e| cuda_err("allocating queue marks", e))?;
        unsafe { result::memset_d8_sync(marks, 0, MAX_QUEUES * 8) }
            .map_err(|e| cuda_err("clearing queue marks", e))?;
        let progress_host = unsafe {
            result::malloc_host(
                MAX_QUEUES * 8,
                sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        }
        .map_err(|e| cuda_err("allocating mapped progress memory", e))?
            as *mut u64;
        let mut progress_dev = 0;
        // SAFETY: the host allocation above was made with DEVICEMAP.
        unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut progress_dev, progress_host as *mut c_void, 0)
        }
        .result()
        .map_err(|e| cuda_err("mapping progress memory", e))?;
        Ok(CudaDevice {
            ctx,
            rank,
            exchange,
            inner: Mutex::new(Inner {
                shape: None,
                module,
                funcs: HashMap::new(),
                streams: Vec::new(),
                marks,
                mark_base: [0; MAX_QUEUES],
                progress_host,
                progress_dev,
                inbound: HashMap::new(),
                outbound: HashMap::new(),
                owned: vec![marks],
                opened: Vec::new(),
                scratch: (0, 0),
                failed: None,
            }),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))
    }

    /// A zeroed device allocation with its IPC handle.
    fn alloc_shared(inner: &mut Inner, bytes: usize) -> Result<(sys::CUdeviceptr, [u8; 64])> {
        // SAFETY: plain allocation; `cuMemAlloc` memory (not the async pool) is what IPC exports.
        let p = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| cuda_err(&format!("allocating {bytes} bytes of connection memory"), e))?;
        inner.owned.push(p);
        unsafe { result::memset_d8_sync(p, 0, bytes) }
            .map_err(|e| cuda_err("clearing connection memory", e))?;
        let mut h = sys::CUipcMemHandle_st { reserved: [0; 64] };
        // SAFETY: `p` is a live cuMemAlloc allocation.
        unsafe { sys::cuIpcGetMemHandle(&mut h, p) }
            .result()
            .map_err(|e| cuda_err("exporting connection memory (cuIpcGetMemHandle)", e))?;
        Ok((p, h.reserved.map(|c| c as u8)))
    }

    fn open_shared(inner: &mut Inner, peer: Rank, handle: &[u8]) -> Result<sys::CUdeviceptr> {
        let mut h = sys::CUipcMemHandle_st { reserved: [0; 64] };
        for (d, s) in h.reserved.iter_mut().zip(handle) {
            *d = *s as std::ffi::c_char;
        }
        let mut p = 0;
        // SAFETY: a handle rank `peer` exported for this connection.
        unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut p,
                h,
                sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
            )
        }
        .result()
        .map_err(|e| Error::Device(format!(
            "CUDA opening rank {peer}'s connection memory (cuIpcOpenMemHandle; the two GPUs need peer access): {e}"
        )))?;
        inner.opened.push(p);
        Ok(p)
    }

    fn func(inner: &mut Inner, name: &str) -> Result<sys::CUfunction> {
        if let Some(f) = inner.funcs.get(name) {
            return Ok(*f);
        }
        let c = CString::new(name).map_err(|_| Error::invalid("kernel name"))?;
        // SAFETY: the module is loaded for the engine's lifetime.
        let f = unsafe { result::module::get_function(inner.module, c) }
            .map_err(|e| cuda_err(&format!("finding kernel {name}"), e))?;
        inner.funcs.insert(name.to_string(), f);
        Ok(f)
    }

    /// Releases every wait on this GPU's counters (a failed call), so its streams drain.
    fn release(inner: &Inner) {
        let shape = inner.shape.unwrap_or(SlotShape {
            depth: 0,
            slot_bytes: 0,
        });
        let ready_at = (shape.depth * shape.slot_bytes) as u64;
        let counters = inner
            .inbound
            .values()
            .map(|c| (c.own + ready_at, 2))
            .chain(inner.outbound.values().map(|c| (c.own, 2)))
            .chain(std::iter::once((inner.marks, 2 * MAX_QUEUES)));
        for (p, words) in counters {
            // SAFETY: our own allocations; a synchronous memset is not ordered behind the
            // (non-blocking) streams it releases.
            let _ = unsafe { sys::cuMemsetD32_v2(p, RELEASED, words) };
        }
    }

    fn ptr(inner: &Inner, shape: SlotShape, bufs: &DevBuffers, loc: Loc) -> Result<u64> {
        let slot = |msg: u64| (msg as usize % shape.depth * shape.slot_bytes) as u64;
        Ok(match loc {
            Loc::Buf { buf, at } => {
                at as u64
                    + match buf {
                        Buf::Input => bufs.input,
                        Buf::Output => bufs.output,
                        Buf::Scratch => inner.scratch.0,
                    }
            }
            Loc::Inbox { from, channel, msg } => {
                inner
                    .inbound
                    .get(&(from, channel))
                    .ok_or_else(|| Error::invalid(format!("no connection from rank {from}")))?
                    .own
                    + slot(msg)
            }
            Loc::Outbox { to, channel, msg } => {
                inner
                    .outbound
                    .get(&(to, channel))
                    .ok_or_else(|| Error::invalid(format!("no connection to rank {to}")))?
                    .peer_slots
                    + slot(msg)
            }
        })
    }

    /// Enqueues `ops` on queue `q`'s stream.
    fn enqueue(
        inner: &mut Inner,
        q: usize,
        ops: &[DevOp],
        bufs: &DevBuffers,
        call: DevCall,
    ) -> Result<u64> {
        let shape = inner
            .shape
            .ok_or_else(|| Error::invalid("no connections set up"))?;
        let s = inner.streams[q];
        let ready_at = (shape.depth * shape.slot_bytes) as u64;
        let elem = call.dtype.size();
        let mut marks = 0u64;
        let wait = |inner: &Inner, i: usize, addr: u64, value: u64| -> Result<()> {
            // SAFETY: the progress word of queue q, then a wait on our own memory.
            unsafe {
                sys::cuStreamWriteValue64_v2(
                    s,
                    inner.progress_dev + 8 * q as u64,
                    i as u64,
                    sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
                )
                .result()
                .map_err(|e| cuda_err("writing queue progress", e))?;
                sys::cuStreamWaitValue64_v2(
                    s,
                    addr,
                    value,
                    sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
                )
                .result()
                .map_err(|e| cuda_err("enqueuing a wait (cuStreamWaitValue64)", e))
            }
        };
        let write = |addr: u64, value: u64| -> Result<()> {
            // SAFETY: a counter word of ours or a peer's opened through IPC; fenced by default.
            unsafe {
                sys::cuStreamWriteValue64_v2(
                    s,
                    addr,
                    value,
                    sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
                )
            }
            .result()
            .map_err(|e| cuda_err("enqueuing a signal (cuStreamWriteValue64)", e))
        };
        for (i, op) in ops.iter().enumerate() {
            match op {
                DevOp::WaitReady { from, channel, msg } => {
                    let c = inner
                        .inbound
                        .get(&(*from, *channel))
                        .ok_or_else(|| Error::invalid(format!("no connection from rank {from}")))?;
                    wait(inner, i, c.own + ready_at, (msg + 1) << READY_TAG_BITS)?;
                }
                DevOp::WaitSlot { to, channel, msg } => {
                    let c = inner
                        .outbound
                        .get(&(*to, *channel))
                        .ok_or_else(|| Error::invalid(format!("no connection to rank {to}")))?;
                    if *msg >= shape.depth as u64 {
                        wait(inner, i, c.own, msg + 1 - shape.depth as u64)?;
                    }
                }
                DevOp::WaitQueue { queue, mark } => {
                    let base = inner.mark_base.get(*queue).copied().ok_or_else(|| {
                        Error::Plan(format!("a wait on queue {queue}, which does not exist"))
                    })?;
                    wait(inner, i, inner.marks + 8 * *queue as u64, base + mark)?;
                }
                DevOp::Copy { dst, src, len } => {
                    if *len > 0 {
                        let (d, sp) = (
                            Self::ptr(inner, shape, bufs, *dst)?,
                            Self::ptr(inner, shape, bufs, *src)?,
                        );
                        // SAFETY: both ranges lie in the call's buffers or a connection's slot
                        // (unified addresses, so one call covers local and peer memory).
                        unsafe { sys::cuMemcpyAsync(d, sp, *len, s) }
                            .result()
                            .map_err(|e| cuda_err("enqueuing a copy", e))?;
                    }
                }
                DevOp::Reduce { dst, srcs, len } => {
                    let op = call.op.ok_or_else(|| {
                        Error::Plan("a reduction in a call without a reduce op".into())
                    })?;
                    let name = reduce_kernel(call.dtype, op).ok_or_else(|| {
                        Error::invalid(format!("no device kernel for {op} on {}", call.dtype))
                    })?;
                    let f = Self::func(inner, &name)?;
                    let n = (*len / elem) as u64;
                    if n == 0 {
                        continue;
                    }
                    let blocks = n.div_ceil(BLOCK as u64).min(MAX_BLOCKS) as u32;
                    let mut d = Self::ptr(inner, shape, bufs, *dst)?;
                    // Sources in list order, one launch each: the CPU's fold, element by element.
                    for src in srcs {
                        let mut sp = Self::ptr(inner, shape, bufs, *src)?;
                        let mut nn = n;
                        let mut args = [
                            &mut d as *mut u64 as *mut c_void,
                            &mut sp as *mut u64 as *mut c_void,
                            &mut nn as *mut u64 as *mut c_void,
                        ];
                        // SAFETY: the kernel's signature is (T*, const T*, u64); the ranges
                        // hold n elements.
                        unsafe {
                            result::launch_kernel(f, (blocks, 1, 1), (BLOCK, 1, 1), 0, s, &mut args)
                        }
                        .map_err(|e| cuda_err(&format!("launching {name}"), e))?;
                    }
                }
                DevOp::Ready { to, channel, msg } => {
                    let c = inner
                        .outbound
                        .get(&(*to, *channel))
                        .ok_or_else(|| Error::invalid(format!("no connection to rank {to}")))?;
                    write(c.peer_slots + ready_at, call.ready_word(*msg))?;
                }
                DevOp::Taken { from, channel, msg } => {
                    let c = inner
                        .inbound
                        .get(&(*from, *channel))
                        .ok_or_else(|| Error::invalid(format!("no connection from rank {from}")))?;
                    write(c.peer_taken, msg + 1)?;
                }
                DevOp::Mark => {
                    marks += 1;
                    write(inner.marks + 8 * q as u64, inner.mark_base[q] + marks)?;
                }
            }
        }
        Ok(marks)
    }
}

impl DeviceEngine for CudaDevice {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn connect(&self, sends: &[Conn], recvs: &[Conn], shape: SlotShape) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.shape {
            Some(s) if s != shape => {
                return Err(Error::invalid(format!(
                    "device connections were set up with {s:?}; asked for {shape:?}"
                )))
            }
            _ => inner.shape = Some(shape),
        }
        let new_in: Vec<Conn> = recvs
            .iter()
            .filter(|c| !inner.inbound.contains_key(c))
            .copied()
            .collect();
        let new_out: Vec<Conn> = sends
            .iter()
            .filter(|c| !inner.outbound.contains_key(c))
            .copied()
            .collect();
        if new_in.is_empty() && new_out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // Per peer: entries (kind, channel, handle); kind 0 = my slots for your sends to me,
        // kind 1 = my taken counter for my sends to you.
        let mut msgs: HashMap<Rank, Vec<u8>> = HashMap::new();
        let mut own_in = HashMap::new();
        let mut own_out = HashMap::new();
        let slots = shape.depth * shape.slot_bytes;
        for &(from, ch) in &new_in {
            let (p, h) = Self::alloc_shared(&mut inner, slots + 64)?;
            own_in.insert((from, ch), p);
            let m = msgs.entry(from).or_default();
            m.push(0);
            m.extend_from_slice(&ch.to_le_bytes());
            m.extend_from_slice(&h);
        }
        for &(to, ch) in &new_out {
            let (p, h) = Self::alloc_shared(&mut inner, 64)?;
            own_out.insert((to, ch), p);
            let m = msgs.entry(to).or_default();
            m.push(1);
            m.extend_from_slice(&ch.to_le_bytes());
            m.extend_from_slice(&h);
        }
        let mut peers: Vec<(Rank, Vec<u8>)> = msgs.into_iter().collect();
        peers.sort_by_key(|p| p.0);
        let replies = self.exchange.exchange(&peers)?;
        let mut peer_taken = HashMap::new();
        let mut peer_slots = HashMap::new();
        for ((peer, _), reply) in peers.iter().zip(replies) {
            for e in reply.chunks(69) {
                let [kind, c0, c1, c2, c3, h @ ..] = e else {
                    return Err(Error::Remote {
                        rank: peer.0,
                        detail: "sent a malformed connection handle".into(),
                    });
                };
                let ch = u32::from_le_bytes([*c0, *c1, *c2, *c3]);
                let p = Self::open_shared(&mut inner, *peer, h)?;
                match kind {
                    0 => peer_slots.insert((*peer, ch), p),
                    _ => peer_taken.insert((*peer, ch), p),
                };
            }
        }
        for (c, own) in own_in {
            let peer_taken = peer_taken.remove(&c).ok_or_else(|| Error::Remote {
                rank: c.0 .0,
                detail: format!("did not set up its send connection on channel {}", c.1),
            })?;
            inner.inbound.insert(c, Inbound { own, peer_taken });
        }
        for (c, own) in own_out {
            let peer_slots = peer_slots.remove(&c).ok_or_else(|| Error::Remote {
                rank: c.0 .0,
                detail: format!("did not set up its receive connection on channel {}", c.1),
            })?;
            inner.outbound.insert(c, Outbound { own, peer_slots });
        }
        Ok(())
    }

    fn run(
        &self,
        queues: &[Vec<DevOp>],
        bufs: DevBuffers,
        scratch_bytes: usize,
        call: DevCall,
        deadline: Instant,
    ) -> std::result::Result<(), Halt> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &inner.failed {
            return Err(Halt::Failed(Error::Aborted(why.clone())));
        }
        if queues.len() > MAX_QUEUES {
            return Err(Halt::Failed(Error::invalid(format!(
                "{} device queues; the engine runs at most {MAX_QUEUES}",
                queues.len()
            ))));
        }
        let fail = |e: Error| Halt::Failed(e);
        self.bind().map_err(fail)?;
        while inner.streams.len() < queues.len() {
            let s = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| fail(cuda_err("creating a stream", e)))?;
            inner.streams.push(s);
        }
        if inner.scratch.1 < scratch_bytes {
            if inner.scratch.1 > 0 {
                // SAFETY: no call is in flight (the previous one completed or failed).
                let _ = unsafe { result::free_sync(inner.scratch.0) };
            }
            // SAFETY: plain allocation.
            let p = unsafe { result::malloc_sync(scratch_bytes) }
                .map_err(|e| fail(cuda_err("allocating scratch", e)))?;
            inner.scratch = (p, scratch_bytes);
        }
        for q in 0..MAX_QUEUES {
            // SAFETY: mapped host memory of MAX_QUEUES words; no stream writes it between calls.
            unsafe { std::ptr::write_volatile(inner.progress_host.add(q), 0) };
        }
        let mut added = vec![0u64; queues.len()];
        if let Some(ev) = bufs.ready {
            for &s in &inner.streams[..queues.len()] {
                // SAFETY: the caller keeps the producer's event alive until the call returns.
                unsafe {
                    result::stream::wait_event(
                        s,
                        ev as sys::CUevent,
                        sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                }
                .map_err(|e| fail(cuda_err("ordering the call after the producer's stream", e)))?;
            }
        }
        for (q, ops) in queues.iter().enumerate() {
            added[q] = Self::enqueue(&mut inner, q, ops, &bufs, call).map_err(fail)?;
        }
        let mut events = Vec::with_capacity(queues.len());
        for q in 0..queues.len() {
            let ev = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| fail(cuda_err("creating an event", e)))?;
            // SAFETY: live event and stream.
            unsafe { result::event::record(ev, inner.streams[q]) }
                .map_err(|e| fail(cuda_err("recording an event", e)))?;
            events.push(ev);
        }
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut nap = Duration::from_micros(5);
        let outcome = loop {
            // SAFETY: events recorded above, destroyed below.
            pending.retain(|&q| unsafe { result::event::query(events[q]) }.is_err());
            if pending.is_empty() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                // SAFETY: mapped host memory the streams write; read after they stalled.
                // Finished queues count as done; the others stand at the wait they reached.
                let done = (0..queues.len())
                    .map(|q| match pending.contains(&q) {
                        true => {
                            (unsafe { std::ptr::read_volatile(inner.progress_host.add(q)) })
                                as usize
                        }
                        false => queues[q].len(),
                    })
                    .collect();
                Self::release(&inner);
                inner.failed = Some(format!("device call #{} timed out", call.seq));
                break Err(Halt::TimedOut { done });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        };
        for ev in events {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { result::event::destroy(ev) };
        }
        for (q, a) in added.into_iter().enumerate() {
            inner.mark_base[q] += a;
        }
        outcome
    }

    fn ready_words(&self, recvs: &[Conn]) -> Result<Vec<u64>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.bind()?;
        let ready_at = inner
            .shape
            .map(|s| (s.depth * s.slot_bytes) as u64)
            .unwrap_or(0);
        recvs
            .iter()
            .map(|c| {
                let own = inner
                    .inbound
                    .get(c)
                    .ok_or_else(|| Error::invalid(format!("no connection from rank {}", c.0)))?
                    .own;
                let mut w = [0u64];
                // SAFETY: the connection's ready word, read after the call's streams finished.
                unsafe { result::memcpy_dtoh_sync(&mut w, own + ready_at) }
                    .map_err(|e| cuda_err("reading a ready word", e))?;
                Ok(w[0])
            })
            .collect()
    }

    fn scale_avg(&self, buf: u64, bytes: usize, dtype: DType, n: usize) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.bind()?;
        let name = avg_kernel(dtype);
        let f = Self::func(&mut inner, &name)?;
        let (mut p, mut len, mut count) = (buf, (bytes / dtype.size()) as u64, n as u64);
        if len == 0 {
            return Ok(());
        }
        if inner.streams.is_empty() {
            let s = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| cuda_err("creating a stream", e))?;
            inner.streams.push(s);
        }
        let s = inner.streams[0];
        let blocks = len.div_ceil(BLOCK as u64).min(MAX_BLOCKS) as u32;
        let mut args = [
            &mut p as *mut u64 as *mut c_void,
            &mut len as *mut u64 as *mut c_void,
            &mut count as *mut u64 as *mut c_void,
        ];
        // SAFETY: the kernel's signature is (T*, u64 n, u64 count) over the caller's buffer.
        unsafe {
            result::launch_kernel(f, (blocks, 1, 1), (BLOCK, 1, 1), 0, s, &mut args)
                .map_err(|e| cuda_err(&format!("launching {name}"), e))?;
            result::stream::synchronize(s).map_err(|e| cuda_err("the average's epilogue", e))
        }
    }

    fn abort(&self, why: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if self.bind().is_ok() {
            Self::release(&inner);
        }
        inner.failed.get_or_insert_with(|| why.to_string());
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        Self::release(inner);
        // SAFETY: every handle below was created by this engine and is released once; the
        // streams are drained first so no queued operation touches freed memory.
        unsafe {
            for s in inner.streams.drain(..) {
                let _ = result::stream::synchronize(s);
                let _ = result::stream::destroy(s);
            }
            for p in inner.opened.drain(..) {
                let _ = sys::cuIpcCloseMemHandle(p);
            }
            for p in inner.owned.drain(..) {
                let _ = result::free_sync(p);
            }
            if inner.scratch.1 > 0 {
                let _ = result::free_sync(inner.scratch.0);
            }
            let _ = result::free_host(inner.progress_host as *mut c_void);
            let _ = result::module::unload(inner.module);
        }
    }
}
