//! The plan IR: what one rank does in one collective, as data.
//!
//! An algorithm (in `acspeed-algorithms`) turns `(collective, rank, nranks)` into a [`RankPlan`]:
//! lanes of steps over *chunk indices*, never bytes and never transports. Plans are
//! size-independent (the executor maps chunk `i` of a buffer of `n` elements to a balanced
//! element range at run time), so one cached plan serves every message size. Steps use the
//! fused vocabulary NCCL and MSCCL settled on (`RecvReduceSend`, `RecvCopySend`, ...), because
//! fusion is where the speed is. [`crate::verify`] checks plans symbolically before they run.
//!
//! Matching rule: for each ordered pair of ranks and each channel, all sends from `a` to `b`
//! are issued by one lane of `a`, and all receives of `b` from `a` by one lane of `b`;
//! messages then match in issue order. The verifier enforces it, which keeps transports
//! simple FIFO pipes (a channel is another set of pipes).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// A rank number within a communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rank(pub u32);

impl Rank {
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The collectives acspeed plans. Roots are ranks within the communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Collective {
    AllReduce,
    Broadcast { root: Rank },
    Reduce { root: Rank },
    AllGather,
    ReduceScatter,
    AllToAll,
    Barrier,
}

impl Collective {
    pub fn name(&self) -> &'static str {
        match self {
            Collective::AllReduce => "allreduce",
            Collective::Broadcast { .. } => "broadcast",
            Collective::Reduce { .. } => "reduce",
            Collective::AllGather => "allgather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllToAll => "alltoall",
            Collective::Barrier => "barrier",
        }
    }

    /// Wire code (frame headers carry it so that mismatched calls are detected).
    pub fn code(&self) -> u8 {
        match self {
            Collective::AllReduce => 1,
            Collective::Broadcast { .. } => 2,
            Collective::Reduce { .. } => 3,
            Collective::AllGather => 4,
            Collective::ReduceScatter => 5,
            Collective::AllToAll => 6,
            Collective::Barrier => 7,
        }
    }

    pub fn name_of_code(code: u8) -> &'static str {
        match code {
            1 => "allreduce",
            2 => "broadcast",
            3 => "reduce",
            4 => "allgather",
            5 => "reduce_scatter",
            6 => "alltoall",
            7 => "barrier",
            8 => "send/recv",
            _ => "unknown collective",
        }
    }

    /// Whether the collective reads a separate input buffer. The others work in place on the
    /// output buffer (the executor copies a distinct input in first).
    pub fn has_input(&self) -> bool {
        matches!(
            self,
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll
        )
    }

    /// Elements in (input, output) for a per-rank `count` as the user API defines it:
    /// allgather: `count` in, `n*count` out; reduce-scatter: `n*count` in, `count` out;
    /// all-to-all: `n*count` both; the in-place ones: `count`.
    pub fn buffer_elems(&self, nranks: usize, count: usize) -> (usize, usize) {
        match self {
            Collective::AllGather => (count, nranks * count),
            Collective::ReduceScatter => (nranks * count, count),
            Collective::AllToAll => (nranks * count, nranks * count),
            Collective::Barrier => (0, 0),
            _ => (0, count),
        }
    }
}

/// The collective `--collective` and `explain` name: allreduce, broadcast or reduce (rooted
/// at rank 0).
pub fn collective_named(s: &str) -> crate::Result<Collective> {
    Ok(match s {
        "allreduce" => Collective::AllReduce,
        "broadcast" => Collective::Broadcast { root: Rank(0) },
        "reduce" => Collective::Reduce { root: Rank(0) },
        other => {
            return Err(crate::Error::invalid(format!(
                "--collective {other}: expected allreduce, broadcast or reduce"
            )))
        }
    })
}

/// Every algorithm name `ACSPEED_ALGO`, the size rules and `--algo` accept, besides `auto`
/// (`hybrid` alone is `hybrid:ring`, which is also accepted). The one list: configuration
/// checks names against it before anything connects, and the algorithms crate's `Algorithm`
/// spells exactly these.
pub const ALGORITHM_NAMES: [&str; 8] = [
    "ring",
    "tree",
    "ntree",
    "hybrid",
    "hybrid:tree",
    "hybrid:butterfly",
    "hybrid:ps",
    "cpu_reduce",
];

/// The canonical spelling of an algorithm name (lower case, `hybrid:ring` as `hybrid`), or
/// an error that names `what` (the variable or option it came from) and the valid names.
pub fn canonical_algorithm(what: &str, name: &str) -> crate::Result<&'static str> {
    let s = name.trim().to_ascii_lowercase();
    let s = if s == "hybrid:ring" { "hybrid" } else { &s };
    ALGORITHM_NAMES
        .iter()
        .copied()
        .find(|n| *n == s)
        .ok_or_else(|| {
            crate::Error::invalid(format!(
                "{what}: unknown algorithm '{}' (available: auto, {})",
                name.trim(),
                ALGORITHM_NAMES.join(", ")
            ))
        })
}

/// Wire code of an algorithm name (frame headers carry it so that ranks running different
/// algorithms fail with an error instead of exchanging mismatched data).
pub fn algorithm_code(name: &str) -> u8 {
    match name.split(':').next().unwrap_or(name) {
        "ring" => 1,
        "tree" => 2,
        "hybrid" => 3,
        "ntree" => 4,
        "cpu_reduce" => 5,
        _ => 255,
    }
}

/// Name of an algorithm wire code (for error messages).
pub fn algorithm_name_of_code(code: u8) -> &'static str {
    match code {
        0 => "none (point-to-point)",
        1 => "ring",
        2 => "tree",
        3 => "hybrid",
        4 => "ntree",
        5 => "cpu_reduce",
        _ => "unknown",
    }
}

/// Which buffer a chunk lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Buf {
    Input,
    Output,
    /// Executor-owned temporary memory: `scratch_factor` copies of the output layout.
    Scratch,
}

/// Chunk `index` of buffer `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub buf: Buf,
    pub index: u32,
}

impl ChunkRef {
    pub fn out(index: u32) -> Self {
        ChunkRef {
            buf: Buf::Output,
            index,
        }
    }
    pub fn inp(index: u32) -> Self {
        ChunkRef {
            buf: Buf::Input,
            index,
        }
    }
    pub fn scratch(index: u32) -> Self {
        ChunkRef {
            buf: Buf::Scratch,
            index,
        }
    }
}

impl fmt::Display for ChunkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = match self.buf {
            Buf::Input => "in",
            Buf::Output => "out",
            Buf::Scratch => "tmp",
        };
        write!(f, "{b}[{}]", self.index)
    }
}

/// Up to [`Peers::MAX`] distinct ranks, in order: the sources or destinations of a [`Op::Fan`].
/// A fixed array keeps [`Op`] `Copy`; eight covers binary trees (2), spanning trees on
/// 8-GPU boxes (<= 7) and hierarchical fan-outs. Serialised as a list of ranks.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peers {
    len: u8,
    ranks: [u32; Peers::MAX],
}

impl Peers {
    pub const MAX: usize = 8;

    pub fn new(ranks: &[Rank]) -> Peers {
        assert!(
            ranks.len() <= Peers::MAX,
            "a fan step has at most {} peers, got {}",
            Peers::MAX,
            ranks.len()
        );
        let mut p = Peers {
            len: ranks.len() as u8,
            ranks: [0; Peers::MAX],
        };
        for (i, r) in ranks.iter().enumerate() {
            p.ranks[i] = r.0;
        }
        p
    }

    pub fn none() -> Peers {
        Peers::new(&[])
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Rank> + '_ {
        self.ranks[..self.len as usize].iter().map(|r| Rank(*r))
    }

    pub fn to_vec(&self) -> Vec<Rank> {
        self.iter().collect()
    }
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|r| r.0)).finish()
    }
}

impl Serialize for Peers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v: Vec<Rank> = Vec::deserialize(d)?;
        if v.len() > Peers::MAX {
            return Err(serde::de::Error::custom(format!(
                "a fan step has at most {} peers, got {}",
                Peers::MAX,
                v.len()
            )));
        }
        Ok(Peers::new(&v))
    }
}

/// One step. Fused ops exist because pipelining them segment by segment is what lets a ring
/// forward data while it is still arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Send chunk `src` to `to`.
    Send { to: Rank, src: ChunkRef },
    /// Receive into `dst` (overwrite).
    Recv { from: Rank, dst: ChunkRef },
    /// Receive and reduce into `dst`.
    RecvReduce { from: Rank, dst: ChunkRef },
    /// Receive, reduce into `dst`, and send the result on to `to`.
    RecvReduceSend { from: Rank, to: Rank, dst: ChunkRef },
    /// Receive into `dst` and send the same bytes on to `to`.
    RecvCopySend { from: Rank, to: Rank, dst: ChunkRef },
    /// Local copy.
    Copy { src: ChunkRef, dst: ChunkRef },
    /// Local reduce: `dst = dst (op) src`.
    Reduce { src: ChunkRef, dst: ChunkRef },
    /// Multi-source reduce-and-forward, segment by segment: receive segment k from every rank
    /// in `from` (reducing each into `dst` in list order when `reduce`, else overwriting `dst`
    /// from the single source), then send segment k of `dst` to every rank in `to`. A tree
    /// node forwards segment k upward as soon as every child's segment k is in; `from` empty
    /// sends `dst` to every rank in `to` (a tree root's broadcast).
    Fan {
        from: Peers,
        to: Peers,
        dst: ChunkRef,
        reduce: bool,
    },
    /// Reduction of `dst` among `group` (this rank and others of its host) through the
    /// host's shared staging area: every member copies its chunk in, the members reduce
    /// disjoint parts of it, and the members in `to` copy the result out (the others keep
    /// their chunk as it was), pipelined segment by segment (the CPU-Reduce step). Members
    /// meet at their n-th `HostReduce` in plan order.
    HostReduce {
        dst: ChunkRef,
        group: Peers,
        to: Peers,
    },
}

impl Op {
    /// Ranks the step receives from, in the order it reduces them.
    pub fn recv_peers(&self) -> Vec<Rank> {
        match *self {
            Op::Recv { from, .. }
            | Op::RecvReduce { from, .. }
            | Op::RecvReduceSend { from, .. }
            | Op::RecvCopySend { from, .. } => vec![from],
            Op::Fan { from, .. } => from.to_vec(),
            Op::Send { .. } | Op::Copy { .. } | Op::Reduce { .. } | Op::HostReduce { .. } => {
                Vec::new()
            }
        }
    }
    /// Ranks the step sends to.
    pub fn send_peers(&self) -> Vec<Rank> {
        match *self {
            Op::Send { to, .. } | Op::RecvReduceSend { to, .. } | Op::RecvCopySend { to, .. } => {
                vec![to]
            }
            Op::Fan { to, .. } => to.to_vec(),
            _ => Vec::new(),
        }
    }
    /// Whether received data is reduced into the destination (rather than overwriting it).
    pub fn reduces(&self) -> bool {
        matches!(
            self,
            Op::RecvReduce { .. }
                | Op::RecvReduceSend { .. }
                | Op::Reduce { .. }
                | Op::HostReduce { .. }
                | Op::Fan { reduce: true, .. }
        )
    }
    /// Chunks the step reads and writes (for bounds checks); the written one is last.
    pub fn chunks(&self) -> Vec<ChunkRef> {
        match *self {
            Op::Send { src, .. } => vec![src],
            Op::Recv { dst, .. }
            | Op::RecvReduce { dst, .. }
            | Op::RecvReduceSend { dst, .. }
            | Op::RecvCopySend { dst, .. }
            | Op::HostReduce { dst, .. }
            | Op::Fan { dst, .. } => vec![dst],
            Op::Copy { src, dst } | Op::Reduce { src, dst } => vec![src, dst],
        }
    }
    /// The chunk the step writes, if any.
    pub fn writes(&self) -> Option<ChunkRef> {
        match *self {
            Op::Send { .. } => None,
            Op::Fan { from, dst, .. } => (!from.is_empty()).then_some(dst),
            _ => self.chunks().last().copied(),
        }
    }
    /// The chunk whose bytes the step sends, if it sends.
    pub fn sent_chunk(&self) -> Option<ChunkRef> {
        if self.send_peers().is_empty() {
            None
        } else {
            self.chunks().first().copied()
        }
    }
}

/// Identifies a step within one rank's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepId {
    pub lane: u32,
    pub step: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub op: Op,
    /// Steps of *other* lanes that must finish first (steps within a lane run in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<StepId>,
}

impl From<Op> for Step {
    fn from(op: Op) -> Self {
        Step {
            op,
            deps: Vec::new(),
        }
    }
}

/// The most channels a plan may use (each is a transport instance per peer).
pub const MAX_CHANNELS: u32 = 16;

/// Steps that run in order on one executor thread, over one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// The channel the lane's messages travel on: channels are independent FIFO pipes
    /// between the same two ranks (each its own transport instance), so lanes that share a
    /// peer — the trees of n-trees — run concurrently instead of serialising on one pipe.
    /// The matching rule holds per channel.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub channel: u32,
    pub steps: Vec<Step>,
}

impl Lane {
    /// A lane on channel 0.
    pub fn new(steps: Vec<Step>) -> Lane {
        Lane { channel: 0, steps }
    }
}

/// Everything one rank does in one collective.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankPlan {
    pub collective: Collective,
    /// Name of the generating algorithm (for logs and plan files).
    pub algorithm: String,
    pub rank: Rank,
    pub nranks: u32,
    /// Number of chunks the input / output buffers are split into.
    pub input_chunks: u32,
    pub output_chunks: u32,
    /// Scratch = this many copies of the output buffer, split into as many copies of its
    /// chunks (scratch chunk `c * output_chunks + m` is shaped like output chunk `m`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scratch_factor: u32,
    /// Relative sizes of the output chunks (empty: balanced). Lets a plan give a fast path a
    /// larger share; scratch copies follow the same layout. Every rank must use the same
    /// weights, which the verifier checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    pub lanes: Vec<Lane>,
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

impl RankPlan {
    pub fn chunks_of(&self, buf: Buf) -> u32 {
        match buf {
            Buf::Input => self.input_chunks,
            Buf::Output => self.output_chunks,
            Buf::Scratch => self.scratch_factor * self.output_chunks,
        }
    }

    /// Elements of each buffer (input, output, scratch) for a per-rank `count`.
    pub fn buffer_elems(&self, count: usize) -> (usize, usize, usize) {
        let (i, o) = self.collective.buffer_elems(self.nranks as usize, count);
        (i, o, o * self.scratch_factor as usize)
    }

    /// Element range of chunk `c` for a per-rank `count`.
    pub fn chunk_elems(&self, c: ChunkRef, count: usize) -> Range<usize> {
        let (i, o, _) = self.buffer_elems(count);
        match c.buf {
            Buf::Input => chunk_range(i, self.input_chunks, c.index),
            Buf::Output => self.output_range(o, c.index),
            Buf::Scratch => {
                let (copy, m) = (
                    c.index / self.output_chunks.max(1),
                    c.index % self.output_chunks.max(1),
                );
                let r = self.output_range(o, m);
                (r.start + copy as usize * o)..(r.end + copy as usize * o)
            }
        }
    }

    fn output_range(&self, elems: usize, i: u32) -> Range<usize> {
        if self.weights.is_empty() {
            chunk_range(elems, self.output_chunks, i)
        } else {
            weighted_range(elems, &self.weights, i)
        }
    }

    /// The most ranks any one step receives from (sizes the executor's receive slots).
    pub fn max_fan_in(&self) -> usize {
        self.lanes
            .iter()
            .flat_map(|l| &l.steps)
            .map(|s| s.op.recv_peers().len())
            .max()
            .unwrap_or(0)
    }

    pub fn step(&self, id: StepId) -> Option<&Step> {
        self.lanes
            .get(id.lane as usize)?
            .steps
            .get(id.step as usize)
    }

    /// Channels the plan uses (the highest lane channel + 1).
    pub fn channels(&self) -> u32 {
        self.lanes.iter().map(|l| l.channel + 1).max().unwrap_or(1)
    }

    pub fn num_steps(&self) -> usize {
        self.lanes.iter().map(|l| l.steps.len()).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans always serialise")
    }

    pub fn from_json(s: &str) -> crate::Result<Self> {
        serde_json::from_str(s)
            .map_err(|e| crate::Error::Plan(format!("cannot parse plan file: {e}")))
    }
}

/// Element range of chunk `i` when `elems` elements are split into `chunks` balanced chunks.
/// Chunk sizes differ by at most one element; empty buffers give empty chunks.
pub fn chunk_range(elems: usize, chunks: u32, i: u32) -> Range<usize> {
    debug_assert!(i < chunks.max(1));
    let at = |k: u32| ((elems as u128 * k as u128) / chunks.max(1) as u128) as usize;
    at(i)..at(i + 1)
}

/// Element range of chunk `i` when `elems` elements are split in proportion to `weights`
/// (rounded down at each boundary, so the ranges tile the buffer exactly).
pub fn weighted_range(elems: usize, weights: &[u32], i: u32) -> Range<usize> {
    let total: u128 = weights.iter().map(|w| *w as u128).sum::<u128>().max(1);
    let at = |k: usize| {
        let w: u128 = weights[..k].iter().map(|w| *w as u128).sum();
        ((elems as u128 * w) / total) as usize
    };
    at(i as usize)..at(i as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ranges_tile_the_buffer() {
        for elems in [0usize, 1, 7, 100, 1001] {
            for chunks in 1..12u32 {
                let mut next = 0;
                for i in 0..chunks {
                    let r = chunk_range(elems, chunks, i);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= elems / chunks as usize + 1);
                    next = r.end;
                }
                assert_eq!(next, elems);
            }
        }
    }

    #[test]
    fn weighted_ranges_follow_the_weights() {
        let w = [2u32, 1, 0, 1];
        let rs: Vec<_> = (0..4).map(|i| weighted_range(100, &w, i)).collect();
        assert_eq!(rs, vec![0..50, 50..75, 75..75, 75..100]);
        for elems in [0usize, 1, 7, 1001] {
            let mut next = 0;
            for i in 0..4 {
                let r = weighted_range(elems, &w, i);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, elems);
        }
    }

    #[test]
    fn plan_json_round_trip() {
        let p = RankPlan {
            collective: Collective::Broadcast { root: Rank(1) },
            algorithm: "ring".into(),
            rank: Rank(0),
            nranks: 2,
            input_chunks: 0,
            output_chunks: 1,
            scratch_factor: 0,
            weights: vec![],
            lanes: vec![Lane::new(vec![Op::Recv {
                from: Rank(1),
                dst: ChunkRef::out(0),
            }
            .into()])],
        };
        assert_eq!(RankPlan::from_json(&p.to_json()).unwrap(), p);
        let mut q = p.clone();
        q.weights = vec![3];
        q.lanes[0].steps.push(
            Op::Fan {
                from: Peers::new(&[Rank(1)]),
                to: Peers::none(),
                dst: ChunkRef::out(0),
                reduce: true,
            }
            .into(),
        );
        let json = q.to_json();
        assert!(json.contains("\"weights\""), "{json}");
        assert_eq!(RankPlan::from_json(&json).unwrap(), q);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["lanes"][0]["steps"][1]["op"]["Fan"]["from"] = serde_json::json!(vec![1; 9]);
        assert!(RankPlan::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
            .contains("at most 8 peers"));
        assert!(RankPlan::from_json("{")
            .unwrap_err()
            .to_string()
            .contains("plan"));
    }
}
