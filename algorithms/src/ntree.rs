//! n-trees: several spanning trees packed onto the fast (NVLink) links, each carrying a share
//! of the data proportional to its bottleneck rate (Blink's idea, our own packing).
//!
//! **Packing** ([`pack`]) is greedy over the residual link graph of one host: each round grows
//! a maximum-bottleneck spanning tree with Prim's rule (take the fattest residual edge out of
//! the tree; on ties extend from the most recently added GPU, which yields path-like trees
//! of small fan-in instead of stars), gives it weight = its bottleneck, and subtracts that
//! from every edge it uses. Rounds stop when the residual graph no longer spans the GPUs,
//! after [`MAX_TREES`], or when a tree would add under a tenth of the weight packed so far
//! (the gain is marginal; every tree costs a channel and two executor threads).
//!
//! ```text
//!   8xV100 hybrid cube-mesh (NV2 = ==, NV1 = --)      packed (weights 2 and 1):
//!     0 == 3 == 2 == 1          tree 0 (w 2): 0=3=2=1=5=6=7=4   (the NV2 ring, opened)
//!     ||   \    /    ||         tree 1 (w 1): over NV1 links and the unused 0=4
//!     4 == 7 == 6 == 5          => 3 of 3.4 link-units per GPU pair cut used; 2/3 of the
//!                                  data rides the NV2 tree
//! ```
//!
//! **Plans**: tree `t` carries output chunk `t` (weights = tree weights). Across hosts every
//! host's copy of tree `t` hangs off its root GPU, and the roots join in a binary tree over
//! hosts (rotated per tree, and the root GPU differs per tree, so the network load spreads
//! over the local ranks and their sockets). A tree's reduction runs up one lane and its
//! broadcast down another, so both directions of every link are busy at once; the root turns
//! each segment around as soon as it is reduced. Trees that share a link run on different
//! channels (independent pipes), so no tree waits behind another's messages.
//!
//! Without NVLinks (none known, or a host's GPUs not all joined by them) the algorithm
//! degrades to the double binary tree, the same on every rank; [`fallback_reason`] says why.

use crate::tree::{BinaryTree, Tree};
use acspeed_core::plan::{ChunkRef, Collective, Lane, Op, Peers, RankPlan, Step};
use acspeed_core::{PlanContext, Rank};

/// At most this many trees are packed (each costs a channel and two lanes).
pub const MAX_TREES: usize = 4;

/// One packed tree over GPU indices: undirected edges and the weight (bottleneck links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedTree {
    /// The GPU the tree was grown from (its root unless a collective names one).
    pub root: u32,
    pub edges: Vec<(u32, u32)>,
    pub weight: u32,
}

/// Packs spanning trees over `nodes` (GPU indices) of the symmetric capacity matrix `caps`
/// (links per GPU pair). Empty when `nodes` are not connected by links; one weightless tree
/// (no edges) for a single node.
pub fn pack(caps: &[Vec<u8>], nodes: &[u32]) -> Vec<PackedTree> {
    if nodes.len() <= 1 {
        return nodes
            .iter()
            .map(|n| PackedTree {
                root: *n,
                edges: Vec::new(),
                weight: 1,
            })
            .collect();
    }
    let cap = |a: u32, b: u32| caps[a as usize][b as usize] as u32;
    let mut residual: Vec<Vec<u32>> = caps
        .iter()
        .map(|r| r.iter().map(|x| *x as u32).collect())
        .collect();
    let mut trees: Vec<PackedTree> = Vec::new();
    let total: u32 = nodes
        .iter()
        .flat_map(|a| nodes.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| a < b)
        .map(|(a, b)| cap(a, b))
        .sum();
    if total == 0 {
        return Vec::new();
    }
    while trees.len() < MAX_TREES {
        // Grow from the GPU with the most residual capacity (lowest index on ties), so
        // successive trees start where links are left.
        let degree = |a: u32| -> u32 {
            nodes
                .iter()
                .map(|b| residual[a as usize][*b as usize])
                .sum()
        };
        let root = *nodes
            .iter()
            .max_by_key(|a| (degree(**a), std::cmp::Reverse(**a)))
            .expect("nodes is not empty");
        let mut order = vec![root];
        let mut edges = Vec::new();
        while order.len() < nodes.len() {
            // The fattest edge out of the tree; ties go to the newest tree node, then to
            // the lowest GPU outside.
            let best = order
                .iter()
                .enumerate()
                .flat_map(|(pos, u)| {
                    nodes
                        .iter()
                        .filter(|v| !order.contains(v))
                        .map(move |v| (pos, *u, *v))
                })
                .filter(|(_, u, v)| residual[*u as usize][*v as usize] > 0)
                .max_by_key(|(pos, u, v)| {
                    (
                        residual[*u as usize][*v as usize],
                        *pos,
                        std::cmp::Reverse(*v),
                    )
                });
            let Some((_, u, v)) = best else {
                break;
            };
            order.push(v);
            edges.push((u, v));
        }
        if order.len() < nodes.len() {
            break;
        }
        let weight = edges
            .iter()
            .map(|(u, v)| residual[*u as usize][*v as usize])
            .min()
            .unwrap_or(0);
        let packed: u32 = trees.iter().map(|t| t.weight).sum();
        if weight == 0 || weight * 10 < packed {
            break;
        }
        for (u, v) in &edges {
            residual[*u as usize][*v as usize] -= weight;
            residual[*v as usize][*u as usize] -= weight;
        }
        trees.push(PackedTree {
            root,
            edges,
            weight,
        });
    }
    trees
}

/// Why n-trees cannot run on `ctx` (the plan is then the double binary tree), or `None`.
pub fn fallback_reason(ctx: &PlanContext) -> Option<String> {
    job_trees(ctx).err()
}

/// A spanning tree over every rank of the job: undirected edges between ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTree {
    pub root: Rank,
    pub edges: Vec<(Rank, Rank)>,
    pub weight: u32,
    /// Channel the tree's messages travel on.
    pub channel: u32,
}

impl JobTree {
    /// Parent and children of `me` with the tree hung from `root`.
    fn oriented(&self, root: Rank, me: Rank) -> (Option<Rank>, Vec<Rank>) {
        // Breadth-first from the root over the undirected edges.
        let mut parent: Vec<(Rank, Option<Rank>)> = vec![(root, None)];
        let mut i = 0;
        while i < parent.len() {
            let u = parent[i].0;
            let mut next: Vec<Rank> = self
                .edges
                .iter()
                .filter_map(|(a, b)| {
                    if *a == u {
                        Some(*b)
                    } else if *b == u {
                        Some(*a)
                    } else {
                        None
                    }
                })
                .filter(|v| !parent.iter().any(|(x, _)| x == v))
                .collect();
            next.sort();
            parent.extend(next.into_iter().map(|v| (v, Some(u))));
            i += 1;
        }
        let up = parent.iter().find(|(x, _)| *x == me).and_then(|(_, p)| *p);
        let mut kids: Vec<Rank> = parent
            .iter()
            .filter(|(_, p)| *p == Some(me))
            .map(|(x, _)| *x)
            .collect();
        kids.sort();
        (up, kids)
    }
}

/// The job's trees: each host's packing (same tree count on every host; a tree's weight is
/// its smallest weight over hosts), joined across hosts at the root GPUs; channels assigned
/// so that trees sharing a rank pair never share a channel.
pub fn job_trees(ctx: &PlanContext) -> Result<Vec<JobTree>, String> {
    if ctx.nvlinks.is_empty() {
        return Err("no NVLink is known for this job (n-trees pack their trees on the NVLinks of ACSPEED_TOPO_FILE, or of the topology given to acspeed simulate)".into());
    }
    let hosts = ctx.hosts();
    let mut per_host = Vec::new();
    for (h, ranks) in hosts.iter().enumerate() {
        let devs: Vec<u32> = ranks.iter().map(|r| ctx.device_of[r.idx()]).collect();
        if (1..devs.len()).any(|i| devs[..i].contains(&devs[i])) {
            return Err(format!(
                "host {h} has more ranks ({}) than GPUs ({}): ranks would share a GPU",
                ranks.len(),
                ctx.nvlinks.len()
            ));
        }
        let p = pack(&ctx.nvlinks, &devs);
        if p.is_empty() {
            return Err(format!(
                "the GPUs of host {h} (devices {devs:?}) are not all joined by NVLinks"
            ));
        }
        per_host.push(p);
    }
    // Hosts of one rank do not limit the tree count (their trees are the rank alone).
    let Some(k) = per_host
        .iter()
        .zip(&hosts)
        .filter(|(_, ranks)| ranks.len() > 1)
        .map(|(p, _)| p.len())
        .min()
    else {
        return Err("no host has two ranks, so no NVLink can carry a tree".into());
    };
    let rank_of = |h: usize, dev: u32| -> Rank {
        *hosts[h]
            .iter()
            .find(|r| ctx.device_of[r.idx()] == dev)
            .expect("packed devices belong to the host")
    };
    let nh = hosts.len();
    let mut trees: Vec<JobTree> = Vec::new();
    for t in 0..k {
        let mut edges = Vec::new();
        let mut roots = Vec::new();
        for (h, p) in per_host.iter().enumerate() {
            let pt = p.get(t).unwrap_or(&p[0]);
            edges.extend(
                pt.edges
                    .iter()
                    .map(|(a, b)| (rank_of(h, *a), rank_of(h, *b))),
            );
            roots.push(rank_of(h, pt.root));
        }
        // Host roots join in a binary tree over hosts, rotated per tree.
        let order: Vec<Rank> = (0..nh).map(|i| roots[(i + t) % nh]).collect();
        let bt = BinaryTree::new(order.clone());
        for &r in &order {
            if let Some(p) = bt.parent(r) {
                edges.push((p, r));
            }
        }
        let weight = per_host
            .iter()
            .filter_map(|p| p.get(t).filter(|pt| !pt.edges.is_empty()))
            .map(|pt| pt.weight)
            .min()
            .unwrap_or(1);
        trees.push(JobTree {
            root: order[0],
            edges,
            weight,
            channel: 0,
        });
    }
    // Greedy colouring: a tree takes the lowest channel no earlier tree sharing a pair has.
    let pairs = |t: &JobTree| -> Vec<(Rank, Rank)> {
        t.edges
            .iter()
            .map(|(a, b)| (*a.min(b), *a.max(b)))
            .collect()
    };
    for i in 0..trees.len() {
        let mine = pairs(&trees[i]);
        let taken: Vec<u32> = trees[..i]
            .iter()
            .filter(|o| pairs(o).iter().any(|e| mine.contains(e)))
            .map(|o| o.channel)
            .collect();
        trees[i].channel = (0..)
            .find(|c| !taken.contains(c))
            .expect("some channel is free");
    }
    Ok(trees)
}

/// Channels the n-tree plans of `ctx` need (1 when they fall back).
pub fn channels_needed(ctx: &PlanContext) -> u32 {
    job_trees(ctx)
        .map(|ts| ts.iter().map(|t| t.channel + 1).max().unwrap_or(1))
        .unwrap_or(1)
}

/// n-tree plans: allreduce, broadcast and reduce.
#[derive(Clone, Copy, Debug, Default)]
pub struct NTrees;

impl NTrees {
    pub fn serves(coll: Collective) -> bool {
        Tree::serves(coll)
    }

    pub fn plan_for_rank(&self, coll: Collective, rank: Rank, ctx: &PlanContext) -> RankPlan {
        let trees = match job_trees(ctx) {
            Ok(t) if ctx.nranks > 1 => t,
            _ => return Tree.plan_for_rank(coll, rank, ctx.nranks),
        };
        let from = |p: Option<Rank>| match p {
            Some(p) => Peers::new(&[p]),
            None => Peers::none(),
        };
        let mut lanes = Vec::new();
        for (t, tree) in trees.iter().enumerate() {
            let dst = ChunkRef::out(t as u32);
            let root = match coll {
                Collective::Broadcast { root } | Collective::Reduce { root } => root,
                _ => tree.root,
            };
            let (parent, kids) = tree.oriented(root, rank);
            let ch = Peers::new(&kids);
            let leaf = kids.is_empty();
            let mut lane = |ops: Vec<Op>| {
                lanes.push(Lane {
                    channel: tree.channel,
                    steps: ops.into_iter().map(Step::from).collect(),
                })
            };
            let up = |to: Peers| {
                if leaf {
                    Op::Send {
                        to: to.iter().next().expect("a leaf has a parent"),
                        src: dst,
                    }
                } else {
                    Op::Fan {
                        from: ch,
                        to,
                        dst,
                        reduce: true,
                    }
                }
            };
            let down = |p: Option<Rank>| match (p, leaf) {
                (Some(p), true) => Op::Recv { from: p, dst },
                _ => Op::Fan {
                    from: from(p),
                    to: ch,
                    dst,
                    reduce: false,
                },
            };
            match (coll, parent) {
                (Collective::AllReduce, None) => lane(vec![Op::Fan {
                    from: ch,
                    to: ch,
                    dst,
                    reduce: true,
                }]),
                (Collective::AllReduce, Some(p)) => {
                    // Up and down on separate lanes of the tree's channel: they use the
                    // opposite directions of each pair, so both run at once.
                    lane(vec![up(Peers::new(&[p]))]);
                    lane(vec![down(Some(p))]);
                }
                (Collective::Broadcast { .. }, p) => lane(vec![down(p)]),
                (Collective::Reduce { .. }, None) => lane(vec![up(Peers::none())]),
                (Collective::Reduce { .. }, Some(p)) => lane(vec![up(Peers::new(&[p]))]),
                _ => {}
            }
        }
        RankPlan {
            collective: coll,
            algorithm: "ntree".into(),
            rank,
            nranks: ctx.nranks,
            input_chunks: 0,
            output_chunks: trees.len() as u32,
            scratch_factor: 0,
            weights: trees.iter().map(|t| t.weight).collect(),
            lanes,
        }
    }
}

#[cfg(test)]
#[path = "ntree_tests.rs"]
mod tests;
