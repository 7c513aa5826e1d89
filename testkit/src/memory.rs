//! An in-process transport for tests: ranks are threads, messages are copied through per-pair
//! mailboxes. It honours the same contract as the real transports (FIFO per pair, header
//! checks, abort), so algorithm and executor tests need no sockets.

use acspeed_core::plan::Rank;
use acspeed_core::transport::{FrameHeader, OpHandle, RecvPtr, Transport};
use acspeed_core::{DType, Error, ReduceOp, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

struct PostedRecv {
    hdr: FrameHeader,
    data: RecvPtr,
    /// Reduce into `data` instead of copying (the fused receive).
    reduce: Option<(DType, ReduceOp)>,
    handle: OpHandle,
}

#[derive(Default)]
struct Mailbox {
    /// Messages sent before a matching receive was posted.
    queued: VecDeque<(FrameHeader, Vec<u8>)>,
    /// Receives posted before their message arrived.
    posted: VecDeque<PostedRecv>,
    /// Set when either side aborted; new operations fail with it.
    broken: Option<String>,
}

struct Fabric {
    n: u32,
    fused_reduce: bool,
    // boxes[src * n + dst]
    boxes: Vec<Mutex<Mailbox>>,
}

/// One rank's endpoint of an in-memory fabric.
pub struct MemoryTransport {
    fabric: Arc<Fabric>,
    rank: Rank,
}

impl MemoryTransport {
    /// Creates `n` connected endpoints, index = rank.
    pub fn fabric(n: u32) -> Vec<MemoryTransport> {
        MemoryTransport::fabric_with(n, false)
    }

    /// Like [`MemoryTransport::fabric`]; with `fused_reduce` the endpoints offer
    /// `post_recv_reduce`, so tests cover both executor paths.
    pub fn fabric_with(n: u32, fused_reduce: bool) -> Vec<MemoryTransport> {
        let fabric = Arc::new(Fabric {
            n,
            fused_reduce,
            boxes: (0..n * n).map(|_| Mutex::new(Mailbox::default())).collect(),
        });
        (0..n)
            .map(|r| MemoryTransport {
                fabric: fabric.clone(),
                rank: Rank(r),
            })
            .collect()
    }

    fn mailbox(&self, src: Rank, dst: Rank) -> Result<std::sync::MutexGuard<'_, Mailbox>> {
        if src.0 >= self.fabric.n || dst.0 >= self.fabric.n {
            return Err(Error::invalid(format!(
                "rank {} out of range 0..{}",
                src.0.max(dst.0),
                self.fabric.n
            )));
        }
        Ok(self.fabric.boxes[(src.0 * self.fabric.n + dst.0) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }
}

/// Copies a message into a posted receive, checking the header first.
fn deliver(p: PostedRecv, hdr: &FrameHeader, bytes: &[u8], from: Rank) {
    let r = p.hdr.check(hdr, from).map(|()| match p.reduce {
        // SAFETY: post_recv's contract: p.data is valid for p.hdr.len == bytes.len() bytes.
        None => unsafe {
            acspeed_core::kernels::copy::copy_nonoverlapping(bytes.as_ptr(), p.data.0, bytes.len())
        },
        Some((dtype, op)) => {
            // SAFETY: as above, and nobody else touches it until the handle completes.
            let dst = unsafe { std::slice::from_raw_parts_mut(p.data.0, bytes.len()) };
            acspeed_core::kernels::reduce(dtype, op, dst, bytes);
        }
    });
    p.handle.complete(r);
}

impl MemoryTransport {
    fn post(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        reduce: Option<(DType, ReduceOp)>,
    ) -> Result<OpHandle> {
        let mut mb = self.mailbox(from, self.rank)?;
        let handle = OpHandle::new(from);
        let p = PostedRecv {
            hdr,
            data: RecvPtr(data),
            reduce,
            handle: handle.clone(),
        };
        if let Some((h, bytes)) = mb.queued.pop_front() {
            deliver(p, &h, &bytes, from);
        } else if let Some(why) = &mb.broken {
            return Err(Error::Remote {
                rank: from.0,
                detail: why.clone(),
            });
        } else {
            mb.posted.push_back(p);
        }
        Ok(handle)
    }
}

impl Transport for MemoryTransport {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.fabric.n
    }
    fn name(&self, _peer: Rank) -> String {
        "memory".into()
    }

    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        let mut mb = self.mailbox(self.rank, to)?;
        if let Some(why) = &mb.broken {
            return Err(Error::Aborted(why.clone()));
        }
        // SAFETY: post_send's contract: data is valid for len bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        let hdr = FrameHeader {
            len: len as u64,
            ..hdr
        };
        match mb.posted.pop_front() {
            Some(p) => deliver(p, &hdr, bytes, self.rank),
            None => mb.queued.push_back((hdr, bytes.to_vec())),
        }
        // The bytes were copied (or delivered): the sender's memory is free again.
        Ok(OpHandle::done(to, Ok(())))
    }

    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        self.post(from, hdr, data, None)
    }

    fn peek(&self, from: Rank) -> Result<Option<FrameHeader>> {
        let mb = self.mailbox(from, self.rank)?;
        if let Some(why) = &mb.broken {
            return Err(Error::Remote {
                rank: from.0,
                detail: why.clone(),
            });
        }
        // Queued messages wait only while no receive is posted.
        Ok(mb.queued.front().map(|(h, _)| *h))
    }

    fn can_recv_reduce(&self, _from: Rank) -> bool {
        self.fabric.fused_reduce
    }

    unsafe fn post_recv_reduce(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<OpHandle> {
        self.post(from, hdr, data, Some((dtype, op)))
    }

    fn abort(&self, reason: &str) {
        for peer in 0..self.fabric.n {
            let peer = Rank(peer);
            if peer == self.rank {
                continue;
            }
            // Our pending receives fail locally; the peer's receives from us fail as remote.
            if let Ok(mut mb) = self.mailbox(peer, self.rank) {
                mb.broken = Some(format!("rank {} aborted: {reason}", self.rank));
                for p in mb.posted.drain(..) {
                    p.handle.complete(Err(Error::Aborted(reason.to_string())));
                }
            }
            if let Ok(mut mb) = self.mailbox(self.rank, peer) {
                mb.broken = Some(format!("rank {} aborted: {reason}", self.rank));
                for p in mb.posted.drain(..) {
                    p.handle.complete(Err(Error::Remote {
                        rank: self.rank.0,
                        detail: reason.to_string(),
                    }));
                }
            }
        }
    }
}
