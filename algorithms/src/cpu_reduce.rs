//! CPU-Reduce: the ranks of a host allreduce through one shared staging area in host memory
//! (`Op::HostReduce`: copy in, reduce on the CPU, copy out, pipelined over slots; see
//! acspeed-transports' `HostStaging`), instead of passing every byte around a ring.
//!
//! On one host that is the whole plan: one `HostReduce` of the buffer among all ranks. Each
//! rank writes its bytes once, reduces 1/L of them from all L inputs, and reads the result
//! once, in one pipelined step instead of 2(L-1) ring steps of receive, reduce and forward.
//!
//! Across hosts (the seed's multi-host CPU-Reduce): the buffer is striped as for hybrid
//! (`C x H` chunks, local rank `q` owns the stripes `c % m == q`); each host first reduces
//! every chunk in its staging area, then each stripe's owners allreduce it host to host (ring,
//! one owner per host, every local rank driving its own stripes over its own sockets), and
//! the host allgathers the finished stripes. Hosts of one rank skip the staging step.
//!
//! Limits: a `HostReduce` group holds at most 8 ranks (`Peers::MAX`, the size of the 8-GPU
//! boxes CPU-Reduce is for); with a larger host the plan is the ring (one host) or hybrid
//! (several), the same on every rank ([`fallback_reason`] says why).

use crate::compose::{ring_allgather, ring_allreduce, Steps};
use crate::hybrid::stripes;
use acspeed_core::plan::{ChunkRef, Collective, Lane, Op, Peers, RankPlan};
use acspeed_core::{PlanContext, Rank};

/// Why CPU-Reduce's plan on `ctx` is not a CPU-Reduce plan, or `None`.
pub fn fallback_reason(ctx: &PlanContext) -> Option<String> {
    let shape = ctx.shape();
    if let Some(m) = shape.iter().find(|m| **m as usize > Peers::MAX) {
        return Some(format!(
            "a host has {m} ranks; a host reduce group holds at most {}",
            Peers::MAX
        ));
    }
    if shape.iter().all(|m| *m == 1) {
        return Some("no host has two ranks to share a staging area".into());
    }
    None
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReduce;

impl CpuReduce {
    pub fn serves(coll: Collective) -> bool {
        coll == Collective::AllReduce
    }

    /// Rank `rank`'s plan, or `None` when CPU-Reduce falls back (see [`fallback_reason`]).
    pub fn plan_for_rank(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
    ) -> Option<RankPlan> {
        if fallback_reason(ctx).is_some() || coll != Collective::AllReduce {
            return None;
        }
        let hosts = ctx.hosts();
        let local = &hosts[ctx.host_of[rank.idx()] as usize];
        let group = Peers::new(local);
        let mut s = Steps::default();
        let host_reduce = |s: &mut Steps, dst: ChunkRef| {
            if local.len() > 1 {
                s.0.push(Op::HostReduce { dst, group }.into());
            }
        };
        let chunks = if hosts.len() == 1 {
            host_reduce(&mut s, ChunkRef::out(0));
            1
        } else {
            let h_count = hosts.len() as u32;
            let c_count = stripes(&ctx.shape());
            let chunk = |c: u32, s: u32| ChunkRef::out(c * h_count + s);
            for i in 0..c_count * h_count {
                host_reduce(&mut s, ChunkRef::out(i));
            }
            let m = local.len() as u32;
            let q = local
                .iter()
                .position(|r| *r == rank)
                .expect("rank on its host") as u32;
            for c in (0..c_count).filter(|c| c % m == q) {
                let owners: Vec<Rank> = hosts
                    .iter()
                    .map(|h| h[(c % h.len() as u32) as usize])
                    .collect();
                let g: Vec<Vec<ChunkRef>> = (0..h_count).map(|s| vec![chunk(c, s)]).collect();
                ring_allreduce(&mut s, &owners, rank, &g);
            }
            let groups: Vec<Vec<ChunkRef>> = (0..m)
                .map(|p| {
                    (0..c_count)
                        .filter(|c| c % m == p)
                        .flat_map(|c| (0..h_count).map(move |s| chunk(c, s)))
                        .collect()
                })
                .collect();
            ring_allgather(&mut s, local, rank, &groups, false);
            c_count * h_count
        };
        Some(RankPlan {
            collective: coll,
            algorithm: "cpu_reduce".into(),
            rank,
            nranks: ctx.nranks,
            input_chunks: 0,
            output_chunks: chunks,
            scratch_factor: 0,
            weights: Vec::new(),
            lanes: vec![Lane::new(s.0)],
        })
    }
}
