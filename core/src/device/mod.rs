//! The device executor: the same verified plans and lowered schedules as the CPU executor, run
//! with every buffer in device memory (docs/CUDA.md).
//!
//! [`program::compile`] reads a [`Schedule`](crate::schedule::Schedule) as queue work
//! ([`Program`]); a [`DeviceEngine`] performs it — the CUDA engine on streams (device copies
//! into peers' slots opened through CUDA IPC, reduction kernels, stream memory operations for
//! the counters), the test stand-in on threads over host memory. What is common to every
//! engine lives here: message counters that run on across calls ([`Cursor`]), the checks
//! before a call, and turning a queue that stopped into an error naming the rank it waited
//! for.

pub mod program;

pub use program::{compile, Conn, Cursor, DevOp, Loc, Program};

use crate::error::{Error, Result};
use crate::{DType, Rank, ReduceOp};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a call reduces with (`op` is `None` for collectives that only move data; `Avg`
/// reduces as `Sum`, its epilogue is the caller's), and its tag: every rank of the same call
/// computes the same one ([`DevCall::tag_of`]).
#[derive(Clone, Copy, Debug)]
pub struct DevCall {
    pub seq: u64,
    pub dtype: DType,
    pub op: Option<ReduceOp>,
    pub tag: u16,
}

/// Bits of a connection's ready word below the message count: the tag of the call whose
/// message it counts. A ready word is `(messages << READY_TAG_BITS) | tag`; waits compare the
/// count only, and after a call each rank checks that every connection it received on
/// carries its own call's tag where the word still counts this call's last message (a peer
/// already in its next call may have moved it on), so ranks that ran different calls fail
/// with a mismatch instead of returning what the other call left in their slots whenever
/// the peer has not run ahead: best effort, not a guarantee (docs/CUDA.md).
pub const READY_TAG_BITS: u32 = 16;

impl DevCall {
    /// The tag of call `seq` of `what` (the collective, its element count, dtype and op, in any
    /// encoding the caller keeps the same on every rank).
    pub fn tag_of(seq: u64, what: &[u64]) -> u16 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in std::iter::once(seq).chain(what.iter().copied()) {
            for b in v.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16
    }

    /// The ready word that says message `msg` (0-based) of this call is in.
    pub fn ready_word(&self, msg: u64) -> u64 {
        (msg + 1) << READY_TAG_BITS | self.tag as u64
    }
}

/// The call's buffers as addresses the engine understands (device pointers for CUDA).
#[derive(Clone, Copy, Debug)]
pub struct DevBuffers {
    pub input: u64,
    pub input_len: usize,
    pub output: u64,
    pub output_len: usize,
    /// An event of the stream that produced the buffers (a `CUevent` for CUDA, kept alive by
    /// the caller until the call returns): the engine's queues wait for it, not the caller.
    pub ready: Option<u64>,
}

/// Slots per connection and their size, fixed when the engine sets a connection up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    pub depth: usize,
    pub slot_bytes: usize,
}

/// Why an engine's run stopped short.
#[derive(Debug)]
pub enum Halt {
    /// The deadline passed; `done[q]` operations of queue `q` had completed.
    TimedOut { done: Vec<usize> },
    /// The engine failed (a driver error, an aborted peer).
    Failed(Error),
}

/// Performs compiled programs on one rank's device.
pub trait DeviceEngine: Send + Sync {
    /// The rank this engine serves.
    fn rank(&self) -> Rank;

    /// Sets up (once; later calls find them ready) the connections a program uses: receive
    /// slots and counters for `recvs`, the peers' slots and counters mapped for `sends`.
    fn connect(&self, sends: &[Conn], recvs: &[Conn], shape: SlotShape) -> Result<()>;

    /// Runs every queue of `queues` (absolute message numbers) to its end by `deadline`, with
    /// a scratch buffer of `scratch_bytes`.
    fn run(
        &self,
        queues: &[Vec<DevOp>],
        bufs: DevBuffers,
        scratch_bytes: usize,
        call: DevCall,
        deadline: Instant,
    ) -> std::result::Result<(), Halt>;

    /// The ready words of the connections this rank receives on, after a run (see
    /// [`READY_TAG_BITS`]).
    fn ready_words(&self, recvs: &[Conn]) -> Result<Vec<u64>>;

    /// The average's epilogue: divides the `bytes` of `dtype` at `buf` by `n`, after the sum
    /// (as [`crate::kernels::scale_avg`] does on the CPU).
    fn scale_avg(&self, buf: u64, bytes: usize, dtype: DType, n: usize) -> Result<()>;

    /// Stops every queue (a failure elsewhere); later runs fail.
    fn abort(&self, why: &str);
}

/// How engines that share memory between processes (CUDA IPC) trade handles when they set up
/// connections: both ends of a connection call it at the same point of the same call.
pub trait PeerExchange: Send + Sync {
    /// Sends `mine[i].1` to rank `mine[i].0` and returns what each of those ranks sent back,
    /// in the same order.
    fn exchange(&self, mine: &[(Rank, Vec<u8>)]) -> Result<Vec<Vec<u8>>>;
}

/// Runs programs on an engine, keeping the connection counters between calls.
pub struct DeviceExecutor<E: DeviceEngine> {
    engine: E,
    shape: SlotShape,
    timeout: Duration,
    cursor: Mutex<Cursor>,
    /// Set once a call failed: the counters no longer match the peers'.
    poisoned: Mutex<Option<String>>,
}

impl<E: DeviceEngine> DeviceExecutor<E> {
    /// Connections get `shape`'s slots; calls fail after `timeout` naming the rank waited for.
    pub fn new(engine: E, shape: SlotShape, timeout: Duration) -> Self {
        DeviceExecutor {
            engine,
            shape,
            timeout,
            cursor: Mutex::new(Cursor::default()),
            poisoned: Mutex::new(None),
        }
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Runs `prog` on `bufs`. Any failure poisons the executor (and aborts the engine, so the
    /// peers fail too instead of waiting).
    pub fn run(&self, prog: &Program, bufs: DevBuffers, call: DevCall) -> Result<()> {
        if let Some(why) = &*self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(Error::Aborted(format!(
                "the device executor failed earlier ({why})"
            )));
        }
        if prog.rank != self.engine.rank() {
            return Err(Error::invalid(format!(
                "a program of rank {} given to the device engine of rank {}",
                prog.rank,
                self.engine.rank()
            )));
        }
        if bufs.output_len != prog.output_bytes
            || (prog.input_bytes > 0 && bufs.input_len != prog.input_bytes)
        {
            return Err(Error::invalid(format!(
                "device buffers of {} / {} bytes where the program needs {} / {}",
                bufs.input_len, bufs.output_len, prog.input_bytes, prog.output_bytes
            )));
        }
        if prog.depth > self.shape.depth || prog.max_message > self.shape.slot_bytes {
            return Err(Error::invalid(format!(
                "the program needs {} slots of {} bytes per connection; the device connections have {} of {}",
                prog.depth, prog.max_message, self.shape.depth, self.shape.slot_bytes
            )));
        }
        let result = self.run_checked(prog, bufs, call);
        if let Err(e) = &result {
            let why = e.to_string();
            self.engine.abort(&why);
            *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
        result
    }

    fn run_checked(&self, prog: &Program, bufs: DevBuffers, call: DevCall) -> Result<()> {
        let (sends, recvs) = prog.connections();
        self.engine.connect(&sends, &recvs, self.shape)?;
        let (queues, expected) = {
            let mut cur = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
            let q = cur.resolve(prog);
            (
                q,
                recvs.iter().map(|c| cur.received(c)).collect::<Vec<u64>>(),
            )
        };
        let deadline = Instant::now() + self.timeout;
        match self
            .engine
            .run(&queues, bufs, prog.scratch_bytes, call, deadline)
        {
            Ok(()) => {
                // A word whose count is past this call's last message belongs to the peer's
                // next call (it may run ahead by the free slots): it proves nothing either way.
                let words = self.engine.ready_words(&recvs)?;
                let mask = (1u64 << READY_TAG_BITS) - 1;
                let differs =
                    |(w, n): (u64, u64)| w >> READY_TAG_BITS == n && w & mask != call.tag as u64;
                match recvs
                    .iter()
                    .zip(words.into_iter().zip(expected))
                    .find(|(_, wn)| differs(*wn))
                {
                    Some(((peer, ch), _)) => Err(Error::Mismatch {
                        peer: peer.0,
                        detail: format!(
                            "device call #{} ({}): rank {peer} sent on channel {ch} for another call (a different collective, count, dtype or op)",
                            call.seq, call.dtype
                        ),
                    }),
                    None => Ok(()),
                }
            }
            Err(Halt::Failed(e)) => Err(e),
            Err(Halt::TimedOut { done }) => Err(stuck(prog, &queues, &done, self.timeout, call)),
        }
    }
}

/// The error for queues that stopped at `done`. Of the peers waited for, it names one that
/// sent or took nothing in this call (`prog`'s call-relative numbers say so) if there is one:
/// the others are usually waiting on it too.
fn stuck(
    prog: &Program,
    queues: &[Vec<DevOp>],
    done: &[usize],
    after: Duration,
    call: DevCall,
) -> Error {
    let all: Vec<(bool, Rank, String)> = queues
        .iter()
        .zip(done)
        .enumerate()
        .filter_map(|(q, (ops, &d))| {
            let (rank, what) = Program::waits_on(ops.get(d)?)?;
            let silent = match prog.queues.get(q).and_then(|p| p.get(d)) {
                Some(DevOp::WaitReady { msg, .. }) => *msg == 0,
                Some(DevOp::WaitSlot { msg, .. }) => *msg as usize == prog.depth,
                _ => false,
            };
            Some((silent, rank, what))
        })
        .collect();
    let waiting = all
        .iter()
        .find(|w| w.0)
        .or(all.first())
        .map(|(_, r, w)| (*r, w.clone()));
    match waiting {
        Some((rank, what)) => Error::Timeout {
            rank: rank.0,
            what: format!("device call #{} ({}): waiting for {what}", call.seq, call.dtype),
            after,
        },
        None => Error::Aborted(format!(
            "device call #{} did not finish within {:.0}s, and no queue was waiting on a peer (the device itself stalled)",
            call.seq,
            after.as_secs_f64()
        )),
    }
}
