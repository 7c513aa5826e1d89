//! The shared-memory transport proper: region layout, the progress engine, setup.

use super::ring::RingIndex;
use super::segment::{self, Mapping};
use acspeed_core::config::ShmMode;
use acspeed_core::transport::{RecvPtr, SendPtr};
use acspeed_core::{
    kernels, DType, Error, FrameHeader, OpHandle, Rank, ReduceOp, Result, Transport,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_le_bytes(*b"ACSPSHM1");
const HEADER: usize = 4096;
const PAGE: usize = 4096;
/// head, tail, cma_done, cma_ok: one cache line each.
const COUNTERS: usize = 256;
const META: usize = 64;
const _: () = assert!(std::mem::size_of::<Meta>() <= META);
const KIND_DATA: u8 = 1;
const KIND_ABORT: u8 = 2;
/// A descriptor: the receiver reads `msg_len` bytes at `addr` in the sender's address space.
const KIND_CMA: u8 = 3;
/// Receive-reduce through CMA reads this much at a time into a bounce buffer that stays in
/// L2, then reduces from it.
const CMA_BOUNCE: usize = 64 << 10;

/// Ring geometry (the same on every rank of a job) and the large-message path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmParams {
    pub slots: usize,
    pub slot_bytes: usize,
    /// How large messages cross (see `ShmMode`): with `Cma`, those of at least `cma_min`
    /// bytes in collectives of at least `cma_min_collective` bytes go by cross-memory
    /// attach; with `Auto`, slots of collectives that large are filled with streaming stores.
    pub mode: ShmMode,
    pub cma_min: usize,
    pub cma_min_collective: usize,
}

impl Default for ShmParams {
    fn default() -> Self {
        ShmParams {
            slots: 16,
            slot_bytes: 128 << 10,
            mode: ShmMode::Auto,
            cma_min: 64 << 10,
            // Measured (docs/PERFORMANCE.md): below this the slot copies stay in cache and
            // ordinary stores are fastest; above it ordinary stores collapse in some runs.
            cma_min_collective: 16 << 20,
        }
    }
}

impl ShmParams {
    /// Counters, then every slot's metadata, padded to a page; then the slots, each starting
    /// on a page. Page-aligned slots matter: with slots packed back to back the consumer's
    /// hardware prefetcher ran from the end of slot i into slot i+1 while the producer was
    /// writing it, and slot starts sat a few hundred bytes (mod 4 KiB) from the sender's
    /// source, a 4K-aliasing distance; either way the producer's copies stalled, and runs
    /// fell into a mode 4-5x slower (docs/PERFORMANCE.md, "bimodal shared memory").
    fn meta_bytes(&self) -> usize {
        (COUNTERS + self.slots * META).next_multiple_of(PAGE)
    }
    fn slot_stride(&self) -> usize {
        self.slot_bytes.next_multiple_of(PAGE)
    }
    fn ring_bytes(&self) -> usize {
        self.meta_bytes() + self.slots * self.slot_stride()
    }
    fn region_bytes(&self, rings: usize) -> usize {
        HEADER + rings.max(1) * self.ring_bytes()
    }
}

/// Per-slot metadata, written by the producer before publishing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Meta {
    kind: u8,
    coll: u8,
    dtype: u8,
    op: u8,
    algo: u8,
    channel: u8,
    _pad: [u8; 2],
    root: u32,
    seq: u64,
    count: u64,
    msg_len: u64,
    frag_off: u64,
    frag_len: u64,
    /// KIND_CMA: the message's address in the sender.
    addr: u64,
}

impl Meta {
    /// Metadata of a data fragment or CMA descriptor of the message `hdr` (whose `len` is
    /// the whole message).
    fn frame(kind: u8, hdr: &FrameHeader, off: usize, frag: usize, addr: u64) -> Meta {
        Meta {
            kind,
            coll: hdr.coll,
            dtype: hdr.dtype,
            op: hdr.op,
            algo: hdr.algo,
            channel: hdr.channel,
            _pad: [0; 2],
            root: hdr.root,
            seq: hdr.seq,
            count: hdr.count,
            msg_len: hdr.len,
            frag_off: off as u64,
            frag_len: frag as u64,
            addr,
        }
    }
}

impl Meta {
    /// The header of the message this fragment belongs to.
    fn header(&self) -> FrameHeader {
        FrameHeader {
            seq: self.seq,
            coll: self.coll,
            dtype: self.dtype,
            op: self.op,
            algo: self.algo,
            channel: self.channel,
            root: self.root,
            count: self.count,
            len: self.msg_len,
        }
    }
}

/// The error an abort notice from `from` carries (its reason is in the slot's data).
///
/// # Safety
/// `data` is the data of a published, unreleased slot of `ring` whose metadata is `m`.
unsafe fn abort_notice(ring: &Ring, m: &Meta, data: *const u8, from: Rank) -> Error {
    // SAFETY: the caller's contract; the reason is at most one slot long.
    let why =
        unsafe { std::slice::from_raw_parts(data, (m.frag_len as usize).min(ring.p.slot_bytes)) };
    Error::Remote {
        rank: from.0,
        detail: format!("aborted: {}", String::from_utf8_lossy(why)),
    }
}

/// A ring inside some mapping.
#[derive(Clone, Copy)]
struct Ring {
    base: *mut u8,
    p: ShmParams,
}

impl Ring {
    fn index(&self) -> RingIndex<'_> {
        // SAFETY: the first two cache lines of a ring are its counters, 8-byte aligned.
        unsafe {
            RingIndex {
                head: &*(self.base as *const AtomicU64),
                tail: &*(self.base.add(64) as *const AtomicU64),
                slots: self.p.slots as u64,
            }
        }
    }
    /// CMA descriptors fully read by the consumer (written by the consumer only).
    fn cma_done(&self) -> &AtomicU64 {
        // SAFETY: third cache line of the counter block.
        unsafe { &*(self.base.add(128) as *const AtomicU64) }
    }
    /// Set to 1 by the consumer once it has shown it can read the producer's memory.
    fn cma_ok(&self) -> &AtomicU64 {
        // SAFETY: fourth cache line of the counter block.
        unsafe { &*(self.base.add(192) as *const AtomicU64) }
    }
    fn slot(&self, i: u64) -> (*mut Meta, *mut u8) {
        let k = i as usize % self.p.slots;
        let meta = COUNTERS + k * META;
        let data = self.p.meta_bytes() + k * self.p.slot_stride();
        // SAFETY: within the ring's extent (ring_bytes).
        unsafe { (self.base.add(meta) as *mut Meta, self.base.add(data)) }
    }
}

struct PendingSend {
    hdr: FrameHeader,
    data: SendPtr,
    off: usize,
    started: bool,
    handle: OpHandle,
}

struct PendingRecv {
    hdr: FrameHeader,
    data: RecvPtr,
    reduce: Option<(DType, ReduceOp)>,
    off: usize,
    started: bool,
    handle: OpHandle,
}

struct Peer {
    rank: Rank,
    out: Ring,
    inc: Ring,
    pid: i32,
    sends: VecDeque<PendingSend>,
    recvs: VecDeque<PendingRecv>,
    /// CMA sends whose descriptor is published: (ticket, handle), done once the receiver's
    /// `cma_done` reaches the ticket.
    awaiting: VecDeque<(u64, OpHandle)>,
    cma_posted: u64,
    cma_min: usize,
    cma_min_collective: usize,
    /// Fill slots with streaming stores in collectives of at least `cma_min_collective`.
    stream: bool,
    bounce: Vec<u8>,
    broken: Option<Error>,
    /// When `peek` last checked that the peer process is alive.
    peeked_alive: Instant,
}

struct Engine {
    peers: Vec<Option<Peer>>,
    aborted: bool,
    last_liveness: Instant,
}

/// Shared-memory transport to the ranks on this host (other ranks are not reachable).
pub struct ShmTransport {
    rank: Rank,
    nranks: u32,
    engine: Mutex<Engine>,
    pending: AtomicBool,
    _maps: Vec<Mapping>,
}

// SAFETY: raw pointers inside point into mappings owned by the transport; all access to
// them goes through the engine mutex and the ring protocol.
unsafe impl Send for ShmTransport {}
unsafe impl Sync for ShmTransport {}

/// The peer `peer` of a transport that is not aborted, if it is on this host and its
/// stream is not broken.
fn usable_peer(e: &mut Engine, peer: Rank) -> Result<&mut Peer> {
    if e.aborted {
        return Err(Error::Aborted("shared-memory transport aborted".into()));
    }
    let p = e
        .peers
        .get_mut(peer.idx())
        .and_then(|p| p.as_mut())
        .ok_or_else(|| {
            Error::invalid(format!(
                "rank {peer} is not on this host (no shared-memory path)"
            ))
        })?;
    if let Some(err) = &p.broken {
        return Err(err.duplicate());
    }
    Ok(p)
}

fn fail_all(p: &mut Peer, e: &Error) {
    p.broken.get_or_insert_with(|| e.duplicate());
    for s in p.sends.drain(..) {
        s.handle.complete(Err(e.duplicate()));
    }
    for r in p.recvs.drain(..) {
        r.handle.complete(Err(e.duplicate()));
    }
    for (_, h) in p.awaiting.drain(..) {
        h.complete(Err(e.duplicate()));
    }
}

/// Reads `len` bytes at `addr` in process `pid` into `dst` (the whole range or an error).
fn cma_read(pid: i32, addr: u64, dst: *mut u8, len: usize) -> std::result::Result<(), nix::Error> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let mut done = 0;
    while done < len {
        // SAFETY: the local range is valid for writes (post_recv's contract); the kernel
        // checks the remote range and fails with EFAULT rather than touching anything else.
        let local = unsafe { std::slice::from_raw_parts_mut(dst.add(done), len - done) };
        let remote = RemoteIoVec {
            base: addr as usize + done,
            len: len - done,
        };
        match process_vm_readv(
            nix::unistd::Pid::from_raw(pid),
            &mut [std::io::IoSliceMut::new(local)],
            &[remote],
        ) {
            Ok(0) => return Err(nix::Error::EFAULT),
            Ok(n) => done += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Peer {
    /// Copies pending sends into free slots. Returns whether anything moved.
    fn push(&mut self) -> bool {
        let mut moved = false;
        if !self.awaiting.is_empty() {
            let done = self.out.cma_done().load(Ordering::Acquire);
            while self.awaiting.front().is_some_and(|(t, _)| *t <= done) {
                let (_, h) = self.awaiting.pop_front().unwrap();
                h.complete(Ok(()));
                moved = true;
            }
        }
        let cma = self.cma_min > 0 && self.out.cma_ok().load(Ordering::Relaxed) == 1;
        let idx = self.out.index();
        while let Some(s) = self.sends.front_mut() {
            let len = s.hdr.len as usize;
            if s.started && s.off >= len {
                let s = self.sends.pop_front().unwrap();
                s.handle.complete(Ok(()));
                continue;
            }
            let Some(i) = idx.producer_acquire() else {
                break;
            };
            let coll_bytes = (s.hdr.count as usize)
                .saturating_mul(DType::from_code(s.hdr.dtype).map_or(1, DType::size));
            if cma && !s.started && len >= self.cma_min && coll_bytes >= self.cma_min_collective {
                // Single copy: publish where the bytes are; the receiver reads them itself.
                let (meta, _) = self.out.slot(i);
                // SAFETY: slot i is ours until published.
                unsafe {
                    meta.write(Meta::frame(KIND_CMA, &s.hdr, 0, len, s.data.0 as u64));
                }
                idx.producer_publish(i);
                self.cma_posted += 1;
                let s = self.sends.pop_front().unwrap();
                self.awaiting.push_back((self.cma_posted, s.handle));
                moved = true;
                continue;
            }
            let frag = (len - s.off).min(self.out.p.slot_bytes);
            let (meta, data) = self.out.slot(i);
            // SAFETY: slot i is ours until published (ring protocol); the source range is
            // valid under post_send's contract.
            unsafe {
                meta.write(Meta::frame(KIND_DATA, &s.hdr, s.off, frag, 0));
                if self.stream && coll_bytes >= self.cma_min_collective {
                    // Large collectives: the slot's lines go straight to memory instead of
                    // being taken back from the reader's cache line by line (the bimodal
                    // slow mode, docs/PERFORMANCE.md).
                    kernels::copy::copy_nonoverlapping_stream(s.data.0.add(s.off), data, frag);
                } else {
                    kernels::copy::copy_nonoverlapping(s.data.0.add(s.off), data, frag);
                }
            }
            idx.producer_publish(i);
            s.off += frag;
            s.started = true;
            moved = true;
        }
        moved
    }

    /// Copies or reduces published slots into pending receives.
    fn pull(&mut self) -> bool {
        let mut moved = false;
        let inc = self.inc;
        let idx = inc.index();
        while let Some(r) = self.recvs.front() {
            if r.started && r.off >= r.hdr.len as usize {
                let r = self.recvs.pop_front().unwrap();
                r.handle.complete(Ok(()));
                continue;
            }
            let Some(i) = idx.consumer_acquire() else {
                break;
            };
            let (meta, data) = self.inc.slot(i);
            // SAFETY: slot i was published by the producer (Acquire in consumer_acquire).
            let m = unsafe { meta.read() };
            if m.kind == KIND_ABORT {
                // SAFETY: slot i is published and unreleased.
                let e = unsafe { abort_notice(&self.inc, &m, data, self.rank) };
                idx.consumer_release(i);
                fail_all(self, &e);
                return true;
            }
            let r = self.recvs.front_mut().unwrap();
            let got = m.header();
            let bad = r.hdr.check(&got, self.rank).err().or_else(|| {
                (m.frag_off as usize != r.off || m.frag_off + m.frag_len > m.msg_len).then(|| {
                    Error::Remote {
                        rank: self.rank.0,
                        detail: "shared-memory stream out of order (protocol violation)".into(),
                    }
                })
            });
            if let Some(e) = bad {
                fail_all(self, &e);
                return true;
            }
            if m.kind == KIND_CMA {
                if let Err(e) = self.read_cma(&m) {
                    fail_all(self, &e);
                    return true;
                }
                idx.consumer_release(i);
                let done = inc.cma_done();
                done.store(done.load(Ordering::Relaxed) + 1, Ordering::Release);
                let r = self.recvs.front_mut().unwrap();
                r.off = m.msg_len as usize;
                r.started = true;
                moved = true;
                continue;
            }
            let n = m.frag_len as usize;
            // SAFETY: the slot holds n valid bytes; the destination is valid for the message
            // length under post_recv's contract and n fits (checked above).
            unsafe {
                let dst = r.data.0.add(r.off);
                match r.reduce {
                    None => kernels::copy::copy_nonoverlapping(data, dst, n),
                    Some((dt, op)) => kernels::reduce(
                        dt,
                        op,
                        std::slice::from_raw_parts_mut(dst, n),
                        std::slice::from_raw_parts(data, n),
                    ),
                }
            }
            idx.consumer_release(i);
            r.off += n;
            r.started = true;
            moved = true;
        }
        moved
    }
}

impl Peer {
    /// Serves the front receive from a CMA descriptor (checked against it already).
    fn read_cma(&mut self, m: &Meta) -> Result<()> {
        let r = self.recvs.front().expect("a posted receive");
        let len = m.msg_len as usize;
        let fail = |e: nix::Error| Error::Remote {
            rank: self.rank.0,
            detail: format!(
                "reading {len} bytes of its memory with process_vm_readv failed ({e}); \
                 set ACSPEED_SHM_MODE=copy if the kernel forbids cross-memory attach"
            ),
        };
        match r.reduce {
            None => cma_read(self.pid, m.addr, r.data.0, len).map_err(fail),
            Some((dt, op)) => {
                // Pieces a multiple of the element size, so each reduces whole elements.
                let piece = CMA_BOUNCE / dt.size() * dt.size();
                self.bounce.resize(piece, 0);
                let mut off = 0;
                while off < len {
                    let n = piece.min(len - off);
                    cma_read(self.pid, m.addr + off as u64, self.bounce.as_mut_ptr(), n)
                        .map_err(fail)?;
                    // SAFETY: the destination is valid for the message (post_recv's contract).
                    unsafe {
                        kernels::reduce(
                            dt,
                            op,
                            std::slice::from_raw_parts_mut(r.data.0.add(off), n),
                            &self.bounce[..n],
                        )
                    };
                    off += n;
                }
                Ok(())
            }
        }
    }
}

/// False once the process is gone: `kill(pid, 0)` fails, or the process has exited and
/// waits as a zombie for a parent that has not reaped it yet (a launcher busy elsewhere;
/// `kill` still succeeds on a zombie, which once left survivors waiting for the timeout).
pub(crate) fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .map_or_else(|e| e != nix::errno::Errno::ESRCH, |_| true);
    exists && !zombie(pid)
}

/// Whether /proc says the process has exited (state Z or X). The state follows the command
/// name, which is in parentheses and may itself contain ") ".
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st == "Z" || st == "X")
}

fn pid_ns() -> u64 {
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0)
}

impl ShmTransport {
    /// Connects to the other ranks of `local` (this host's ranks, ascending, including us).
    pub fn connect(
        rank: Rank,
        nranks: u32,
        local: &[u32],
        secret: &[u8; 16],
        params: ShmParams,
        timeout: Duration,
    ) -> Result<ShmTransport> {
        let deadline = Instant::now() + timeout;
        let others = |q: u32| -> Vec<u32> { local.iter().copied().filter(|x| *x != q).collect() };
        let mine = others(rank.0);
        let size = params.region_bytes(mine.len());
        let (fd, region) = segment::create(&format!("acspeed-r{}", rank.0), size)?;
        // SAFETY: the header page is ours to initialise before the region is shared.
        unsafe {
            let h = region.ptr() as *mut u64;
            h.write(MAGIC);
            h.add(1).write(std::process::id() as u64);
            h.add(2).write(pid_ns());
            // Where our header lives in *our* address space: peers read MAGIC through it
            // with process_vm_readv to find out whether cross-memory attach is permitted.
            h.add(3).write(region.ptr() as u64);
        }
        let server = segment::serve(*secret, rank.0, fd, mine.len(), deadline)?;
        let mut maps = Vec::new();
        let mut peers: Vec<Option<Peer>> = (0..nranks).map(|_| None).collect();
        for (j, &q) in mine.iter().enumerate() {
            let theirs = segment::fetch(
                secret,
                rank.0,
                q,
                params.region_bytes(others(q).len()),
                deadline,
            )?;
            // SAFETY: the peer initialised its header before serving the descriptor.
            let (magic, pid, ns, their_addr) = unsafe {
                let h = theirs.ptr() as *const u64;
                (
                    h.read(),
                    h.add(1).read() as i32,
                    h.add(2).read(),
                    h.add(3).read(),
                )
            };
            if magic != MAGIC {
                return Err(Error::Remote {
                    rank: q,
                    detail: "shared region has a bad header".into(),
                });
            }
            let slot_in_theirs = others(q)
                .iter()
                .position(|x| *x == rank.0)
                .expect("we are local to them");
            let out = Ring {
                base: theirs
                    .ptr()
                    .wrapping_add(HEADER + slot_in_theirs * params.ring_bytes()),
                p: params,
            };
            let inc = Ring {
                base: region.ptr().wrapping_add(HEADER + j * params.ring_bytes()),
                p: params,
            };
            let pid = if ns == pid_ns() { pid } else { 0 };
            if params.mode == ShmMode::Cma {
                let mut probe = 0u64;
                let can = pid > 0
                    && cma_read(pid, their_addr, (&mut probe as *mut u64).cast(), 8).is_ok()
                    && probe == MAGIC;
                if can {
                    // We read them: they may send us descriptors on the ring we consume.
                    inc.cma_ok().store(1, Ordering::Release);
                } else if params.mode == ShmMode::Cma {
                    return Err(Error::invalid(format!(
                        "ACSPEED_SHM_MODE=cma, but rank {} cannot read the memory of local rank {q} (pid {pid}) with process_vm_readv \
                         (another pid namespace, or ptrace restrictions such as /proc/sys/kernel/yama/ptrace_scope); use auto or copy",
                        rank.0
                    )));
                }
            }
            peers[q as usize] = Some(Peer {
                rank: Rank(q),
                out,
                inc,
                pid,
                sends: VecDeque::new(),
                recvs: VecDeque::new(),
                awaiting: VecDeque::new(),
                cma_posted: 0,
                cma_min: if params.mode == ShmMode::Cma {
                    params.cma_min.max(1)
                } else {
                    0
                },
                stream: params.mode == ShmMode::Auto,
                cma_min_collective: params.cma_min_collective,
                bounce: Vec::new(),
                peeked_alive: Instant::now(),
                broken: None,
            });
            maps.push(theirs);
        }
        server
            .join()
            .map_err(|_| Error::Aborted("shm server thread panicked".into()))??;
        maps.push(region);
        Ok(ShmTransport {
            rank,
            nranks,
            engine: Mutex::new(Engine {
                peers,
                aborted: false,
                last_liveness: Instant::now(),
            }),
            pending: AtomicBool::new(false),
            _maps: maps,
        })
    }

    /// For each local peer: whether this rank reads its large messages by cross-memory attach.
    pub fn cma_readable(&self) -> Vec<(Rank, bool)> {
        self.lock()
            .peers
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.rank,
                    p.cma_min > 0 && p.inc.cma_ok().load(Ordering::Relaxed) == 1,
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, peer: Rank, f: impl FnOnce(&mut Peer, OpHandle)) -> Result<OpHandle> {
        let mut e = self.lock();
        let p = usable_peer(&mut e, peer)?;
        let h = OpHandle::new(peer);
        f(p, h.clone());
        // Move what can move now: small messages complete without anyone waiting.
        p.push();
        p.pull();
        self.pending.store(true, Ordering::Relaxed);
        Ok(h)
    }

    fn post_recv_inner(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        reduce: Option<(DType, ReduceOp)>,
    ) -> Result<OpHandle> {
        self.post(from, |p, handle| {
            p.recvs.push_back(PendingRecv {
                hdr,
                data: RecvPtr(data),
                reduce,
                off: 0,
                started: false,
                handle,
            })
        })
    }
}

impl Transport for ShmTransport {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.nranks
    }
    fn name(&self, _peer: Rank) -> String {
        "shm".into()
    }

    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        let hdr = FrameHeader {
            len: len as u64,
            ..hdr
        };
        self.post(to, |p, handle| {
            p.sends.push_back(PendingSend {
                hdr,
                data: SendPtr(data),
                off: 0,
                started: false,
                handle,
            })
        })
    }

    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        self.post_recv_inner(from, hdr, data, None)
    }

    fn can_recv_reduce(&self, _from: Rank) -> bool {
        true
    }

    unsafe fn post_recv_reduce(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<OpHandle> {
        self.post_recv_inner(from, hdr, data, Some((dtype, op)))
    }

    fn peek(&self, from: Rank) -> Result<Option<FrameHeader>> {
        let mut e = self.lock();
        let p = usable_peer(&mut e, from)?;
        // A posted receive owns the next message; without one, the next slot (if published)
        // starts a new message.
        if !p.recvs.is_empty() {
            return Ok(None);
        }
        let Some(i) = p.inc.index().consumer_acquire() else {
            // Nothing waiting: a peer that is gone will never send (the liveness check in
            // `progress` only looks at peers with pending operations). It costs a syscall
            // and a /proc read, so at most every 250 ms per peer.
            if p.peeked_alive.elapsed() > Duration::from_millis(250) {
                p.peeked_alive = Instant::now();
                if !alive(p.pid) {
                    return Err(Error::Remote {
                        rank: from.0,
                        detail: format!("process {} exited (crashed or killed?)", p.pid),
                    });
                }
            }
            return Ok(None);
        };
        let (meta, data) = p.inc.slot(i);
        // SAFETY: slot i was published by the producer (Acquire in consumer_acquire); reading
        // it does not release it.
        let m = unsafe { meta.read() };
        if m.kind == KIND_ABORT {
            // SAFETY: slot i is published and unreleased.
            return Err(unsafe { abort_notice(&p.inc, &m, data, from) });
        }
        Ok(Some(m.header()))
    }

    fn needs_progress(&self) -> bool {
        true
    }

    fn progress(&self) -> bool {
        // Another thread progressing is as good as us doing it.
        let Ok(mut e) = self.engine.try_lock() else {
            return false;
        };
        if e.aborted {
            return false;
        }
        let mut moved = false;
        for p in e.peers.iter_mut().flatten() {
            moved |= p.push();
            moved |= p.pull();
        }
        if !moved && e.last_liveness.elapsed() > Duration::from_millis(250) {
            e.last_liveness = Instant::now();
            for p in e.peers.iter_mut().flatten() {
                let busy = !p.sends.is_empty() || !p.recvs.is_empty() || !p.awaiting.is_empty();
                if busy && !alive(p.pid) {
                    let err = Error::Remote {
                        rank: p.rank.0,
                        detail: format!("process {} exited (crashed or killed?)", p.pid),
                    };
                    fail_all(p, &err);
                    moved = true;
                }
            }
        }
        moved
    }

    fn abort(&self, reason: &str) {
        self.notify_peers(reason);
    }
}

impl Drop for ShmTransport {
    /// A rank that goes away tells its peers, so a collective they are still in fails naming
    /// it instead of waiting for the timeout. Peers that are done never read the notice.
    fn drop(&mut self) {
        self.notify_peers(&format!("rank {} closed its communicator", self.rank));
    }
}

impl ShmTransport {
    /// Pushes an abort frame with `reason` to every peer that has room, and fails everything
    /// pending here. Idempotent.
    fn notify_peers(&self, reason: &str) {
        let mut e = self.lock();
        if e.aborted {
            return;
        }
        e.aborted = true;
        let why = reason.as_bytes();
        for p in e.peers.iter_mut().flatten() {
            // Tell the peer, if its ring has room.
            let idx = p.out.index();
            if let Some(i) = idx.producer_acquire() {
                let n = why.len().min(p.out.p.slot_bytes);
                let (meta, data) = p.out.slot(i);
                // SAFETY: slot i is ours until published.
                unsafe {
                    meta.write(Meta {
                        kind: KIND_ABORT,
                        coll: 0,
                        dtype: 0,
                        op: 0,
                        algo: 0,
                        channel: 0,
                        _pad: [0; 2],
                        root: 0,
                        seq: 0,
                        count: 0,
                        msg_len: n as u64,
                        frag_off: 0,
                        frag_len: n as u64,
                        addr: 0,
                    });
                    std::ptr::copy_nonoverlapping(why.as_ptr(), data, n);
                }
                idx.producer_publish(i);
            }
            fail_all(p, &Error::Aborted(reason.to_string()));
        }
    }
}
