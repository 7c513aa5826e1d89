//! How a plan becomes messages: the **lowering** every consumer of a plan shares.
//!
//! [`lower`] turns one rank's verified [`RankPlan`], for a message size, a segment rule and a
//! pipeline depth, into a [`Schedule`]: per lane, steps whose chunks are already byte ranges
//! cut into segments. The CPU executor performs it, a device executor performs it with device
//! copies and kernels, and the simulator times it; none of them re-reads the plan's chunk
//! arithmetic, so the message stream one predicts is the one the others send (a property test
//! compares the simulator's messages with what the in-memory transport carries).
//!
//! A chunk's byte range is cut into segments of the configured size, rounded down to whole
//! elements; an empty chunk still gives one empty message (both ends of a step must exchange
//! the same number of messages whatever the count). Fused steps forward segment `i` once
//! segment `i` from every source is in; up to `depth` receives per source are posted ahead.

use crate::plan::{Buf, ChunkRef, Op, Peers, RankPlan, StepId};
use crate::Rank;
use std::ops::Range;

/// Receives per source the executor posts ahead of the segment it works on
/// (`ACSPEED_PIPELINE_DEPTH`'s default).
pub const DEFAULT_PIPELINE_DEPTH: usize = 4;

/// Segment size (`ACSPEED_SEGMENT_BYTES`'s default).
pub const DEFAULT_SEGMENT_BYTES: usize = 256 << 10;

/// The segment size used for elements of `elem` bytes: `requested` rounded down to whole
/// elements, at least one element.
pub fn segment_bytes(requested: usize, elem: usize) -> usize {
    (requested / elem).max(1) * elem
}

/// Segment size of a host's CPU-Reduce staging area for a requested segment size: clamped to
/// 16 KiB-1 MiB (the area holds slots x (members + 1) segments per pipeline, so the upper
/// bound bounds its memory) and whole pages. Init sizes the area with it and the lowering
/// carries it in every host reduce, so executors and the simulator see the area's pipeline.
pub fn stage_segment_bytes(requested: usize) -> usize {
    requested.clamp(16 << 10, 1 << 20).next_multiple_of(4096)
}

/// The shortest segment a chunk is split into to reach its minimum number of segments.
pub const MIN_SPLIT_BYTES: usize = 64 << 10;

/// The fewest segments a chunk is cut into (each at least [`MIN_SPLIT_BYTES`]) in a job on
/// `hosts` hosts. A step forwards segment i once it is in, so a chunk of one or two segments
/// makes the next step wait for half of it or all of it. Across hosts that wait is wire time:
/// a 1 MiB allreduce of two ranks on two netsim hosts (512 KiB chunks, two 256 KiB segments)
/// reached 0.18-0.19 GB/s busbw, 0.20-0.21 with four 128 KiB segments. On one host a
/// segment's cost is its copy, and more pieces only add per-segment work: two ranks over
/// shared memory at 512 KiB gave 12.2-12.7 GB/s with four pieces, 14.0-15.4 with one
/// (docs/NETWORK.md, 2026-11-30).
pub fn min_segments(hosts: usize) -> usize {
    if hosts > 1 {
        4
    } else {
        1
    }
}

/// Segments of a byte range (see the module docs): pieces of `seg` bytes, or of an equal
/// share (a multiple of 64 bytes, so element boundaries hold) when that gives fewer than
/// `min_segs` and the range is long enough to split.
pub fn segments(r: Range<usize>, seg: usize, min_segs: usize) -> Vec<Range<usize>> {
    Segments::cut(r, seg, min_segs).iter().collect()
}

/// A byte range cut into segments: every piece is `piece` bytes but the last, and an empty
/// range is one empty segment. Stored as the cut, not as a list, so lowering a step costs
/// no allocation whatever its segment count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    pub range: Range<usize>,
    pub piece: usize,
}

impl Segments {
    /// The cut [`segments`] describes.
    pub fn cut(r: Range<usize>, seg: usize, min_segs: usize) -> Segments {
        let len = r.len();
        let n = len.div_ceil(seg.max(1));
        let want = min_segs.min(len / MIN_SPLIT_BYTES);
        let piece = if n < want {
            len.div_ceil(want).next_multiple_of(64)
        } else {
            seg.max(1)
        };
        Segments { range: r, piece }
    }

    /// How many segments (at least one).
    pub fn count(&self) -> usize {
        self.range.len().div_ceil(self.piece).max(1)
    }

    /// Segment `i` (`i < count()`).
    pub fn get(&self, i: usize) -> Range<usize> {
        let s = (self.range.start + i * self.piece).min(self.range.end);
        s..(s + self.piece).min(self.range.end)
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.count()).map(|i| self.get(i))
    }
}

/// Byte range of chunk `c` of `plan` for a per-rank `count` of `elem`-byte elements.
pub fn chunk_bytes(plan: &RankPlan, c: ChunkRef, count: usize, elem: usize) -> Range<usize> {
    let r = plan.chunk_elems(c, count);
    r.start * elem..r.end * elem
}

/// The knobs that turn chunks into messages. They never change what a plan means, only how
/// finely and how far ahead it moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lowering {
    /// Requested segment size (rounded down to whole elements by [`lower`]).
    pub segment_bytes: usize,
    /// The fewest segments a chunk is cut into ([`min_segments`] of the job's host count).
    pub min_segments: usize,
    /// Receives per source posted ahead (at least 1).
    pub depth: usize,
}

impl Lowering {
    /// The lowering of a job on `hosts` hosts.
    pub fn for_job(segment_bytes: usize, depth: usize, hosts: usize) -> Lowering {
        Lowering {
            segment_bytes,
            min_segments: min_segments(hosts),
            depth: depth.max(1),
        }
    }
}

/// One lowered step: what moves, in byte ranges of the call's buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegOp {
    /// Segment by segment: receive segment `k` from every rank in `from` (reduced into `buf`
    /// in list order when `reduce`, else overwriting it from the single source), then send
    /// segment `k` of `buf` to every rank in `to`. With `from` empty the segments are only
    /// sent, each to every rank of `to` in turn (a plain send, a root's fan-out).
    Move {
        from: Peers,
        to: Peers,
        reduce: bool,
        buf: Buf,
        segs: Segments,
    },
    /// A local copy (`reduce` false) or reduction `dst = dst (op) src` of `len` bytes.
    Local {
        reduce: bool,
        src: Buf,
        src_at: usize,
        dst: Buf,
        dst_at: usize,
        len: usize,
    },
    /// A reduction among `group` through the host's shared staging area (CPU-Reduce), which
    /// pipelines it in segments of `segment` bytes ([`stage_segment_bytes`]); this rank
    /// copies the result out when `copy_out`.
    HostReduce {
        buf: Buf,
        range: Range<usize>,
        group: Peers,
        copy_out: bool,
        segment: usize,
    },
}

/// What a step spends its time on, for the timeline: reducing what it receives, or only
/// moving data. A plain send has none and joins the phase around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Reduce,
    Distribute,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Reduce => "reduce",
            Phase::Distribute => "distribute",
        }
    }
}

/// A lowered step with the cross-lane dependencies of the plan's step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegStep {
    pub op: SegOp,
    /// Steps of other lanes that must finish first (indices are the plan's).
    pub deps: Vec<StepId>,
    pub phase: Option<Phase>,
}

/// A lane's lowered steps and the channel its messages travel on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneSchedule {
    pub channel: u32,
    pub steps: Vec<SegStep>,
}

/// One rank's plan lowered for one message size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub rank: Rank,
    pub nranks: u32,
    /// Segment size after rounding to whole elements (sizes receive slots).
    pub segment_bytes: usize,
    pub depth: usize,
    /// The most ranks one step receives from (sizes the receive slots).
    pub max_fan_in: usize,
    /// Bytes of the input, output and scratch buffers.
    pub input_bytes: usize,
    pub output_bytes: usize,
    pub scratch_bytes: usize,
    pub lanes: Vec<LaneSchedule>,
}

impl Schedule {
    /// Every message this rank sends, per lane in issue order: `(to, channel, bytes)`.
    /// Messages of one (peer, channel) pair come from one lane (the plan's matching rule), so
    /// per pair this is the order the transport carries them in.
    pub fn sends(&self) -> Vec<(Rank, u32, usize)> {
        let mut out = Vec::new();
        for lane in &self.lanes {
            for st in &lane.steps {
                if let SegOp::Move { to, segs, .. } = &st.op {
                    for s in segs.iter() {
                        out.extend(to.iter().map(|t| (t, lane.channel, s.len())));
                    }
                }
            }
        }
        out
    }

    /// Messages in the whole schedule (sent by this rank).
    pub fn num_sends(&self) -> usize {
        self.lanes
            .iter()
            .flat_map(|l| &l.steps)
            .map(|st| match &st.op {
                SegOp::Move { to, segs, .. } => to.len() * segs.count(),
                _ => 0,
            })
            .sum()
    }
}

/// The timeline phase of a plan step.
fn phase_of(op: &Op) -> Option<Phase> {
    match op {
        Op::Send { .. } => None,
        _ if op.reduces() => Some(Phase::Reduce),
        _ => Some(Phase::Distribute),
    }
}

/// Lowers `plan` for a per-rank `count` of `elem`-byte elements (see the module docs).
pub fn lower(plan: &RankPlan, count: usize, elem: usize, low: Lowering) -> Schedule {
    let seg = segment_bytes(low.segment_bytes, elem);
    let range = |c: ChunkRef| chunk_bytes(plan, c, count, elem);
    let cut = |c: ChunkRef| Segments::cut(range(c), seg, low.min_segments);
    let one = |r: Rank| Peers::new(&[r]);
    let lower_op = |op: &Op| -> SegOp {
        let mv = |from: Peers, to: Peers, reduce: bool, c: ChunkRef| SegOp::Move {
            from,
            to,
            reduce,
            buf: c.buf,
            segs: cut(c),
        };
        match *op {
            Op::Send { to, src } => mv(Peers::none(), one(to), false, src),
            Op::Recv { from, dst } => mv(one(from), Peers::none(), false, dst),
            Op::RecvReduce { from, dst } => mv(one(from), Peers::none(), true, dst),
            Op::RecvReduceSend { from, to, dst } => mv(one(from), one(to), true, dst),
            Op::RecvCopySend { from, to, dst } => mv(one(from), one(to), false, dst),
            Op::Fan {
                from,
                to,
                dst,
                reduce,
            } => mv(from, to, reduce && !from.is_empty(), dst),
            Op::Copy { src, dst } | Op::Reduce { src, dst } => {
                let (rs, rd) = (range(src), range(dst));
                SegOp::Local {
                    reduce: matches!(op, Op::Reduce { .. }),
                    src: src.buf,
                    src_at: rs.start,
                    dst: dst.buf,
                    dst_at: rd.start,
                    len: rs.len().min(rd.len()),
                }
            }
            Op::HostReduce { dst, group, to } => SegOp::HostReduce {
                buf: dst.buf,
                range: range(dst),
                group,
                copy_out: to.iter().any(|t| t == plan.rank),
                segment: stage_segment_bytes(low.segment_bytes),
            },
        }
    };
    let (ie, oe, se) = plan.buffer_elems(count);
    Schedule {
        rank: plan.rank,
        nranks: plan.nranks,
        segment_bytes: seg,
        depth: low.depth.max(1),
        max_fan_in: plan.max_fan_in(),
        input_bytes: ie * elem,
        output_bytes: oe * elem,
        scratch_bytes: se * elem,
        lanes: plan
            .lanes
            .iter()
            .map(|l| LaneSchedule {
                channel: l.channel,
                steps: l
                    .steps
                    .iter()
                    .map(|st| SegStep {
                        op: lower_op(&st.op),
                        deps: st.deps.clone(),
                        phase: phase_of(&st.op),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_and_empty_gives_one() {
        assert_eq!(segments(0..0, 8, 4), vec![0..0]);
        assert_eq!(segments(4..20, 8, 4), vec![4..12, 12..20]);
        assert_eq!(segments(0..17, 8, 4), vec![0..8, 8..16, 16..17]);
        assert_eq!(segment_bytes(10, 4), 8);
        // Short chunks are split into up to four pieces of at least 64 KiB.
        let k = 64 << 10;
        assert_eq!(
            segments(0..8 * k, 4 * k, 4),
            vec![0..2 * k, 2 * k..4 * k, 4 * k..6 * k, 6 * k..8 * k]
        );
        assert_eq!(
            segments(0..3 * k, 4 * k, 4),
            vec![0..k, k..2 * k, 2 * k..3 * k]
        );
        assert_eq!(segments(0..k + 8, 4 * k, 4), vec![0..k + 8]);
        assert_eq!(segments(0..16 * k, 4 * k, 4).len(), 4);
        assert_eq!(segments(0..20 * k, 4 * k, 4).len(), 5);
        // Odd lengths keep 64-byte (so element) boundaries.
        let s = segments(4..4 + 4 * k + 12, 4 * k, 4);
        assert!(s.iter().all(|r| (r.start - 4) % 64 == 0), "{s:?}");
        assert_eq!(s.last().unwrap().end, 4 + 4 * k + 12);
        assert_eq!(segment_bytes(2, 4), 4);
        // Staging segments: clamped, whole pages.
        assert_eq!(stage_segment_bytes(1 << 10), 16 << 10);
        assert_eq!(stage_segment_bytes(256 << 10), 256 << 10);
        assert_eq!(stage_segment_bytes(100_000), 102_400);
        assert_eq!(stage_segment_bytes(64 << 20), 1 << 20);
    }
}
