//! Building blocks over a *subset* of ranks and an arbitrary grouping of chunks, so that
//! algorithms compose: a hybrid plan is a ring reduce-scatter among one host's ranks, then
//! one ring (or tree) allreduce per stripe among the ranks that own it on every host, then a
//! ring allgather inside the host again. Each block appends steps to one lane.

use crate::tree::BinaryTree;
use acspeed_core::plan::{ChunkRef, Op, Peers, Step};
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
/// and broadcasts it back down. Stages run in the order up 0, up 1, down 0, down 1 on every
/// member, and every send happens in the stage its receiver expects it, so messages between
/// two ranks match in FIFO order and a step only waits on the same stage elsewhere (no
/// deadlock). That is why a root does not turn segments around inside its upward step: its
/// downward sends would overtake the other tree's upward messages to the same rank. (Per-tree
/// channels would allow that; segments still pipeline along each path.)
pub(crate) fn tree_allreduce(s: &mut Steps, members: &[Rank], me: Rank, halves: [&[ChunkRef]; 2]) {
    if members.len() < 2 || !members.contains(&me) {
        return;
    }
    let trees = BinaryTree::double(members);
    for (t, tree) in trees.iter().enumerate() {
        let ch = Peers::new(&tree.children(me));
        let to = match tree.parent(me) {
            Some(p) => Peers::new(&[p]),
            None => Peers::none(),
        };
        for &c in halves[t] {
            if let (true, Some(p)) = (ch.is_empty(), tree.parent(me)) {
                s.push(Op::Send { to: p, src: c });
            } else if !ch.is_empty() {
                s.push(Op::Fan {
                    from: ch,
                    to,
                    dst: c,
                    reduce: true,
                });
            }
        }
    }
    for (t, tree) in trees.iter().enumerate() {
        let ch = Peers::new(&tree.children(me));
        for &c in halves[t] {
            match tree.parent(me) {
                None if !ch.is_empty() => s.push(Op::Fan {
                    from: Peers::none(),
                    to: ch,
                    dst: c,
                    reduce: false,
                }),
                None => {}
                Some(p) if ch.is_empty() => s.push(Op::Recv { from: p, dst: c }),
                Some(p) => s.push(Op::Fan {
                    from: Peers::new(&[p]),
                    to: ch,
                    dst: c,
                    reduce: false,
                }),
            }
        }
    }
}
