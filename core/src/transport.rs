//! The transport contract: post sends and receives of byte ranges to and from ranks, and wait
//! for their completion. Everything an algorithm needs fits here.
//!
//! Design points (from gloo's unbound buffers and NCCL's net plugin):
//! * Peers are ranks, never sockets. Messages between an ordered pair of ranks match in posting
//!   order (a FIFO pipe), which the plan verifier guarantees is enough.
//! * Operations are posted, not performed: `post_*` returns at once with an [`OpHandle`] and
//!   the transport moves the bytes on its own threads, so the executor can keep several
//!   segments in flight and reduce one while the next arrives.
//! * Every message carries a [`FrameHeader`]; the receiver states what it expects and a
//!   mismatch (another collective, count, dtype or op) fails with an error naming the peer
//!   instead of corrupting data.
//! * Time is passed in: waits take a deadline, so a dead peer becomes a `Timeout` naming it.

use crate::error::{Error, Result};
use crate::plan::{Collective, Rank};
use crate::DType;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Describes a message so the receiver can check it is the one it expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHeader {
    /// Per-communicator sequence number of the collective call.
    pub seq: u64,
    /// [`Collective::code`].
    pub coll: u8,
    pub dtype: u8,
    pub op: u8,
    /// Algorithm code of the plan that sent it (0 for point-to-point and control frames).
    pub algo: u8,
    /// Root rank of a rooted collective (broadcast, reduce), else 0.
    pub root: u32,
    /// The plan lane's channel (`Lane::channel`). Each channel has its own connections, so
    /// a well-formed plan never mixes them; carrying it lets a receiver reject a message that
    /// came down the wrong channel (a plan or transport bug) instead of reducing wrong data.
    pub channel: u8,
    /// The caller's per-rank element count for the whole collective.
    pub count: u64,
    /// Payload bytes of this message.
    pub len: u64,
}

impl FrameHeader {
    /// Checks that `got` (from `peer`) is the message described by `self`.
    pub fn check(&self, got: &FrameHeader, peer: Rank) -> Result<()> {
        let mism = |detail: String| {
            Err(Error::Mismatch {
                peer: peer.0,
                detail,
            })
        };
        if got.coll != self.coll {
            return mism(format!(
                "this rank is in {} but rank {peer} sent data for {} (calls must be issued in the same order on every rank)",
                Collective::name_of_code(self.coll),
                Collective::name_of_code(got.coll)
            ));
        }
        if got.seq != self.seq {
            return mism(format!(
                "{} call #{} here met call #{} on rank {peer} (a rank skipped or added a collective)",
                Collective::name_of_code(self.coll),
                self.seq,
                got.seq
            ));
        }
        if got.count != self.count {
            return mism(format!(
                "{}: count {} elements here but {} on rank {peer}",
                Collective::name_of_code(self.coll),
                self.count,
                got.count
            ));
        }
        if got.dtype != self.dtype {
            let name = |c| DType::from_code(c).map(|d| d.name()).unwrap_or("?");
            return mism(format!(
                "{}: dtype {} here but {} on rank {peer}",
                Collective::name_of_code(self.coll),
                name(self.dtype),
                name(got.dtype)
            ));
        }
        if got.op != self.op {
            let name = |c| {
                crate::ReduceOp::from_code(c)
                    .map(|d| d.name())
                    .unwrap_or("none")
            };
            return mism(format!(
                "{}: reduce op {} here but {} on rank {peer}",
                Collective::name_of_code(self.coll),
                name(self.op),
                name(got.op)
            ));
        }
        if got.root != self.root {
            return mism(format!(
                "{}: root {} here but root {} on rank {peer}",
                Collective::name_of_code(self.coll),
                self.root,
                got.root
            ));
        }
        if got.algo != self.algo {
            return mism(format!(
                "{}: algorithm {} here but {} on rank {peer} (ACSPEED_ALGO or the algorithm table differ between ranks)",
                Collective::name_of_code(self.coll),
                crate::plan::algorithm_name_of_code(self.algo),
                crate::plan::algorithm_name_of_code(got.algo)
            ));
        }
        if got.channel != self.channel {
            return mism(format!(
                "{}: message for channel {} arrived from rank {peer} where channel {} was expected (the ranks' plans differ)",
                Collective::name_of_code(self.coll),
                got.channel,
                self.channel
            ));
        }
        if got.len != self.len {
            return mism(format!(
                "{}: message of {} bytes from rank {peer} where {} were expected",
                Collective::name_of_code(self.coll),
                got.len,
                self.len
            ));
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    result: Option<Result<()>>,
}

/// Completion of one posted operation. Cloning shares the same completion.
#[derive(Clone)]
pub struct OpHandle {
    inner: Arc<(Mutex<State>, Condvar)>,
    peer: Rank,
}

impl OpHandle {
    pub fn new(peer: Rank) -> Self {
        OpHandle {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
            peer,
        }
    }

    /// A handle that is already complete.
    pub fn done(peer: Rank, r: Result<()>) -> Self {
        let h = OpHandle::new(peer);
        h.complete(r);
        h
    }

    pub fn peer(&self) -> Rank {
        self.peer
    }

    /// Marks the operation finished. Later calls are ignored (first outcome wins).
    pub fn complete(&self, r: Result<()>) {
        let (m, cv) = &*self.inner;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        if s.result.is_none() {
            s.result = Some(r);
            cv.notify_all();
        }
    }

    pub fn is_done(&self) -> bool {
        let (m, _) = &*self.inner;
        m.lock().unwrap_or_else(|e| e.into_inner()).result.is_some()
    }

    fn outcome(&self) -> Option<Result<()>> {
        let (m, _) = &*self.inner;
        let s = m.lock().unwrap_or_else(|e| e.into_inner());
        s.result.as_ref().map(|r| match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        })
    }

    /// Waits while calling `drive` (a transport's `progress`), for transports whose bytes move
    /// only when someone polls them. Spins briefly, then yields the CPU, then naps: ranks
    /// often outnumber cores, and a spinning waiter would steal the core its peer needs.
    pub fn wait_driven(
        &self,
        deadline: Instant,
        timeout: Duration,
        what: &dyn Fn() -> String,
        drive: &dyn Fn() -> bool,
    ) -> Result<()> {
        let mut idle = 0u32;
        let mut spins = 0u32;
        loop {
            if drive() {
                idle = 0;
            }
            if let Some(r) = self.outcome() {
                return r;
            }
            idle = idle.saturating_add(1);
            spins = spins.wrapping_add(1);
            if idle < 64 {
                std::hint::spin_loop();
            } else if idle < 4096 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
            // Checked on a count, not only when idle: a peer that keeps something moving
            // must not hide a wait that never ends.
            if spins % 64 == 0 && Instant::now() >= deadline {
                return Err(Error::Timeout {
                    rank: self.peer.0,
                    what: what(),
                    after: timeout,
                });
            }
        }
    }

    /// Blocks until the operation completes or `deadline` passes. `what` describes the
    /// operation for the timeout error.
    pub fn wait(
        &self,
        deadline: Instant,
        timeout: Duration,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let (m, cv) = &*self.inner;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &s.result {
                return match r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.duplicate()),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    rank: self.peer.0,
                    what: what(),
                    after: timeout,
                });
            }
            s = cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Moves bytes between the ranks of one communicator.
pub trait Transport: Send + Sync {
    fn rank(&self) -> Rank;
    fn nranks(&self) -> u32;
    /// Name for logs ("tcp", "memory", ...). `peer` lets mixed transports report per peer.
    fn name(&self, peer: Rank) -> String;

    /// Posts a send of `len` bytes at `data` to `to`.
    ///
    /// # Safety
    /// `data..data+len` must stay valid and unmodified until the returned handle completes
    /// (or the transport is aborted and has returned from `abort`).
    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle>;

    /// Posts a receive of exactly `hdr.len` bytes from `from` into `data`.
    ///
    /// # Safety
    /// `data..data+hdr.len` must stay valid and must not be accessed until the handle
    /// completes (or the transport is aborted and has returned from `abort`).
    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle>;

    /// The header of the next message from `from` that no posted receive has claimed, once it
    /// has arrived (`None`: nothing unclaimed from `from` yet). Receives from any source use
    /// it to learn which peer sent first. Transports that cannot tell say so.
    fn peek(&self, from: Rank) -> Result<Option<FrameHeader>> {
        Err(Error::invalid(format!(
            "transport {} cannot receive from any source (pass the source rank)",
            self.name(from)
        )))
    }

    /// Whether `post_recv_reduce` from `from` is supported (the transport can reduce straight
    /// out of its own buffers, saving the executor a copy through scratch memory).
    fn can_recv_reduce(&self, _from: Rank) -> bool {
        false
    }

    /// Posts a receive of `hdr.len` bytes from `from` that is reduced into `data`
    /// (`data = data (op) message`).
    ///
    /// # Safety
    /// As `post_recv`; `data` holds `hdr.len` bytes of `dtype` elements.
    unsafe fn post_recv_reduce(
        &self,
        from: Rank,
        _hdr: FrameHeader,
        _data: *mut u8,
        _dtype: DType,
        _op: crate::ReduceOp,
    ) -> Result<OpHandle> {
        Err(Error::invalid(format!(
            "transport {} cannot reduce on receive",
            self.name(from)
        )))
    }

    /// Whether waits must call [`Transport::progress`] (bytes move only when polled).
    fn needs_progress(&self) -> bool {
        false
    }

    /// Moves whatever can move without blocking; returns true if anything did.
    fn progress(&self) -> bool {
        false
    }

    /// Fails every pending operation with `Aborted(reason)`, tells peers (best effort) and
    /// stops using any user memory before returning. The transport is unusable afterwards.
    fn abort(&self, reason: &str);
}

/// A staging area in memory shared by the ranks of one host, where CPU-Reduce's
/// `HostReduce` steps meet: each member copies its bytes in, the members reduce disjoint parts,
/// each copies the result out, pipelined over slots.
pub trait HostStage: Send + Sync {
    /// The ranks that share the area, ascending (every `HostReduce` group must be these).
    fn group(&self) -> &[Rank];

    /// Reduces `call.len` bytes at `data` with every other member, which must make the same
    /// call (same `seq` and `count`) at the same point, and (with `copy_out`) writes the
    /// result back to `data`; a member that does not arrive within `timeout` is named in the
    /// error, and one that differs gets a `Mismatch`.
    ///
    /// # Safety
    /// `data..data+call.len` must be valid for reads and writes and unused by others until
    /// the call returns.
    unsafe fn host_reduce(&self, data: *mut u8, call: &StageCall) -> Result<()>;

    /// As [`host_reduce`](HostStage::host_reduce), but this member's input is read and its
    /// result written through `io` (segment by segment, straight into and out of the shared
    /// area) instead of from host memory: a device buffer reaches the area without a bounce
    /// through a host slot (CUDA CPU-Reduce).
    ///
    /// # Safety
    /// `io` must serve every range within `0..call.len` until the call returns.
    unsafe fn host_reduce_io(&self, io: &dyn StageIo, call: &StageCall) -> Result<()>;

    /// The whole shared area as this member maps it (start, bytes), for [`StageIo::pin`].
    fn area(&self) -> (*mut u8, usize);

    /// Fails the calls of every member that wait on the area, naming this rank.
    fn abort(&self, reason: &str);
}

/// One host reduce as a member describes it (every member must describe the same one).
#[derive(Clone, Copy, Debug)]
pub struct StageCall {
    /// Bytes of this member's buffer.
    pub len: usize,
    pub dtype: DType,
    pub op: crate::ReduceOp,
    /// The collective's sequence number and element count (checked across members).
    pub seq: u64,
    pub count: u64,
    /// Whether this member copies the result out (else it only contributes).
    pub copy_out: bool,
    /// How long to wait for the other members.
    pub timeout: Duration,
}

/// Where a member's `HostReduce` input comes from and its result goes when they are not in
/// host memory: a device that copies straight into and out of the staging area. Called from
/// the area's pipeline threads, one segment at a time, with offsets relative to the buffer.
pub trait StageIo: Sync {
    /// Copies input bytes `off..off+len` to `dst` (staging memory) and returns once they
    /// are there.
    ///
    /// # Safety
    /// `dst..dst+len` is valid for writes and nobody else's until the call returns.
    unsafe fn fill(&self, dst: *mut u8, off: usize, len: usize) -> Result<()>;

    /// Copies `len` result bytes at `src` to output bytes `off..off+len` and returns once
    /// `src` may change again.
    ///
    /// # Safety
    /// `src..src+len` is valid for reads and unchanged until the call returns.
    unsafe fn drain(&self, src: *const u8, off: usize, len: usize) -> Result<()>;

    /// Lets the device reach the staging area `ptr..ptr+len` directly (CUDA: page-locks and
    /// registers it, so copies into it are asynchronous DMA at the pinned rate instead of
    /// synchronous copies through the driver's own bounce buffer). Called once per staging
    /// area, before the first `fill`; the returned guard undoes it when dropped, which the
    /// owner does before the area is unmapped. `None`: nothing to do for this device.
    ///
    /// # Safety
    /// `ptr..ptr+len` is a mapping that outlives the returned guard.
    unsafe fn pin(&self, _ptr: *mut u8, _len: usize) -> Result<Option<PinGuard>> {
        Ok(None)
    }
}

/// Undoes a [`StageIo::pin`] when dropped.
pub type PinGuard = Box<dyn Send + Sync>;

/// Raw pointer that may cross threads; the `Transport` safety contract keeps it valid.
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(pub *const u8);
// SAFETY: the memory behind it is only touched under the post_send contract.
unsafe impl Send for SendPtr {}
// SAFETY: shared references only read the address; the bytes are read under the contract.
unsafe impl Sync for SendPtr {}

/// Raw mutable pointer that may cross threads; see [`SendPtr`].
#[derive(Clone, Copy, Debug)]
pub struct RecvPtr(pub *mut u8);
// SAFETY: the memory behind it is only touched under the post_recv contract.
unsafe impl Send for RecvPtr {}
// SAFETY: disjoint stripes are written by different threads; the contract keeps it valid.
unsafe impl Sync for RecvPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_from_another_channel_is_a_mismatch_naming_both() {
        let want = FrameHeader {
            coll: Collective::AllReduce.code(),
            channel: 0,
            len: 64,
            ..FrameHeader::default()
        };
        assert!(want.check(&want, Rank(3)).is_ok());
        let got = FrameHeader { channel: 2, ..want };
        let e = want.check(&got, Rank(3)).unwrap_err().to_string();
        assert!(
            e.contains("channel 2") && e.contains("channel 0") && e.contains("rank 3"),
            "{e}"
        );
    }
}
