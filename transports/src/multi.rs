//! Per-peer transport selection: plans name ranks, never transports, so a hybrid job is just
//! a [`Multi`] that routes each peer to shared memory, RDMA or TCP.

use acspeed_core::{DType, Error, FrameHeader, OpHandle, Rank, ReduceOp, Result, Transport};
use std::sync::Arc;

/// Routes every peer to one of several transports.
pub struct Multi {
    rank: Rank,
    nranks: u32,
    route: Vec<Option<usize>>,
    parts: Vec<Arc<dyn Transport>>,
    progress: Vec<usize>,
}

impl Multi {
    /// `route[q]` indexes `parts` for peer q (`None` for ourselves).
    pub fn new(
        rank: Rank,
        parts: Vec<Arc<dyn Transport>>,
        route: Vec<Option<usize>>,
    ) -> Result<Multi> {
        if route.iter().flatten().any(|i| *i >= parts.len()) {
            return Err(Error::invalid("transport route out of range"));
        }
        let progress = (0..parts.len())
            .filter(|i| parts[*i].needs_progress())
            .collect();
        Ok(Multi {
            rank,
            nranks: route.len() as u32,
            route,
            parts,
            progress,
        })
    }

    fn part(&self, peer: Rank) -> Result<&Arc<dyn Transport>> {
        self.route
            .get(peer.idx())
            .copied()
            .flatten()
            .map(|i| &self.parts[i])
            .ok_or_else(|| {
                Error::invalid(format!(
                    "rank {peer} is not a peer of rank {} ({} ranks)",
                    self.rank, self.nranks
                ))
            })
    }
}

impl Transport for Multi {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.nranks
    }
    fn name(&self, peer: Rank) -> String {
        self.part(peer)
            .map(|t| t.name(peer))
            .unwrap_or_else(|_| "self".into())
    }
    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        // SAFETY: forwarded under the same contract.
        unsafe { self.part(to)?.post_send(to, hdr, data, len) }
    }
    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        // SAFETY: forwarded under the same contract.
        unsafe { self.part(from)?.post_recv(from, hdr, data) }
    }
    fn peek(&self, from: Rank) -> Result<Option<FrameHeader>> {
        self.part(from)?.peek(from)
    }
    fn can_recv_reduce(&self, from: Rank) -> bool {
        self.part(from)
            .map(|t| t.can_recv_reduce(from))
            .unwrap_or(false)
    }
    unsafe fn post_recv_reduce(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<OpHandle> {
        // SAFETY: forwarded under the same contract.
        unsafe {
            self.part(from)?
                .post_recv_reduce(from, hdr, data, dtype, op)
        }
    }
    fn needs_progress(&self) -> bool {
        !self.progress.is_empty()
    }
    /// Progresses every polled transport, whichever peer the caller waits on: a rank blocked
    /// on a TCP receive must still feed its shared-memory neighbours, or a ring deadlocks.
    fn progress(&self) -> bool {
        let mut moved = false;
        for i in &self.progress {
            moved |= self.parts[*i].progress();
        }
        moved
    }
    fn abort(&self, reason: &str) {
        for p in &self.parts {
            p.abort(reason);
        }
    }
}
