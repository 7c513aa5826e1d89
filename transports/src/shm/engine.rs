//! The shared-memory transport proper: region layout, the progress engine, setup.

use super::ring::RingIndex;
use super::segment::{self, Mapping};
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
const COUNTERS: usize = 128;
const META: usize = 64;
const KIND_DATA: u8 = 1;
const KIND_ABORT: u8 = 2;

/// Ring geometry (the same on every rank of a job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmParams {
    pub slots: usize,
    pub slot_bytes: usize,
}

impl Default for ShmParams {
    fn default() -> Self {
        ShmParams {
            slots: 16,
            slot_bytes: 128 << 10,
        }
    }
}

impl ShmParams {
    fn ring_bytes(&self) -> usize {
        COUNTERS + self.slots * (META + self.slot_bytes)
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
    _pad: u32,
    seq: u64,
    count: u64,
    msg_len: u64,
    frag_off: u64,
    frag_len: u64,
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
    fn slot(&self, i: u64) -> (*mut Meta, *mut u8) {
        let off = COUNTERS + (i as usize % self.p.slots) * (META + self.p.slot_bytes);
        // SAFETY: within the ring's extent (ring_bytes).
        unsafe { (self.base.add(off) as *mut Meta, self.base.add(off + META)) }
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
    broken: Option<Error>,
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

fn fail_all(p: &mut Peer, e: &Error) {
    p.broken.get_or_insert_with(|| e.duplicate());
    for s in p.sends.drain(..) {
        s.handle.complete(Err(e.duplicate()));
    }
    for r in p.recvs.drain(..) {
        r.handle.complete(Err(e.duplicate()));
    }
}

impl Peer {
    /// Copies pending sends into free slots. Returns whether anything moved.
    fn push(&mut self) -> bool {
        let mut moved = false;
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
            let frag = (len - s.off).min(self.out.p.slot_bytes);
            let (meta, data) = self.out.slot(i);
            // SAFETY: slot i is ours until published (ring protocol); the source range is
            // valid under post_send's contract.
            unsafe {
                meta.write(Meta {
                    kind: KIND_DATA,
                    coll: s.hdr.coll,
                    dtype: s.hdr.dtype,
                    op: s.hdr.op,
                    _pad: 0,
                    seq: s.hdr.seq,
                    count: s.hdr.count,
                    msg_len: len as u64,
                    frag_off: s.off as u64,
                    frag_len: frag as u64,
                });
                std::ptr::copy_nonoverlapping(s.data.0.add(s.off), data, frag);
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
        let idx = self.inc.index();
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
                // SAFETY: as above; the reason is at most one slot long.
                let why = unsafe {
                    std::slice::from_raw_parts(
                        data,
                        (m.frag_len as usize).min(self.inc.p.slot_bytes),
                    )
                };
                let e = Error::Remote {
                    rank: self.rank.0,
                    detail: format!("aborted: {}", String::from_utf8_lossy(why)),
                };
                idx.consumer_release(i);
                fail_all(self, &e);
                return true;
            }
            let r = self.recvs.front_mut().unwrap();
            let got = FrameHeader {
                seq: m.seq,
                coll: m.coll,
                dtype: m.dtype,
                op: m.op,
                count: m.count,
                len: m.msg_len,
            };
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
            let n = m.frag_len as usize;
            // SAFETY: the slot holds n valid bytes; the destination is valid for the message
            // length under post_recv's contract and n fits (checked above).
            unsafe {
                let dst = r.data.0.add(r.off);
                match r.reduce {
                    None => std::ptr::copy_nonoverlapping(data, dst, n),
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

/// `kill(pid, 0)`: false once the process is gone.
fn alive(pid: i32) -> bool {
    pid <= 0
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .map_or_else(|e| e != nix::errno::Errno::ESRCH, |_| true)
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
            let (magic, pid, ns) = unsafe {
                let h = theirs.ptr() as *const u64;
                (h.read(), h.add(1).read() as i32, h.add(2).read())
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
            peers[q as usize] = Some(Peer {
                rank: Rank(q),
                out,
                inc,
                pid,
                sends: VecDeque::new(),
                recvs: VecDeque::new(),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, peer: Rank, f: impl FnOnce(&mut Peer, OpHandle)) -> Result<OpHandle> {
        let mut e = self.lock();
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
                if (!p.sends.is_empty() || !p.recvs.is_empty()) && !alive(p.pid) {
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
                        _pad: 0,
                        seq: 0,
                        count: 0,
                        msg_len: n as u64,
                        frag_off: 0,
                        frag_len: n as u64,
                    });
                    std::ptr::copy_nonoverlapping(why.as_ptr(), data, n);
                }
                idx.producer_publish(i);
            }
            fail_all(p, &Error::Aborted(reason.to_string()));
        }
    }
}
