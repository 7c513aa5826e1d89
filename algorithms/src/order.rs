//! Rank orders that follow the fast links: a ring (or a tree's label order) over a host's
//! ranks in index order crosses whatever lies between consecutive GPUs — on an 8xV100
//! cube-mesh, PCIe twice — while NCCL's rings follow the NVLinks. For allreduce the order of a
//! ring is free (its chunks are parts of one buffer), so ring allreduce and hybrid's
//! intra-host phases take their ranks in [`ring_order`].
//!
//! A pair's score is its NVLink count, else 0 on the same socket and -1 across sockets; the
//! order maximises the weakest link around the cycle, then the sum (exhaustively for up to 9
//! ranks on a host, which covers 8-GPU boxes; greedily beyond). Without NVLink or socket
//! facts the order is the ranks ascending, as before.

use acspeed_core::plan::{Op, Peers, RankPlan};
use acspeed_core::{PlanContext, Rank};

fn score(ctx: &PlanContext, a: Rank, b: Rank) -> i32 {
    let nv = ctx.nvlinks_between(a, b) as i32;
    if nv > 0 {
        return nv;
    }
    match (ctx.socket_of.get(a.idx()), ctx.socket_of.get(b.idx())) {
        (Some(x), Some(y)) if x != y => -1,
        _ => 0,
    }
}

/// The ranks of one host in cycle order, starting at its lowest rank.
pub fn host_order(ctx: &PlanContext, ranks: &[Rank]) -> Vec<Rank> {
    let m = ranks.len();
    let plain = ctx.nvlinks.is_empty() && ctx.socket_of.is_empty();
    if m <= 3 || plain {
        return ranks.to_vec();
    }
    let s = |i: usize, j: usize| score(ctx, ranks[i], ranks[j]);
    let eval = |p: &[usize]| -> (i32, i32) {
        let edges = (0..p.len()).map(|k| s(p[k], p[(k + 1) % p.len()]));
        (edges.clone().min().unwrap_or(0), edges.sum())
    };
    let mut best: Vec<usize> = (0..m).collect();
    if m <= 9 {
        // Heap's algorithm over positions 1..m (position 0 stays: cycles have no start).
        let mut p: Vec<usize> = (0..m).collect();
        let mut best_score = eval(&p);
        let mut c = vec![0usize; m];
        let mut i = 1;
        while i < m - 1 {
            if c[i] < i {
                if i % 2 == 0 {
                    p.swap(1, i + 1);
                } else {
                    p.swap(1 + c[i], i + 1);
                }
                let sc = eval(&p);
                if sc > best_score {
                    best_score = sc;
                    best = p.clone();
                }
                c[i] += 1;
                i = 1;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
    } else {
        // Greedy: always step to the best-linked rank not yet on the cycle.
        best = vec![0];
        while best.len() < m {
            let last = *best.last().expect("not empty");
            let next = (0..m)
                .filter(|j| !best.contains(j))
                .max_by_key(|j| (s(last, *j), std::cmp::Reverse(*j)))
                .expect("a rank is left");
            best.push(next);
        }
    }
    best.into_iter().map(|i| ranks[i]).collect()
}

/// Every rank of the job in ring order: hosts in order, each host's ranks in [`host_order`].
pub fn ring_order(ctx: &PlanContext) -> Vec<Rank> {
    ctx.hosts()
        .iter()
        .flat_map(|h| host_order(ctx, h))
        .collect()
}

/// Most rings [`nvlink_rings`] builds (NCCL's MAXCHANNELS is 32; every ring is a channel,
/// and on the CPU executor a channel is a mesh of its own).
pub const MAX_RINGS: usize = 16;

/// NCCL's rings on a one-host NVLink mesh: directed Hamiltonian cycles over NVLink pairs only,
/// each taking one link of every pair it crosses in its direction, found one after another
/// until no cycle is left (NCCL builds its channels the same way, so that every link of a
/// DGX-1 carries traffic: nccl#299). `None` where one ring is what NCCL would run too: several
/// hosts, fewer than 3 ranks, no NVLink cycle through every rank (a partial allocation whose
/// links do not close a ring), or an NVSwitch (every pair alike, `NV#` being a GPU's port:
/// one ring already uses the whole port).
pub fn nvlink_rings(ctx: &PlanContext) -> Option<Vec<Vec<Rank>>> {
    if ctx.nhosts() != 1 || ctx.nvlinks.is_empty() || ctx.nranks < 3 {
        return None;
    }
    let m = ctx.nranks as usize;
    let mut cap: Vec<Vec<u32>> = (0..m)
        .map(|a| {
            (0..m)
                .map(|b| ctx.nvlinks_between(Rank(a as u32), Rank(b as u32)) as u32)
                .collect()
        })
        .collect();
    let first = cap[0][1];
    let switched = (0..m).all(|a| (0..m).all(|b| a == b || cap[a][b] == first));
    if switched {
        return None;
    }
    // Every directed NVLink cycle through all ranks, then the largest set of them the links
    // carry (a cycle may repeat where pairs have several links). Taking cycles one at a time
    // falls short: on the V100 cube-mesh that finds 5 of the 6 rings.
    let mut cycles = Vec::new();
    let mut used = vec![false; m];
    used[0] = true;
    all_cycles(&cap, &mut vec![0], &mut used, &mut cycles);
    let bound = (0..m)
        .map(|a| cap[a].iter().sum::<u32>() as usize)
        .min()
        .unwrap_or(0)
        .min(MAX_RINGS);
    let mut best = Vec::new();
    let mut budget = 100_000u32;
    pack(
        &cycles,
        0,
        &mut cap,
        &mut Vec::new(),
        &mut best,
        bound,
        &mut budget,
    );
    let rings: Vec<Vec<Rank>> = best
        .into_iter()
        .map(|c| cycles[c].iter().map(|i| Rank(*i as u32)).collect())
        .collect();
    (!rings.is_empty()).then_some(rings)
}

/// Every Hamiltonian cycle starting at `path[0]` over pairs with capacity (at most 10,000).
fn all_cycles(
    cap: &[Vec<u32>],
    path: &mut Vec<usize>,
    used: &mut [bool],
    out: &mut Vec<Vec<usize>>,
) {
    let m = cap.len();
    let last = *path.last().expect("the path starts at rank 0");
    if path.len() == m {
        if cap[last][path[0]] > 0 {
            out.push(path.clone());
        }
        return;
    }
    for j in 0..m {
        if out.len() >= 10_000 {
            return;
        }
        if !used[j] && cap[last][j] > 0 {
            used[j] = true;
            path.push(j);
            all_cycles(cap, path, used, out);
            path.pop();
            used[j] = false;
        }
    }
}

/// The largest multiset of `cycles` (from index `from` on) within `cap`, into `best`; stops at
/// `bound` rings or when `budget` steps are spent.
fn pack(
    cycles: &[Vec<usize>],
    from: usize,
    cap: &mut [Vec<u32>],
    chosen: &mut Vec<usize>,
    best: &mut Vec<usize>,
    bound: usize,
    budget: &mut u32,
) {
    if chosen.len() > best.len() {
        *best = chosen.clone();
    }
    if best.len() >= bound || *budget == 0 {
        return;
    }
    *budget -= 1;
    let m = cap.len();
    for (c, cy) in cycles.iter().enumerate().skip(from) {
        if (0..m).all(|k| cap[cy[k]][cy[(k + 1) % m]] > 0) {
            (0..m).for_each(|k| cap[cy[k]][cy[(k + 1) % m]] -= 1);
            chosen.push(c);
            pack(cycles, c, cap, chosen, best, bound, budget);
            chosen.pop();
            (0..m).for_each(|k| cap[cy[k]][cy[(k + 1) % m]] += 1);
            if best.len() >= bound || *budget == 0 {
                return;
            }
        }
    }
}

/// `plan` (made for rank `order.position(rank)` of a job numbered by position) with every rank
/// mapped through `order`: the same plan, run by the ranks in that order.
pub(crate) fn relabel(mut plan: RankPlan, order: &[Rank]) -> RankPlan {
    let map = |r: Rank| order[r.idx()];
    let peers = |p: Peers| Peers::new(&p.iter().map(map).collect::<Vec<_>>());
    plan.rank = map(plan.rank);
    for lane in &mut plan.lanes {
        for st in &mut lane.steps {
            st.op = match st.op {
                Op::Send { to, src } => Op::Send { to: map(to), src },
                Op::Recv { from, dst } => Op::Recv {
                    from: map(from),
                    dst,
                },
                Op::RecvReduce { from, dst } => Op::RecvReduce {
                    from: map(from),
                    dst,
                },
                Op::RecvReduceSend { from, to, dst } => Op::RecvReduceSend {
                    from: map(from),
                    to: map(to),
                    dst,
                },
                Op::RecvCopySend { from, to, dst } => Op::RecvCopySend {
                    from: map(from),
                    to: map(to),
                    dst,
                },
                Op::Fan {
                    from,
                    to,
                    dst,
                    reduce,
                } => Op::Fan {
                    from: peers(from),
                    to: peers(to),
                    dst,
                    reduce,
                },
                Op::HostReduce { dst, group, to } => Op::HostReduce {
                    dst,
                    group: peers(group),
                    to: peers(to),
                },
                op @ (Op::Copy { .. } | Op::Reduce { .. }) => op,
            };
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;
    use acspeed_core::plan::Collective;
    use acspeed_core::topology::nvsmi;
    use acspeed_core::verify::verify_all_models;

    fn fixture(name: &str) -> acspeed_core::topology::TopoDescription {
        let path = format!(
            "{}/../tests/fixtures/nvsmi/{name}.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        nvsmi::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn ctx(shape: &[u32], name: &str) -> PlanContext {
        let d = fixture(name);
        PlanContext::from_shape(shape)
            .unwrap()
            .with_nvlinks(d.nvlink_matrix())
            .unwrap()
            .with_sockets(&d.gpu_sockets())
    }

    fn weakest(c: &PlanContext, o: &[Rank]) -> i32 {
        (0..o.len())
            .map(|k| score(c, o[k], o[(k + 1) % o.len()]))
            .min()
            .unwrap()
    }

    #[test]
    fn rings_follow_the_fast_links() {
        // Cube-mesh: the NV2 8-cycle; DGX-1: an NV1 Hamiltonian cycle.
        let c = ctx(&[8], "02-v100-8gpu-vm-phb-likejazz");
        let o = ring_order(&c);
        assert_eq!(weakest(&c, &o), 2, "{o:?}");
        assert_eq!(weakest(&c, &(0..8).map(Rank).collect::<Vec<_>>()), 0);
        let c = ctx(&[8], "03-p100-dgx1-8gpu-sheffield");
        assert_eq!(weakest(&c, &ring_order(&c)), 1);
        // PCIe, two sockets: the ring crosses between them exactly twice.
        let c = ctx(&[8], "04-savio4-8gpu-pcie-pxb-pix");
        let o = ring_order(&c);
        let crossings = (0..8)
            .filter(|k| c.socket_of[o[*k].idx()] != c.socket_of[o[(k + 1) % 8].idx()])
            .count();
        assert_eq!(crossings, 2, "{o:?}");
        // Nothing known: ranks ascending.
        let plain = PlanContext::from_shape(&[5, 3]).unwrap();
        assert_eq!(ring_order(&plain), (0..8).map(Rank).collect::<Vec<_>>());
    }

    /// The DGX-1 cube-meshes: every NVLink carries a ring in each direction, as NCCL's
    /// channels do (6 rings on the V100 box's 6 links per GPU, 4 on the P100 box's 4); an
    /// NVSwitch box, a PCIe box and a partial allocation whose links close no cycle get none.
    #[test]
    fn nvlink_rings_use_every_link_once_each_way() {
        for (name, want) in [
            ("02-v100-8gpu-vm-phb-likejazz", 6),
            ("03-p100-dgx1-8gpu-sheffield", 4),
        ] {
            let c = ctx(&[8], name);
            let rings = nvlink_rings(&c).unwrap();
            assert_eq!(rings.len(), want, "{name}: {rings:?}");
            let mut load = vec![vec![0u8; 8]; 8];
            for r in &rings {
                assert_eq!(r.len(), 8);
                for k in 0..8 {
                    let (a, b) = (r[k], r[(k + 1) % 8]);
                    assert!(
                        c.nvlinks_between(a, b) > 0,
                        "{name}: {a:?}-{b:?} is not NVLink"
                    );
                    load[a.idx()][b.idx()] += 1;
                }
            }
            for a in 0..8u32 {
                for b in 0..8u32 {
                    assert_eq!(
                        load[a as usize][b as usize],
                        c.nvlinks_between(Rank(a), Rank(b)),
                        "{name}: {a}->{b}"
                    );
                }
            }
        }
        assert!(nvlink_rings(&ctx(&[8], "06-a100-8gpu-nv12-17nic")).is_none());
        assert!(nvlink_rings(&ctx(&[8], "04-savio4-8gpu-pcie-pxb-pix")).is_none());
        assert!(nvlink_rings(&ctx(&[8, 8], "02-v100-8gpu-vm-phb-likejazz")).is_none());
    }

    #[test]
    fn reordered_plans_verify() {
        for (shape, name) in [
            (&[8u32][..], "02-v100-8gpu-vm-phb-likejazz"),
            (&[8, 8], "03-p100-dgx1-8gpu-sheffield"),
            (&[6, 3], "04-savio4-8gpu-pcie-pxb-pix"),
            (&[5], "02-v100-8gpu-vm-phb-likejazz"),
        ] {
            let c = ctx(shape, name);
            for algo in Algorithm::ALL {
                if !algo.serves(Collective::AllReduce) {
                    continue;
                }
                let plans = algo.all_plans(Collective::AllReduce, &c).unwrap();
                verify_all_models(&plans, Some(1001))
                    .unwrap_or_else(|e| panic!("{} {shape:?} {name}: {e}", algo.name()));
            }
        }
    }
}
