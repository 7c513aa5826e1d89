//! Building blocks over a *subset* of ranks and an arbitrary grouping of chunks, so that
//! algorithms compose: a hybrid plan is a ring reduce-scatter among one host's ranks, then
//! one ring (or tree) allreduce per stripe among the ranks that own it on every host, then a
//! ring allgather inside the host again. Each block appends steps to one lane.

use crate::tree::BinaryTree;
use acspeed_core::plan::{ChunkRef, Collective, Lane, Op, Peers, RankPlan, Step};
use acspeed_core::Rank;

/// Steps of one lane under construction.
#[derive(Default)]
pub(crate) struct Steps(pub(crate) Vec<Step>);

impl Steps {
    fn push(&mut self, op: Op) {
        self.0.push(op.into());
    }
}

/// A ring over `members` (in that order) as seen by `me`.
struct SubRing<'a> {
    members: &'a [Rank],
    pos: usize,
}

impl<'a> SubRing<'a> {
    fn new(members: &'a [Rank], me: Rank) -> Option<SubRing<'a>> {
        let pos = members.iter().position(|r| *r == me)?;
        (members.len() > 1).then_some(SubRing { members, pos })
    }
    fn m(&self) -> i64 {
        self.members.len() as i64
    }
    fn at(&self, off: i64) -> usize {
        (self.pos as i64 + off).rem_euclid(self.m()) as usize
    }
    fn next(&self) -> Rank {
        self.members[self.at(1)]
    }
    fn prev(&self) -> Rank {
        self.members[self.at(-1)]
    }
}

/// Ring reduce-scatter in place: afterwards `members[q]` holds group `q` reduced over all
/// members. With `fuse_send` the last step also sends the finished group on to the next
/// member (the first step of a ring allgather).
pub(crate) fn ring_reduce_scatter(
    s: &mut Steps,
    members: &[Rank],
    me: Rank,
    groups: &[Vec<ChunkRef>],
    fuse_send: bool,
) {
    let Some(ring) = SubRing::new(members, me) else {
        return;
    };
    let (next, prev, m) = (ring.next(), ring.prev(), ring.m());
    for &c in &groups[ring.at(-1)] {
        s.push(Op::Send { to: next, src: c });
    }
    for j in 1..m {
        for &c in &groups[ring.at(-1 - j)] {
            s.push(if j < m - 1 || fuse_send {
                Op::RecvReduceSend {
                    from: prev,
                    to: next,
                    dst: c,
                }
            } else {
                Op::RecvReduce { from: prev, dst: c }
            });
        }
    }
}

/// Ring allgather in place: `members[q]` starts with group `q`; afterwards every member has
/// every group. `sent` says the member's own group already left (a fused reduce-scatter).
pub(crate) fn ring_allgather(
    s: &mut Steps,
    members: &[Rank],
    me: Rank,
    groups: &[Vec<ChunkRef>],
    sent: bool,
) {
    let Some(ring) = SubRing::new(members, me) else {
        return;
    };
    let (next, prev, m) = (ring.next(), ring.prev(), ring.m());
    if !sent {
        for &c in &groups[ring.pos] {
            s.push(Op::Send { to: next, src: c });
        }
    }
    for j in 1..m {
        for &c in &groups[ring.at(-j)] {
            s.push(if j < m - 1 {
                Op::RecvCopySend {
                    from: prev,
                    to: next,
                    dst: c,
                }
            } else {
                Op::Recv { from: prev, dst: c }
            });
        }
    }
}

/// Ring allreduce among `members`: reduce-scatter fused into allgather; `groups` has one
/// entry per member.
pub(crate) fn ring_allreduce(s: &mut Steps, members: &[Rank], me: Rank, groups: &[Vec<ChunkRef>]) {
    ring_reduce_scatter(s, members, me, groups, true);
    ring_allgather(s, members, me, groups, true);
}

/// Double binary tree allreduce among `members`: tree `t` reduces `halves[t]` up to its root
/// and broadcasts it back down. All upward steps come before all downward steps on every
/// member, and every send happens in the stage its receiver expects it, so messages between
/// two ranks match in FIFO order and a step only waits on its own stage elsewhere (no
/// deadlock). Within a stage the two trees' steps run leaf work first on the way up (a leaf's
/// send never waits) and inner work first on the way down (forwarding before a leaf's final
/// receive), so the trees progress concurrently; the order stays the trees' order when both
/// steps talk to the same rank, where reordering would break FIFO matching. A root does not
/// turn segments around inside its upward step for the same reason: its downward sends would
/// overtake the other tree's upward messages to the same rank. (Per-tree channels would
/// allow both; segments still pipeline along every path.)
pub(crate) fn tree_allreduce(s: &mut Steps, members: &[Rank], me: Rank, halves: [&[ChunkRef]; 2]) {
    if members.len() < 2 || !members.contains(&me) {
        return;
    }
    let trees = BinaryTree::double(members);
    // (is leaf work, parent, ops) per tree, for each stage.
    type Stage = Vec<(bool, Option<Rank>, Vec<Op>)>;
    let mut up: Stage = Vec::new();
    let mut down: Stage = Vec::new();
    for (t, tree) in trees.iter().enumerate() {
        let children = tree.children(me);
        let ch = Peers::new(&children);
        let parent = tree.parent(me);
        let to = match parent {
            Some(p) => Peers::new(&[p]),
            None => Peers::none(),
        };
        let mut u = Vec::new();
        let mut d = Vec::new();
        for &c in halves[t] {
            match (parent, ch.is_empty()) {
                (Some(p), true) => {
                    u.push(Op::Send { to: p, src: c });
                    d.push(Op::Recv { from: p, dst: c });
                }
                (_, false) => {
                    u.push(Op::Fan {
                        from: ch,
                        to,
                        dst: c,
                        reduce: true,
                    });
                    d.push(Op::Fan {
                        from: match parent {
                            Some(p) => Peers::new(&[p]),
                            None => Peers::none(),
                        },
                        to: ch,
                        dst: c,
                        reduce: false,
                    });
                }
                (None, true) => {}
            }
        }
        let leaf = ch.is_empty();
        up.push((leaf, parent, u));
        down.push((leaf, parent, d));
    }
    // Reordered steps of one stage talk to their children and parent in the same directions
    // as before; only a parent shared by both trees would see two messages swap.
    if up[0].1.is_none() || up[0].1 != up[1].1 {
        up.sort_by_key(|(leaf, _, _)| !*leaf);
        down.sort_by_key(|(leaf, _, _)| *leaf);
    }
    for (_, _, ops) in up.into_iter().chain(down) {
        for op in ops {
            s.push(op);
        }
    }
}

/// Chunks of the stripes each of `m` local ranks owns when stripe `c` (of `c_count`) belongs to
/// local rank `c % m` and is made of the chunks `c * parts + k`, `k < parts`.
pub(crate) fn owned_stripes(m: u32, c_count: u32, parts: u32) -> Vec<Vec<ChunkRef>> {
    (0..m)
        .map(|p| {
            (0..c_count)
                .filter(|c| c % m == p)
                .flat_map(|c| (0..parts).map(move |k| ChunkRef::out(c * parts + k)))
                .collect()
        })
        .collect()
}

/// An allreduce plan of one lane.
pub(crate) fn allreduce_plan(
    algorithm: String,
    rank: Rank,
    nranks: u32,
    output_chunks: u32,
    steps: Steps,
) -> RankPlan {
    RankPlan {
        collective: Collective::AllReduce,
        algorithm,
        rank,
        nranks,
        input_chunks: 0,
        output_chunks,
        scratch_factor: 0,
        weights: Vec::new(),
        lanes: vec![Lane::new(steps.0)],
    }
}

/// Butterfly allreduce among `members` (recursive halving, then recursive doubling, as in
/// Rabenseifner's algorithm) over the chunks `parts`. With `m` members and `p` the largest
/// power of two <= m, member `p + j` first hands all its chunks to member `j` and gets the
/// result back at the end, so any member count works. Round `k` pairs position `i` with
/// `i ^ (p >> (k + 1))`: each keeps the half of its current chunk set on its side of the split
/// and sends the other half, so after log2 p rounds each holds 1/p of the chunks fully
/// reduced, and the doubling rounds undo the halving in reverse.
pub(crate) fn butterfly_allreduce(s: &mut Steps, members: &[Rank], me: Rank, parts: &[ChunkRef]) {
    let m = members.len();
    let Some(i) = members.iter().position(|r| *r == me) else {
        return;
    };
    if m < 2 || parts.is_empty() {
        return;
    }
    let p = 1usize << (usize::BITS - 1 - m.leading_zeros());
    if i >= p {
        // An extra member: contribute everything to its partner, then take the result.
        let to = members[i - p];
        for &c in parts {
            s.push(Op::Send { to, src: c });
        }
        for &c in parts {
            s.push(Op::Recv { from: to, dst: c });
        }
        return;
    }
    if i + p < m {
        for &c in parts {
            s.push(Op::RecvReduce {
                from: members[i + p],
                dst: c,
            });
        }
    }
    // Halving: the chunk range [lo, hi) this position is responsible for shrinks each round.
    let (mut lo, mut hi) = (0usize, parts.len());
    let mut rounds = Vec::new();
    let mut d = p >> 1;
    while d > 0 {
        let partner = members[i ^ d];
        let mid = lo + (hi - lo) / 2;
        // The lower position of the pair keeps the lower half.
        let (keep, give) = if i & d == 0 {
            (lo..mid, mid..hi)
        } else {
            (mid..hi, lo..mid)
        };
        for c in give.clone() {
            s.push(Op::Send {
                to: partner,
                src: parts[c],
            });
        }
        for c in keep.clone() {
            s.push(Op::RecvReduce {
                from: partner,
                dst: parts[c],
            });
        }
        rounds.push((partner, keep.clone(), give));
        (lo, hi) = (keep.start, keep.end);
        d >>= 1;
    }
    // Doubling: send what is complete here, take the partner's half.
    for (partner, keep, give) in rounds.into_iter().rev() {
        for c in keep {
            s.push(Op::Send {
                to: partner,
                src: parts[c],
            });
        }
        for c in give {
            s.push(Op::Recv {
                from: partner,
                dst: parts[c],
            });
        }
    }
    if i + p < m {
        for &c in parts {
            s.push(Op::Send {
                to: members[i + p],
                src: c,
            });
        }
    }
}

/// Parameter-server allreduce among `members`: part `k` belongs to member `k % m`; every member
/// pushes each part to its owner, the owner reduces what it was pushed (a fan-in step) and
/// pulls it back out to everyone (a fan-out step). Two steps of latency, and every member both
/// serves and pushes, so no single server is the bottleneck.
pub(crate) fn ps_allreduce(s: &mut Steps, members: &[Rank], me: Rank, parts: &[ChunkRef]) {
    let m = members.len();
    if m < 2 || !members.contains(&me) {
        return;
    }
    let others: Vec<Rank> = members.iter().copied().filter(|r| *r != me).collect();
    let owner = |k: usize| members[k % m];
    for (k, &c) in parts.iter().enumerate() {
        if owner(k) != me {
            s.push(Op::Send {
                to: owner(k),
                src: c,
            });
        }
    }
    for (k, &c) in parts.iter().enumerate() {
        if owner(k) == me {
            for group in others.chunks(Peers::MAX) {
                s.push(Op::Fan {
                    from: Peers::new(group),
                    to: Peers::none(),
                    dst: c,
                    reduce: true,
                });
            }
        }
    }
    for (k, &c) in parts.iter().enumerate() {
        if owner(k) == me {
            for group in others.chunks(Peers::MAX) {
                s.push(Op::Fan {
                    from: Peers::none(),
                    to: Peers::new(group),
                    dst: c,
                    reduce: false,
                });
            }
        } else {
            s.push(Op::Recv {
                from: owner(k),
                dst: c,
            });
        }
    }
}
