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

/// Segments of a byte range (see the module docs).
pub fn segments(r: Range<usize>, seg: usize) -> Vec<Range<usize>> {
    if r.is_empty() {
        return vec![r];
    }
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
) -> Vec<usize> {
    segments(chunk_bytes(plan, c, count, elem), segment_bytes(seg, elem))
        .into_iter()
        .map(|r| r.len())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_and_empty_gives_one() {
        assert_eq!(segments(0..0, 8), vec![0..0]);
        assert_eq!(segments(4..20, 8), vec![4..12, 12..20]);
        assert_eq!(segments(0..17, 8), vec![0..8, 8..16, 16..17]);
        assert_eq!(segment_bytes(10, 4), 8);
        assert_eq!(segment_bytes(2, 4), 4);
    }
}
