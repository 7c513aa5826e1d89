//! How a plan's chunks become messages: the segmentation rule shared by the executor (which
//! moves the bytes) and the simulator (which times them), so the two cannot drift apart.
//!
//! A chunk's byte range is cut into segments of the configured size, rounded down to whole
//! elements; an empty chunk still gives one empty message (both ends of a step must exchange
//! the same number of messages whatever the count). Fused steps forward segment `i` once
//! segment `i` from every source is in; up to `depth` receives per source are posted ahead.

use crate::plan::{ChunkRef, RankPlan};
use std::ops::Range;

/// The segment size used for elements of `elem` bytes: `requested` rounded down to whole
/// elements, at least one element.
pub fn segment_bytes(requested: usize, elem: usize) -> usize {
    (requested / elem).max(1) * elem
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
    if r.is_empty() {
        return vec![r];
    }
    let len = r.len();
    let n = len.div_ceil(seg);
    let want = min_segs.min(len / MIN_SPLIT_BYTES);
    let seg = if n < want {
        len.div_ceil(want).next_multiple_of(64)
    } else {
        seg
    };
    (r.start..r.end)
        .step_by(seg)
        .map(|s| s..(s + seg).min(r.end))
        .collect()
}

/// Byte range of chunk `c` of `plan` for a per-rank `count` of `elem`-byte elements.
pub fn chunk_bytes(plan: &RankPlan, c: ChunkRef, count: usize, elem: usize) -> Range<usize> {
    let r = plan.chunk_elems(c, count);
    r.start * elem..r.end * elem
}

/// Message lengths of one step's chunk.
pub fn segment_lengths(
    plan: &RankPlan,
    c: ChunkRef,
    count: usize,
    elem: usize,
    seg: usize,
    min_segs: usize,
) -> Vec<usize> {
    segments(
        chunk_bytes(plan, c, count, elem),
        segment_bytes(seg, elem),
        min_segs,
    )
    .into_iter()
    .map(|r| r.len())
    .collect()
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
    }
}
