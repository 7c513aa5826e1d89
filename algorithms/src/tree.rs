//! Binary trees and the double binary tree (NCCL's shape, our own construction).
//!
//! Labels `0..m` form a binary tree rooted at label 0: label `l`'s parent clears its lowest
//! set bit and sets the next one up (or just clears it when that label does not exist), so
//! the lowest set bit grows on every step towards the root and the depth is log2(m). The odd
//! labels are the leaves. The second tree maps labels to ranks mirrored (`m` even) or shifted
//! by one (`m` odd), so nearly every rank that is a leaf in one tree is inside the other:
//! each tree carries half the data and every rank's links are busy in at least one tree.
//!
//! ```text
//!   m = 8, tree 0 (labels = positions)     tree 1 (mirrored: position 7 is the root)
//!        0                                       7
//!        4                                       3
//!     2     6                                 5     1
//!    1 3   5 7                               6 4   2 0
//! ```

use crate::compose::{tree_allreduce, Steps};
use acspeed_core::plan::{ChunkRef, Collective, Lane, Op, Peers, RankPlan};
use acspeed_core::Rank;

/// A binary tree over some ranks; `ranks[label]` is the rank at that label (label 0 = root).
#[derive(Clone, Debug)]
pub struct BinaryTree {
    ranks: Vec<Rank>,
}

fn parent_label(l: usize, m: usize) -> Option<usize> {
    if l == 0 {
        return None;
    }
    let bit = l & l.wrapping_neg();
    let up = (l ^ bit) | (bit << 1);
    Some(if up >= m { l ^ bit } else { up })
}

impl BinaryTree {
    /// The tree with `ranks[0]` at the root.
    pub fn new(ranks: Vec<Rank>) -> BinaryTree {
        BinaryTree { ranks }
    }

    /// The two complementary trees over `members` (in that order).
    pub fn double(members: &[Rank]) -> [BinaryTree; 2] {
        let m = members.len();
        let second: Vec<Rank> = if m % 2 == 0 {
            members.iter().rev().copied().collect()
        } else {
            (0..m).map(|l| members[(l + 1) % m]).collect()
        };
        [BinaryTree::new(members.to_vec()), BinaryTree::new(second)]
    }

    /// Two trees over all `n` ranks, both rooted at `root` (for broadcast and reduce): the
    /// second shifts the non-root labels by one so that the leaves differ.
    pub fn double_rooted(n: u32, root: Rank) -> [BinaryTree; 2] {
        let at = |l: u32| Rank((root.0 + l) % n);
        let first: Vec<Rank> = (0..n).map(at).collect();
        let second: Vec<Rank> = (0..n)
            .map(|l| if l == 0 { at(0) } else { at((l % (n - 1)) + 1) })
            .collect();
        [BinaryTree::new(first), BinaryTree::new(second)]
    }

    fn label(&self, r: Rank) -> Option<usize> {
        self.ranks.iter().position(|x| *x == r)
    }

    pub fn root(&self) -> Rank {
        self.ranks[0]
    }

    pub fn parent(&self, r: Rank) -> Option<Rank> {
        let l = self.label(r)?;
        parent_label(l, self.ranks.len()).map(|p| self.ranks[p])
    }

    /// Children of `r`, in label order (the order their data is reduced in).
    pub fn children(&self, r: Rank) -> Vec<Rank> {
        let Some(l) = self.label(r) else {
            return Vec::new();
        };
        let m = self.ranks.len();
        (0..m)
            .filter(|c| parent_label(*c, m) == Some(l))
            .map(|c| self.ranks[c])
            .collect()
    }
}

/// Double binary tree plans: allreduce, broadcast and reduce, each tree carrying half.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tree;

impl Tree {
    pub fn serves(coll: Collective) -> bool {
        matches!(
            coll,
            Collective::AllReduce | Collective::Broadcast { .. } | Collective::Reduce { .. }
        )
    }

    pub fn plan_for_rank(&self, coll: Collective, rank: Rank, nranks: u32) -> RankPlan {
        let mut s = Steps::default();
        let half = [ChunkRef::out(0), ChunkRef::out(1)];
        match coll {
            Collective::AllReduce => {
                let all: Vec<Rank> = (0..nranks).map(Rank).collect();
                tree_allreduce(&mut s, &all, rank, [&half[..1], &half[1..]]);
            }
            Collective::Broadcast { root } | Collective::Reduce { root } if nranks > 1 => {
                let reduce = matches!(coll, Collective::Reduce { .. });
                for (t, tree) in BinaryTree::double_rooted(nranks, root).iter().enumerate() {
                    let ch = Peers::new(&tree.children(rank));
                    let dst = half[t];
                    let op = match (tree.parent(rank), reduce) {
                        (None, false) => Op::Fan {
                            from: Peers::none(),
                            to: ch,
                            dst,
                            reduce: false,
                        },
                        (None, true) => Op::Fan {
                            from: ch,
                            to: Peers::none(),
                            dst,
                            reduce: true,
                        },
                        (Some(p), false) if ch.is_empty() => Op::Recv { from: p, dst },
                        (Some(p), false) => Op::Fan {
                            from: Peers::new(&[p]),
                            to: ch,
                            dst,
                            reduce: false,
                        },
                        (Some(p), true) if ch.is_empty() => Op::Send { to: p, src: dst },
                        (Some(p), true) => Op::Fan {
                            from: ch,
                            to: Peers::new(&[p]),
                            dst,
                            reduce: true,
                        },
                    };
                    s.0.push(op.into());
                }
            }
            _ => {}
        }
        RankPlan {
            collective: coll,
            algorithm: "tree".into(),
            rank,
            nranks,
            input_chunks: 0,
            output_chunks: 2,
            scratch_factor: 0,
            weights: Vec::new(),
            lanes: vec![Lane::new(s.0)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tree(t: &BinaryTree, m: usize) {
        // Every rank reaches the root in at most ceil(log2 m) + 1 hops; children <= 2; the
        // parent/children relations agree.
        let depth_bound = (usize::BITS - m.leading_zeros()) as usize + 1;
        for &r in &t.ranks {
            let (mut x, mut hops) = (r, 0);
            while let Some(p) = t.parent(x) {
                assert!(t.children(p).contains(&x));
                x = p;
                hops += 1;
                assert!(hops <= depth_bound, "m={m}: depth over {depth_bound}");
            }
            assert_eq!(x, t.root());
            assert!(t.children(r).len() <= 2, "m={m}: {r} has >2 children");
        }
    }

    #[test]
    fn trees_are_trees_and_complementary() {
        for m in 1..=40usize {
            let members: Vec<Rank> = (0..m as u32).map(Rank).collect();
            let [a, b] = BinaryTree::double(&members);
            check_tree(&a, m);
            check_tree(&b, m);
            // Few ranks are leaves in both trees (at most one, for odd sizes).
            let both_leaves = members
                .iter()
                .filter(|r| a.children(**r).is_empty() && b.children(**r).is_empty())
                .count();
            assert!(
                m < 3 || both_leaves <= 1,
                "m={m}: {both_leaves} double leaves"
            );
            for root in [0, m as u32 / 2, m as u32 - 1] {
                for t in BinaryTree::double_rooted(m as u32, Rank(root)) {
                    check_tree(&t, m);
                    assert_eq!(t.root(), Rank(root));
                }
            }
        }
    }
}
