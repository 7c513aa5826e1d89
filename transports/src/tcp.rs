//! TCP transport: one connection per peer, a writer and a reader thread per connection.
//!
//! `post_send` queues a descriptor for the writer thread, which writes header and payload
//! straight from the caller's memory (`writev`, no staging copy). `post_recv` queues the
//! destination for the reader thread, which checks the next frame's header against it and
//! reads the payload straight into the caller's memory. Posting receives ahead is what lets
//! the kernel copy segment `i+1` while the executor reduces segment `i`.
//!
//! Failure handling: the first error on a connection (EOF, reset, a bad frame, an abort frame
//! from the peer) marks that peer broken; every pending and later operation with it fails
//! with an error naming the rank. `abort` tells each idle peer why, shuts the sockets down
//! and waits until neither thread touches user memory.

use crate::wire::{self, Kind, FRAME_LEN, MAX_ABORT_LEN};
use acspeed_core::transport::{RecvPtr, SendPtr};
use acspeed_core::{Error, FrameHeader, OpHandle, Rank, Result, Transport};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct SendOp {
    hdr: FrameHeader,
    data: SendPtr,
    handle: OpHandle,
}

struct RecvOp {
    hdr: FrameHeader,
    data: RecvPtr,
    handle: OpHandle,
}

/// State shared by a peer's two threads and the transport.
struct PeerShared {
    rank: Rank,
    /// First failure on this connection; later operations fail with a copy of it.
    broken: Mutex<Option<Error>>,
    aborted: AtomicBool,
    /// Held by a thread while it reads or writes user memory (abort waits on them).
    write_busy: Mutex<()>,
    read_busy: Mutex<()>,
    stream: TcpStream,
}

impl PeerShared {
    fn fail(&self, e: Error) -> Error {
        let mut b = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_none() {
            *b = Some(e);
        }
        b.as_ref().unwrap().duplicate()
    }
    fn broken(&self) -> Option<Error> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| e.duplicate())
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

struct Peer {
    shared: Arc<PeerShared>,
    send_tx: Sender<SendOp>,
    recv_tx: Sender<RecvOp>,
}

/// A connected mesh of TCP connections (built by [`crate::connect::establish`]).
pub struct TcpTransport {
    rank: Rank,
    nranks: u32,
    peers: Vec<Option<Peer>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpTransport {
    /// Wraps connected streams (`streams[q]` talks to rank `q`, `None` for ourselves).
    pub(crate) fn from_streams(
        rank: Rank,
        streams: Vec<Option<TcpStream>>,
    ) -> Result<TcpTransport> {
        let nranks = streams.len() as u32;
        let mut peers = Vec::new();
        let mut threads = Vec::new();
        for (q, s) in streams.into_iter().enumerate() {
            let Some(stream) = s else {
                peers.push(None);
                continue;
            };
            let ctx = |e| Error::io(format!("setting up the connection to rank {q}"), e);
            stream.set_nodelay(true).map_err(ctx)?;
            let reader = stream.try_clone().map_err(ctx)?;
            let writer = stream.try_clone().map_err(ctx)?;
            let shared = Arc::new(PeerShared {
                rank: Rank(q as u32),
                broken: Mutex::new(None),
                aborted: AtomicBool::new(false),
                write_busy: Mutex::new(()),
                read_busy: Mutex::new(()),
                stream,
            });
            let (send_tx, send_rx) = unbounded();
            let (recv_tx, recv_rx) = unbounded();
            let (s1, s2) = (shared.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("acspeed-tx{q}"))
                    .spawn(move || writer_loop(s1, writer, send_rx))
                    .map_err(|e| Error::io("spawning a writer thread", e))?,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("acspeed-rx{q}"))
                    .spawn(move || reader_loop(s2, reader, recv_rx))
                    .map_err(|e| Error::io("spawning a reader thread", e))?,
            );
            peers.push(Some(Peer {
                shared,
                send_tx,
                recv_tx,
            }));
        }
        Ok(TcpTransport {
            rank,
            nranks,
            peers,
            threads: Mutex::new(threads),
        })
    }

    fn peer(&self, q: Rank) -> Result<&Peer> {
        self.peers
            .get(q.idx())
            .and_then(|p| p.as_ref())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "rank {q} is not a peer of rank {} (world size {})",
                    self.rank, self.nranks
                ))
            })
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

fn writer_loop(p: Arc<PeerShared>, mut s: TcpStream, rx: Receiver<SendOp>) {
    for op in rx {
        if let Some(e) = p.broken() {
            op.handle.complete(Err(e));
            continue;
        }
        let r = {
            let _busy = p.write_busy.lock().unwrap_or_else(|e| e.into_inner());
            if p.aborted.load(Ordering::SeqCst) {
                Err(Error::Aborted("transport aborted".into()))
            } else {
                let head = wire::encode(Kind::Data, &op.hdr);
                // SAFETY: post_send's contract keeps the bytes valid until we complete.
                let body = unsafe { std::slice::from_raw_parts(op.data.0, op.hdr.len as usize) };
                write_all_vectored(&mut s, &mut [IoSlice::new(&head), IoSlice::new(body)])
                    .map_err(|e| p.io_err("sending", e))
            }
        };
        match r {
            Ok(()) => op.handle.complete(Ok(())),
            Err(e) => op.handle.complete(Err(p.fail(e))),
        }
    }
}

fn reader_loop(p: Arc<PeerShared>, mut s: TcpStream, rx: Receiver<RecvOp>) {
    for op in rx {
        if let Some(e) = p.broken() {
            op.handle.complete(Err(e));
            continue;
        }
        let r = {
            let _busy = p.read_busy.lock().unwrap_or_else(|e| e.into_inner());
            if p.aborted.load(Ordering::SeqCst) {
                Err(Error::Aborted("transport aborted".into()))
            } else {
                read_frame(&p, &mut s, &op)
            }
        };
        match r {
            Ok(()) => op.handle.complete(Ok(())),
            Err(e) => op.handle.complete(Err(p.fail(e))),
        }
    }
}

fn read_frame(p: &PeerShared, s: &mut TcpStream, op: &RecvOp) -> Result<()> {
    let mut head = [0u8; FRAME_LEN];
    s.read_exact(&mut head)
        .map_err(|e| p.io_err("receiving", e))?;
    let (kind, hdr) = wire::decode(&head).ok_or_else(|| Error::Remote {
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
    op.hdr.check(&hdr, p.rank)?;
    // SAFETY: post_recv's contract: op.data is valid for op.hdr.len (== hdr.len) bytes.
    let body = unsafe { std::slice::from_raw_parts_mut(op.data.0, hdr.len as usize) };
    s.read_exact(body).map_err(|e| p.io_err("receiving", e))
}

impl Transport for TcpTransport {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.nranks
    }
    fn name(&self, _peer: Rank) -> String {
        "tcp".into()
    }

    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        let p = self.peer(to)?;
        if let Some(e) = p.shared.broken() {
            return Err(e);
        }
        let handle = OpHandle::new(to);
        let op = SendOp {
            hdr: FrameHeader {
                len: len as u64,
                ..hdr
            },
            data: SendPtr(data),
            handle: handle.clone(),
        };
        p.send_tx
            .send(op)
            .map_err(|_| Error::Aborted(format!("writer thread for rank {to} is gone")))?;
        Ok(handle)
    }

    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        let p = self.peer(from)?;
        if let Some(e) = p.shared.broken() {
            return Err(e);
        }
        let handle = OpHandle::new(from);
        p.recv_tx
            .send(RecvOp {
                hdr,
                data: RecvPtr(data),
                handle: handle.clone(),
            })
            .map_err(|_| Error::Aborted(format!("reader thread for rank {from} is gone")))?;
        Ok(handle)
    }

    fn abort(&self, reason: &str) {
        for p in self.peers.iter().flatten() {
            let sh = &p.shared;
            if sh.aborted.swap(true, Ordering::SeqCst) {
                continue;
            }
            sh.fail(Error::Aborted(reason.to_string()));
            // Tell the peer why, if our writer is between frames (never split a frame).
            if let Ok(_idle) = sh.write_busy.try_lock() {
                let why = reason.as_bytes();
                let why = &why[..why.len().min(MAX_ABORT_LEN as usize)];
                let hdr = FrameHeader {
                    seq: 0,
                    coll: 0,
                    dtype: 0,
                    op: 0,
                    count: 0,
                    len: why.len() as u64,
                };
                let mut s = &sh.stream;
                let _ = sh
                    .stream
                    .set_write_timeout(Some(Duration::from_millis(200)));
                let _ = s
                    .write_all(&wire::encode(Kind::Abort, &hdr))
                    .and_then(|_| s.write_all(why));
            }
            let _ = sh.stream.shutdown(Shutdown::Both);
            // Wait until neither thread is inside user memory.
            drop(sh.read_busy.lock().unwrap_or_else(|e| e.into_inner()));
            drop(sh.write_busy.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for p in self.peers.iter().flatten() {
            // Orderly close: everything posted was waited for by the executor.
            p.shared.aborted.store(true, Ordering::SeqCst);
            let _ = p.shared.stream.shutdown(Shutdown::Both);
        }
        // Closing the channels ends the threads.
        self.peers.clear();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}
