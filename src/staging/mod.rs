//! Device buffers reduced on the host: the device side of CPU-Reduce.
//!
//! A device buffer is cut into chunks that flow through `depth` pinned host slots:
//!
//! ```text
//!   download (D2H) chunk i+2 ──┐
//!   allreduce on host  chunk i+1 ──┐        (the communicator, any transport)
//!   upload (H2D)       chunk i ────┴──  all three overlap
//! ```
//!
//! Each chunk is one ordinary host allreduce, so every rank makes the same calls in the same
//! order and results stay bitwise identical. When the allreduce is CPU-Reduce on one host, the
//! slots are skipped: the device copies go straight into and out of the host's shared staging
//! area ([`Communicator::allreduce_through_stage`]). The slots come from a [`SlotPool`] that keeps
//! them between calls (pinned allocation is slow, and per call it would cost every bucket), and
//! a device failure aborts the communicator so the peers fail at once naming this rank. The device is behind [`StagingDevice`]: the CUDA
//! implementation (feature `cuda`, cudarc with the driver loaded at run time) and
//! the stand-in of `acspeed-testkit` (a dev-dependency), which runs the same pipeline on plain
//! memory with asynchronous copy queues, so the pipeline's logic is tested on machines without
//! a GPU.

use crate::comm::Communicator;
use acspeed_core::{DType, Error, ReduceOp, Result};
use std::sync::Mutex;

/// The operations the pipeline needs from a device.
pub trait StagingDevice {
    /// Completion of one queued copy.
    type Event;

    /// Queues a copy of `len` bytes from device address `src` to host `dst` (download queue).
    ///
    /// # Safety
    /// `dst..dst+len` must stay valid and untouched until the event completes; `src` must be a
    /// valid device range.
    unsafe fn download(&self, dst: *mut u8, src: u64, len: usize) -> Result<Self::Event>;

    /// Queues a copy of `len` bytes from host `src` to device address `dst` (upload queue).
    ///
    /// # Safety
    /// As `download`, with the roles swapped.
    unsafe fn upload(&self, dst: u64, src: *const u8, len: usize) -> Result<Self::Event>;

    /// Blocks until the event's copy is complete.
    fn wait(&self, ev: Self::Event) -> Result<()>;

    /// Host memory the device can copy to and from asynchronously (pinned for CUDA).
    fn alloc_host(&self, bytes: usize) -> Result<HostSlot>;

    /// Makes the downloads queued from now on wait for `event`, a device event the buffer's
    /// producer recorded on its own stream (for CUDA a `CUevent`): the caller then need not
    /// block until its stream is done, and backward keeps running while a bucket waits.
    fn after_event(&self, event: u64) -> Result<()>;

    /// Makes host memory it did not allocate (CPU-Reduce's shared staging area) a valid
    /// target of asynchronous copies, until the returned guard is dropped.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped while the guard lives.
    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<acspeed_core::PinGuard>;
}

/// A device buffer to reduce: its address, length, and optionally the event after which its
/// contents are ready (see [`StagingDevice::after_event`]).
#[derive(Clone, Copy, Debug)]
pub struct DeviceBuf {
    pub addr: u64,
    pub bytes: usize,
    pub ready: Option<u64>,
}

/// A host staging buffer; frees itself through its deallocator.
pub struct HostSlot {
    ptr: *mut u8,
    len: usize,
    free: Option<Box<dyn FnOnce(*mut u8) + Send>>,
}

// SAFETY: the slot owns its memory; the pipeline hands it to one copy or reduction at a time.
unsafe impl Send for HostSlot {}

impl HostSlot {
    /// Wraps memory with its deallocator.
    pub fn new(ptr: *mut u8, len: usize, free: Box<dyn FnOnce(*mut u8) + Send>) -> Self {
        HostSlot {
            ptr,
            len,
            free: Some(free),
        }
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        if let Some(f) = self.free.take() {
            f(self.ptr);
        }
    }
}

/// Host slots kept between staged calls, so a communicator allocates its pinned memory once
/// rather than on every bucket. Bounded: a returned slot that would make the pool hold more
/// than `max_bytes` is freed instead. Dropping the pool frees every slot (for CUDA, with the
/// context the slot keeps alive).
pub struct SlotPool {
    free: Mutex<Vec<HostSlot>>,
    max_bytes: usize,
}

impl SlotPool {
    pub fn new(max_bytes: usize) -> Self {
        SlotPool {
            free: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// A pool that holds exactly what one call with `p` uses.
    pub fn for_params(p: StagingParams) -> Self {
        SlotPool::new(p.chunk_bytes.saturating_mul(p.depth))
    }

    /// The smallest kept slot of at least `bytes`, or a new one from `device`.
    fn take<D: StagingDevice>(&self, device: &D, bytes: usize) -> Result<HostSlot> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..free.len())
            .filter(|&i| free[i].len() >= bytes)
            .min_by_key(|&i| free[i].len());
        match best {
            Some(i) => Ok(free.swap_remove(i)),
            None => {
                drop(free);
                device.alloc_host(bytes)
            }
        }
    }

    fn give(&self, slot: HostSlot) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = free.iter().map(|s| s.len()).sum();
        if held + slot.len() <= self.max_bytes {
            free.push(slot);
        }
    }

    /// Bytes of slots kept for the next call.
    pub fn retained_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(|s| s.len()).sum()
    }
}

/// Pipeline shape: chunk size in bytes and number of staging slots (>= 2).
#[derive(Clone, Copy, Debug)]
pub struct StagingParams {
    pub chunk_bytes: usize,
    pub depth: usize,
}

impl Default for StagingParams {
    fn default() -> Self {
        StagingParams {
            chunk_bytes: 4 << 20,
            depth: 3,
        }
    }
}

/// In-place allreduce of `bytes` bytes of `dtype` at device address `dev`, staged through the
/// host in slots from `pool`. On error nothing is left queued that still reads or writes the
/// slots; a device error also aborts `comm`, so the peers, waiting for this rank's next chunk,
/// fail at once with its reason instead of at the timeout.
pub fn staged_allreduce<D: StagingDevice + Sync>(
    comm: &Communicator,
    device: &D,
    pool: &SlotPool,
    buf: DeviceBuf,
    dtype: DType,
    op: ReduceOp,
    p: StagingParams,
) -> Result<()> {
    let r = match buf.ready {
        Some(ev) => device.after_event(ev),
        None => Ok(()),
    }
    .and_then(|()| {
        let io = DeviceIo {
            device,
            base: buf.addr,
        };
        // CPU-Reduce on one host: the device copies go straight into and out of the
        // shared staging area, with no pinned slot in between.
        if comm.allreduce_through_stage(&io, buf.bytes, dtype, op)? {
            return Ok(());
        }
        staged_inner(comm, device, pool, buf.addr, buf.bytes, dtype, op, p)
    });
    if let Err(e @ Error::Device(_)) = &r {
        // The transports name this rank to the peers.
        comm.abort(&e.to_string());
    }
    r
}

/// A device buffer as CPU-Reduce's staging area reads and writes it: each segment is one
/// download or upload, waited for before the area's counters move on.
struct DeviceIo<'a, D> {
    device: &'a D,
    base: u64,
}

impl<D: StagingDevice + Sync> acspeed_core::StageIo for DeviceIo<'_, D> {
    unsafe fn fill(&self, dst: *mut u8, off: usize, len: usize) -> Result<()> {
        // SAFETY: the area hands us `dst` for `len` bytes; the range lies in the buffer.
        let ev = unsafe { self.device.download(dst, self.base + off as u64, len)? };
        self.device.wait(ev)
    }

    unsafe fn drain(&self, src: *const u8, off: usize, len: usize) -> Result<()> {
        // SAFETY: as above; `src` stays unchanged until the wait returns.
        let ev = unsafe { self.device.upload(self.base + off as u64, src, len)? };
        self.device.wait(ev)
    }

    unsafe fn pin(&self, ptr: *mut u8, len: usize) -> Result<Option<acspeed_core::PinGuard>> {
        // SAFETY: forwarded; the communicator keeps the area mapped while the guard lives.
        unsafe { self.device.register_host(ptr, len) }.map(Some)
    }
}

#[allow(clippy::too_many_arguments)]
fn staged_inner<D: StagingDevice + Sync>(
    comm: &Communicator,
    device: &D,
    pool: &SlotPool,
    dev: u64,
    bytes: usize,
    dtype: DType,
    op: ReduceOp,
    p: StagingParams,
) -> Result<()> {
    let es = dtype.size();
    if bytes % es != 0 {
        return Err(Error::invalid(format!(
            "staged allreduce: {bytes} bytes is not a whole number of {dtype} elements"
        )));
    }
    if p.depth < 2 {
        return Err(Error::invalid(
            "staged allreduce needs at least 2 staging slots",
        ));
    }
    let chunk = (p.chunk_bytes / es).max(1) * es;
    let ranges: Vec<(usize, usize)> = (0..bytes)
        .step_by(chunk)
        .map(|o| (o, chunk.min(bytes - o)))
        .collect();
    // CPU-Reduce across staging domains: each chunk's host reduces read it from the device
    // straight into the shared area (no download into the slot, no copy from the slot into
    // the area), and the slot only receives the result for the rest of the plan.
    let fed = match ranges.first() {
        Some(&(_, len)) => comm.would_feed(len)?,
        None => false,
    };
    if ranges.is_empty() {
        // Zero elements: still one (synchronising, checked) collective, like host buffers.
        return comm.allreduce_bytes(&mut [], dtype, op);
    }
    // One slot per chunk when there are fewer chunks than slots.
    let depth = p.depth.min(ranges.len());
    let mut slots: Vec<HostSlot> = Vec::with_capacity(depth);
    for _ in 0..depth {
        match pool.take(device, chunk) {
            Ok(s) => slots.push(s),
            Err(e) => {
                slots.into_iter().for_each(|s| pool.give(s));
                return Err(e);
            }
        }
    }
    let mut downloads: std::collections::VecDeque<D::Event> = std::collections::VecDeque::new();
    let mut last_upload: Option<D::Event> = None;
    let mut result = Ok(());
    let mut issued = 0;
    // Prefetch into all but one slot (that one frees up when chunk 0 is uploaded); a single
    // chunk has a single slot. Fed chunks are not downloaded.
    while !fed && issued < ranges.len() && issued < (depth - 1).max(1) {
        let (off, len) = ranges[issued];
        // SAFETY: slot `issued` is unused; the device range lies in the buffer.
        downloads.push_back(unsafe {
            device.download(slots[issued % depth].as_ptr(), dev + off as u64, len)?
        });
        issued += 1;
    }
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let slot = &slots[i % depth];
        if fed {
            // The slot's last chunk (i - depth) finished uploading at iteration i - depth + 1.
            // SAFETY: so nothing reads the slot; it holds `len` bytes.
            let host = unsafe { std::slice::from_raw_parts_mut(slot.as_ptr(), len) };
            let io = DeviceIo {
                device,
                base: dev + off as u64,
            };
            let r = comm.allreduce_fed(host, &io, dtype, op).and_then(|done| {
                if done {
                    return Ok(());
                }
                // A chunk of another size class may run another algorithm: staged as usual.
                // SAFETY: the slot is free (above) and the device range lies in the buffer.
                let ev = unsafe { device.download(slot.as_ptr(), dev + off as u64, len)? };
                device.wait(ev)?;
                comm.allreduce_bytes(host, dtype, op)
            });
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        } else {
            let ev = downloads.pop_front().expect("download issued ahead");
            if let Err(e) = device.wait(ev) {
                result = Err(e);
                break;
            }
            // SAFETY: the download completed; the slot holds `len` valid bytes.
            let host = unsafe { std::slice::from_raw_parts_mut(slot.as_ptr(), len) };
            if let Err(e) = comm.allreduce_bytes(host, dtype, op) {
                result = Err(e);
                break;
            }
        }
        // The previous upload read the slot we are about to refill: wait for it first.
        if let Some(prev) = last_upload.take() {
            if let Err(e) = device.wait(prev) {
                result = Err(e);
                break;
            }
        }
        // SAFETY: the slot holds the reduced chunk and stays untouched until the upload ends.
        match unsafe { device.upload(dev + off as u64, slot.as_ptr(), len) } {
            Ok(ev) => last_upload = Some(ev),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if !fed && issued < ranges.len() {
            let (o2, l2) = ranges[issued];
            // SAFETY: slot `issued % depth` is chunk i-1's (issued = i + depth - 1), whose
            // upload was waited for above, or was never used.
            match unsafe { device.download(slots[issued % depth].as_ptr(), dev + o2 as u64, l2) } {
                Ok(ev) => downloads.push_back(ev),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            issued += 1;
        }
    }
    // Drain whatever is still queued before the slots are freed.
    for ev in downloads.drain(..) {
        let _ = device.wait(ev);
    }
    if let Some(ev) = last_upload {
        let r = device.wait(ev);
        if result.is_ok() {
            result = r;
        }
    }
    // Nothing queued reads or writes them any more.
    slots.into_iter().for_each(|s| pool.give(s));
    result
}
