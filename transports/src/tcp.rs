//! TCP transport: K sockets per peer, each with a writer and a reader thread.
//!
//! A message is cut into stripes that go into one queue per peer; whichever socket's writer
//! is free takes the next stripe, so a slow socket (a throttled flow in a cloud VPC) simply
//! carries less — unlike a fixed equal split, where the slowest flow sets the pace. Every
//! stripe carries its message id and offset, so readers put it straight into the caller's
//! memory wherever it lands; nothing is staged. `post_recv` registers the destination under
//! the next message id; a reader that gets a stripe before its receive is posted waits for it
//! (bounded by flow control: the sender can be at most socket buffers ahead).
//!
//! Failure: the first error on any socket of a peer (EOF, reset, corrupt frame, an abort
//! frame) breaks that peer: pending and later operations with it fail naming the rank.
//! `abort` tells idle peers why, shuts every socket and waits until no thread is inside
//! user memory.

use crate::wire::{self, Kind, Stripe, FRAME_LEN, MAX_ABORT_LEN};
use acspeed_core::transport::{RecvPtr, SendPtr};
use acspeed_core::{Error, FrameHeader, OpHandle, Rank, Result, Transport};
use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Smallest stripe worth a separate frame.
pub(crate) const MIN_STRIPE: usize = 64 << 10;

struct SendMsg {
    hdr: FrameHeader,
    data: SendPtr,
    stripes_left: AtomicUsize,
    handle: OpHandle,
}

struct SendJob {
    msg: Arc<SendMsg>,
    st: Stripe,
}

struct RecvMsg {
    hdr: FrameHeader,
    data: RecvPtr,
    bytes_left: AtomicU64,
    handle: OpHandle,
}

#[derive(Default)]
struct SendQueue {
    jobs: VecDeque<SendJob>,
    closed: bool,
}

#[derive(Default)]
struct RecvTable {
    posted: HashMap<u64, Arc<RecvMsg>>,
    /// Headers of messages that arrived before their receive was posted, by message id
    /// (what `peek` reports).
    arrived: HashMap<u64, FrameHeader>,
    closed: bool,
}

/// State shared by a peer's threads and the transport.
struct PeerShared {
    rank: Rank,
    broken: Mutex<Option<Error>>,
    aborted: AtomicBool,
    sendq: Mutex<SendQueue>,
    send_cv: Condvar,
    recvs: Mutex<RecvTable>,
    recv_cv: Condvar,
    next_send_id: Mutex<u64>,
    next_recv_id: AtomicU64,
    /// Held by a thread while it touches user memory; `abort` waits on all of them.
    busy: Vec<Mutex<()>>,
    /// Sockets whose reader has not seen the peer close them.
    open_streams: AtomicUsize,
    streams: Vec<TcpStream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerShared {
    /// Records the peer's first failure and fails everything pending with it.
    fn fail(&self, e: Error) -> Error {
        let err = {
            let mut b = lock(&self.broken);
            b.get_or_insert(e).duplicate()
        };
        let jobs: Vec<SendJob> = {
            let mut q = lock(&self.sendq);
            q.closed = true;
            q.jobs.drain(..).collect()
        };
        self.send_cv.notify_all();
        for j in jobs {
            j.msg.handle.complete(Err(err.duplicate()));
        }
        let recvs: Vec<Arc<RecvMsg>> = {
            let mut t = lock(&self.recvs);
            t.closed = true;
            t.posted.drain().map(|(_, v)| v).collect()
        };
        self.recv_cv.notify_all();
        for r in recvs {
            r.handle.complete(Err(err.duplicate()));
        }
        err
    }

    fn broken(&self) -> Option<Error> {
        lock(&self.broken).as_ref().map(|e| e.duplicate())
    }

    /// A failed write. When the peer closed the connection, it may have said why first (an
    /// abort frame one of our readers is about to read): wait briefly for that reason, so the
    /// error names it rather than the reset. A writer blocked by TCP_NOTSENT_LOWAT meets the
    /// close before the readers do.
    fn send_err(&self, e: std::io::Error) -> Error {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        if matches!(e.kind(), ConnectionReset | BrokenPipe) {
            let until = std::time::Instant::now() + Duration::from_millis(100);
            while std::time::Instant::now() < until {
                if let Some(why) = self.broken() {
                    return why;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.io_err("sending", e)
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        if self.aborted.load(Ordering::SeqCst) {
            return Error::Aborted("transport aborted".into());
        }
        let detail = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "closed the connection (process exited or crashed?)".to_string()
            }
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                format!("connection reset while {what} (process exited or crashed?)")
            }
            _ => format!("{what}: {e}"),
        };
        Error::Remote {
            rank: self.rank.0,
            detail,
        }
    }
}

/// A connected mesh of TCP connections (built by [`crate::connect::establish`]).
pub struct TcpTransport {
    rank: Rank,
    nranks: u32,
    peers: Vec<Option<Arc<PeerShared>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpTransport {
    /// Wraps connected sockets: `streams[q]` are the sockets to rank `q` (empty: no TCP path).
    pub(crate) fn from_streams(rank: Rank, streams: Vec<Vec<TcpStream>>) -> Result<TcpTransport> {
        let nranks = streams.len() as u32;
        let mut peers = Vec::new();
        let mut threads = Vec::new();
        for (q, socks) in streams.into_iter().enumerate() {
            if socks.is_empty() {
                peers.push(None);
                continue;
            }
            let ctx = |e| Error::io(format!("setting up the connections to rank {q}"), e);
            let mut io = Vec::new();
            for s in &socks {
                s.set_nodelay(true).map_err(ctx)?;
                io.push((s.try_clone().map_err(ctx)?, s.try_clone().map_err(ctx)?));
            }
            let shared = Arc::new(PeerShared {
                rank: Rank(q as u32),
                broken: Mutex::new(None),
                aborted: AtomicBool::new(false),
                sendq: Mutex::new(SendQueue::default()),
                send_cv: Condvar::new(),
                recvs: Mutex::new(RecvTable::default()),
                recv_cv: Condvar::new(),
                next_send_id: Mutex::new(0),
                next_recv_id: AtomicU64::new(0),
                busy: (0..2 * socks.len()).map(|_| Mutex::new(())).collect(),
                open_streams: AtomicUsize::new(socks.len()),
                streams: socks,
            });
            for (i, (w, r)) in io.into_iter().enumerate() {
                let (s1, s2) = (shared.clone(), shared.clone());
                let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
                    std::thread::Builder::new()
                        .name(name)
                        .spawn(f)
                        .map_err(|e| Error::io("spawning a socket thread", e))
                };
                threads.push(spawn(
                    format!("acspeed-tx{q}.{i}"),
                    Box::new(move || writer_loop(s1, w, 2 * i)),
                )?);
                threads.push(spawn(
                    format!("acspeed-rx{q}.{i}"),
                    Box::new(move || reader_loop(s2, r, 2 * i + 1)),
                )?);
            }
            peers.push(Some(shared));
        }
        Ok(TcpTransport {
            rank,
            nranks,
            peers,
            threads: Mutex::new(threads),
        })
    }

    fn peer(&self, q: Rank) -> Result<&Arc<PeerShared>> {
        self.peers
            .get(q.idx())
            .and_then(|p| p.as_ref())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "rank {q} has no TCP path from rank {} (world size {})",
                    self.rank, self.nranks
                ))
            })
    }

    /// Sockets to `peer` (0 when there is no TCP path).
    pub fn streams_to(&self, peer: Rank) -> usize {
        self.peer(peer).map(|p| p.streams.len()).unwrap_or(0)
    }
}

fn write_all_vectored(s: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match s.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn writer_loop(p: Arc<PeerShared>, mut s: TcpStream, busy: usize) {
    loop {
        let job = {
            let mut q = lock(&p.sendq);
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.closed {
                    return;
                }
                q = p.send_cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let r = {
            let _g = lock(&p.busy[busy]);
            if p.aborted.load(Ordering::SeqCst) {
                Err(Error::Aborted("transport aborted".into()))
            } else {
                let head = wire::encode(Kind::Data, &job.msg.hdr, job.st);
                // SAFETY: post_send's contract keeps the message bytes valid until completion.
                let body = unsafe {
                    std::slice::from_raw_parts(
                        job.msg.data.0.add(job.st.off as usize),
                        job.st.len as usize,
                    )
                };
                write_all_vectored(&mut s, &mut [IoSlice::new(&head), IoSlice::new(body)])
                    .map_err(|e| p.send_err(e))
            }
        };
        match r {
            Ok(()) => {
                if job.msg.stripes_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    job.msg.handle.complete(Ok(()));
                }
                wait_drained(&p, &s);
            }
            Err(e) => {
                job.msg.handle.complete(Err(p.fail(e)));
                return;
            }
        }
    }
}

/// How long an abort waits, over all peers, for writers to finish the frame they are sending
/// so that the abort's reason follows it.
const ABORT_WAIT: Duration = Duration::from_millis(100);

/// Bytes of a socket's packets that may wait in this host's transmit path (qdisc and
/// device) before its writer takes another stripe.
const MAX_QUEUED: usize = MIN_STRIPE;

/// Returns once at most [`MAX_QUEUED`] bytes of the socket's packets wait in this host's
/// transmit path (SO_MEMINFO's `wmem_alloc`: packets handed to the qdisc or device and not
/// yet freed), or the peer failed. TCP_NOTSENT_LOWAT bounds only the bytes TCP has not sent;
/// where the per-flow cap is a local shaper (a cloud vNIC's, netsim's HTB), sent packets then
/// queue in the qdisc for milliseconds, and a writer that went straight back to the shared
/// queue would take stripes its flow cannot move yet while the other sockets idle. Waiting on
/// unacknowledged bytes instead (SIOCOUTQ) also counts ACKs delayed behind the peer's own
/// data and cost large messages 15%. On a fast NIC packets leave the queue at the next
/// transmit completion, so the wait is rare and short. (docs/NETWORK.md has the numbers.)
fn wait_drained(p: &PeerShared, s: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SK_MEMINFO_WMEM_ALLOC; the kernel fills SK_MEMINFO_VARS (9) counters.
    const WMEM_ALLOC: usize = 2;
    for tries in 0u32.. {
        let mut mi = [0u32; 9];
        let mut len = std::mem::size_of_val(&mi) as libc::socklen_t;
        // SAFETY: a valid socket descriptor and an output buffer of the length passed.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                mi.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 || mi[WMEM_ALLOC] as usize <= MAX_QUEUED || p.aborted.load(Ordering::SeqCst) {
            return;
        }
        if lock(&p.broken).is_some() {
            return;
        }
        // Over loopback or a fast NIC the packets leave within microseconds: look again at
        // once a few times before sleeping (a 50 us sleep cost 512 KiB loopback messages 10%).
        if tries < 8 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn reader_loop(p: Arc<PeerShared>, mut s: TcpStream, busy: usize) {
    loop {
        match read_stripe(&p, &mut s, busy) {
            Ok(true) => {}
            // The peer closed this socket between frames. Other sockets may still be
            // delivering stripes of pending messages: only the last close breaks the peer.
            Ok(false) => {
                if p.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
                    p.fail(p.io_err("receiving", std::io::ErrorKind::UnexpectedEof.into()));
                }
                return;
            }
            Err(e) => {
                p.fail(e);
                return;
            }
        }
    }
}

/// Reads a frame header; `Ok(false)` if the socket was closed cleanly before it.
fn read_header(p: &PeerShared, s: &mut TcpStream, head: &mut [u8; FRAME_LEN]) -> Result<bool> {
    let mut got = 0;
    while got < FRAME_LEN {
        match s.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(p.io_err("receiving", std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(p.io_err("receiving", e)),
        }
    }
    Ok(true)
}

/// Reads one stripe into its posted receive; `Ok(false)` on a clean close.
fn read_stripe(p: &PeerShared, s: &mut TcpStream, busy: usize) -> Result<bool> {
    let mut head = [0u8; FRAME_LEN];
    if !read_header(p, s, &mut head)? {
        return Ok(false);
    }
    let (kind, hdr, st) = wire::decode(&head).ok_or_else(|| Error::Remote {
        rank: p.rank.0,
        detail: "sent a corrupt frame header (protocol violation)".into(),
    })?;
    if kind == Kind::Abort {
        let n = hdr.len.min(MAX_ABORT_LEN) as usize;
        let mut why = vec![0u8; n];
        let _ = s.read_exact(&mut why);
        return Err(Error::Remote {
            rank: p.rank.0,
            detail: format!("aborted: {}", String::from_utf8_lossy(&why)),
        });
    }
    // Wait until the matching receive is posted (the sender is at most a window ahead).
    let msg = {
        let mut t = lock(&p.recvs);
        loop {
            if let Some(m) = t.posted.get(&st.msg_id) {
                break m.clone();
            }
            // Under the table's lock, as post_recv claims ids: an id is either posted or
            // listed here, never both.
            if st.msg_id >= p.next_recv_id.load(Ordering::Relaxed) {
                t.arrived.entry(st.msg_id).or_insert(hdr);
            }
            if t.closed || p.aborted.load(Ordering::SeqCst) {
                return Err(p
                    .broken()
                    .unwrap_or_else(|| Error::Aborted("transport aborted".into())));
            }
            t = p
                .recv_cv
                .wait_timeout(t, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    };
    msg.hdr.check(&hdr, p.rank)?;
    if st
        .off
        .checked_add(st.len)
        .is_none_or(|end| end > msg.hdr.len)
    {
        return Err(Error::Remote {
            rank: p.rank.0,
            detail: format!(
                "sent bytes {}+{} of a {}-byte message (protocol violation)",
                st.off, st.len, msg.hdr.len
            ),
        });
    }
    {
        let _g = lock(&p.busy[busy]);
        if p.aborted.load(Ordering::SeqCst) {
            return Err(Error::Aborted("transport aborted".into()));
        }
        // SAFETY: post_recv's contract: the destination is valid for msg.hdr.len bytes and
        // off+len fits (checked above).
        let body = unsafe {
            std::slice::from_raw_parts_mut(msg.data.0.add(st.off as usize), st.len as usize)
        };
        s.read_exact(body).map_err(|e| p.io_err("receiving", e))?;
    }
    if msg.bytes_left.fetch_sub(st.len.max(1), Ordering::AcqRel) == st.len.max(1) {
        lock(&p.recvs).posted.remove(&st.msg_id);
        msg.handle.complete(Ok(()));
    }
    Ok(true)
}

impl Transport for TcpTransport {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.nranks
    }
    fn name(&self, peer: Rank) -> String {
        match self.streams_to(peer) {
            0 | 1 => "tcp".into(),
            k => format!("tcp/{k}"),
        }
    }

    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        let p = self.peer(to)?;
        if let Some(e) = p.broken() {
            return Err(e);
        }
        let k = p.streams.len();
        let stripe = if k == 1 {
            len.max(1)
        } else {
            len.div_ceil(k).max(MIN_STRIPE)
        };
        let nstripes = len.div_ceil(stripe).max(1);
        let handle = OpHandle::new(to);
        let msg = Arc::new(SendMsg {
            hdr: FrameHeader {
                len: len as u64,
                ..hdr
            },
            data: SendPtr(data),
            stripes_left: AtomicUsize::new(nstripes),
            handle: handle.clone(),
        });
        {
            // Ids must enter the queue in order, so take the id under the queue lock.
            let mut q = lock(&p.sendq);
            if q.closed {
                return Err(p
                    .broken()
                    .unwrap_or_else(|| Error::Aborted("transport aborted".into())));
            }
            let mut id = lock(&p.next_send_id);
            let msg_id = *id;
            *id += 1;
            for i in 0..nstripes {
                let off = i * stripe;
                let st = Stripe {
                    msg_id,
                    off: off as u64,
                    len: (len - off).min(stripe) as u64,
                };
                q.jobs.push_back(SendJob {
                    msg: msg.clone(),
                    st,
                });
            }
        }
        p.send_cv.notify_all();
        Ok(handle)
    }

    fn peek(&self, from: Rank) -> Result<Option<FrameHeader>> {
        let p = self.peer(from)?;
        if let Some(e) = p.broken() {
            return Err(e);
        }
        let t = lock(&p.recvs);
        Ok(t.arrived
            .get(&p.next_recv_id.load(Ordering::Relaxed))
            .copied())
    }

    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        let p = self.peer(from)?;
        if let Some(e) = p.broken() {
            return Err(e);
        }
        let handle = OpHandle::new(from);
        {
            let mut t = lock(&p.recvs);
            if t.closed {
                return Err(p
                    .broken()
                    .unwrap_or_else(|| Error::Aborted("transport aborted".into())));
            }
            let id = p.next_recv_id.fetch_add(1, Ordering::Relaxed);
            t.arrived.remove(&id);
            // An empty message still arrives as one empty stripe; count it as one byte.
            let left = hdr.len.max(1);
            t.posted.insert(
                id,
                Arc::new(RecvMsg {
                    hdr,
                    data: RecvPtr(data),
                    bytes_left: AtomicU64::new(left),
                    handle: handle.clone(),
                }),
            );
        }
        p.recv_cv.notify_all();
        Ok(handle)
    }

    fn abort(&self, reason: &str) {
        // A writer in the middle of a frame finishes it first; waiting briefly for it lets the
        // reason reach a peer whose only socket was busy (else the peer reads just the close
        // and names this rank instead of the cause).
        let deadline = std::time::Instant::now() + ABORT_WAIT;
        for p in self.peers.iter().flatten() {
            if p.aborted.swap(true, Ordering::SeqCst) {
                continue;
            }
            p.fail(Error::Aborted(reason.to_string()));
            // Tell the peer why over the first socket whose writer is between frames.
            let why = &reason.as_bytes()[..reason.len().min(MAX_ABORT_LEN as usize)];
            // Every idle socket carries the reason, so whichever reader the peer hears from
            // first reads it before the close.
            for (i, s) in p.streams.iter().enumerate() {
                let idle = loop {
                    match p.busy[2 * i].try_lock() {
                        Ok(g) => break Some(g),
                        Err(_) if std::time::Instant::now() >= deadline => break None,
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                };
                if let Some(_idle) = idle {
                    let hdr = FrameHeader {
                        len: why.len() as u64,
                        ..FrameHeader::default()
                    };
                    let mut w = s;
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    let frame = wire::encode(
                        Kind::Abort,
                        &hdr,
                        Stripe {
                            msg_id: 0,
                            off: 0,
                            len: why.len() as u64,
                        },
                    );
                    let _ = w.write_all(&frame).and_then(|_| w.write_all(why));
                }
            }
            for s in &p.streams {
                let _ = s.shutdown(Shutdown::Both);
            }
            // Wait until no thread is inside user memory.
            for b in &p.busy {
                drop(lock(b));
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for p in self.peers.iter().flatten() {
            // Orderly close: the executor waited for everything it posted.
            p.aborted.store(true, Ordering::SeqCst);
            lock(&p.sendq).closed = true;
            p.send_cv.notify_all();
            lock(&p.recvs).closed = true;
            p.recv_cv.notify_all();
            for s in &p.streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.peers.clear();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}
