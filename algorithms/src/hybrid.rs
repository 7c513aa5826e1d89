//! Hybrid hierarchical allreduce: reduce-scatter inside each host, one allreduce per stripe
//! across hosts, allgather inside each host.
//!
//! The buffer is cut into `C x H` chunks (`H` hosts; `C` = the least common multiple of the
//! hosts' rank counts, capped): chunk `(c, s)` is index `c*H + s`. On a host with `m` ranks,
//! local rank `q` owns the stripes `c` with `c % m == q`. Phase 1 reduce-scatters the host's
//! stripes among its ranks (ring); phase 2 allreduces each stripe `c` among its owners, one
//! per host (ring, double binary tree, butterfly or parameter server over hosts; the `s` index
//! splits the stripe); phase 3
//! allgathers the stripes inside the host. Every local rank drives its own stripes over its
//! own connections, so there is no leader and no single socket carries a host's traffic;
//! hosts with different rank counts (3+1+2) work because stripes are assigned per host.
//!
//! Each rank runs the phases in the same order (its stripes ascending), so every wait is on a
//! step of the same phase and stripe elsewhere: no deadlock, which the verifier checks in the
//! bounded-buffer model as well.

use crate::compose::{
    allreduce_plan, butterfly_allreduce, owned_stripes, ps_allreduce, ring_allgather,
    ring_allreduce, ring_reduce_scatter, tree_allreduce, Steps,
};
use acspeed_core::plan::{ChunkRef, Collective, Lane, RankPlan, StepId};
use acspeed_core::{Error, PlanContext, Rank, Result};

/// How stripes are allreduced across hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterHost {
    Ring,
    Tree,
    /// Recursive halving-doubling (any host count).
    Butterfly,
    /// Parameter server: each host's owner of a part reduces it and serves it back.
    Ps,
}

impl InterHost {
    pub fn name(self) -> &'static str {
        match self {
            InterHost::Ring => "ring",
            InterHost::Tree => "tree",
            InterHost::Butterfly => "butterfly",
            InterHost::Ps => "ps",
        }
    }
}

/// Most stripes per host (bounds plan size when host sizes share no small multiple).
const MAX_STRIPES: u32 = 64;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Stripes per host: a common multiple of every host's rank count so each local rank owns
/// the same share, or (if that is too large) the largest host's count.
pub fn stripes(shape: &[u32]) -> u32 {
    let lcm = shape
        .iter()
        .try_fold(1u32, |acc, &m| {
            let l = acc / gcd(acc, m) * m;
            (l <= MAX_STRIPES).then_some(l)
        })
        .unwrap_or(0);
    if lcm > 0 {
        lcm
    } else {
        shape.iter().copied().max().unwrap_or(1)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Hybrid {
    pub inter: InterHost,
}

impl Hybrid {
    pub fn serves(coll: Collective) -> bool {
        coll == Collective::AllReduce
    }

    /// Rank `rank`'s plan in one round (the whole buffer through the three phases once).
    pub fn plan_for_rank(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
    ) -> Result<RankPlan> {
        self.plan_rounds(coll, rank, ctx, 1)
    }

    /// Rank `rank`'s plan with the buffer cut into `rounds` rounds that overlap: round r's
    /// inter-host phase runs while round r+1 reduce-scatters and round r-1 allgathers inside
    /// the host, so of the intra-host phases only one round's share is not hidden behind the
    /// network (with one round, both phases wait for it or it for them).
    ///
    /// Lanes: lane 0 (channel 0) runs every round's reduce-scatter, then every round's
    /// allgather; the stripe lanes (channels 0..k) run the inter-host phases, round by round
    /// (with one round on even hosts the inter-host phase stays in lane 0, between the two).
    /// Lane 0 talks only to ranks of its host and the stripe lanes only to ranks of other
    /// hosts, so sharing channel 0 never interleaves two lanes' messages to one peer. A
    /// round's inter-host phase waits for its reduce-scatter, its allgather for its
    /// inter-host phase on every stripe lane.
    pub fn plan_rounds(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        rounds: u32,
    ) -> Result<RankPlan> {
        ctx.check()?;
        if !Hybrid::serves(coll) {
            return Err(Error::invalid(format!(
                "hybrid serves allreduce only, not {}",
                coll.name()
            )));
        }
        if rounds == 0 || rounds > MAX_ROUNDS {
            return Err(Error::invalid(format!(
                "hybrid: {rounds} rounds (1 to {MAX_ROUNDS})"
            )));
        }
        let hosts = ctx.hosts();
        let shape = ctx.shape();
        let h_count = hosts.len() as u32;
        let c_count = stripes(&shape);
        let per_round = c_count * h_count;
        let me_host = ctx.host_of[rank.idx()] as usize;
        // Stripes belong to local ranks by ascending position (owners across hosts agree on
        // that); the intra-host rings run in the order that follows the fast links.
        let asc = &hosts[me_host];
        let local = &crate::order::host_order(ctx, asc);
        let m = asc.len() as u32;
        let q = asc
            .iter()
            .position(|r| *r == rank)
            .expect("rank on its host") as u32;
        let by_owner = owned_stripes(m, c_count, h_count);
        let groups_of = |round: u32| -> Vec<Vec<ChunkRef>> {
            local
                .iter()
                .map(|r| {
                    by_owner[asc.iter().position(|x| x == r).expect("same host")]
                        .iter()
                        .map(|c| ChunkRef::out(c.index + round * per_round))
                        .collect()
                })
                .collect()
        };
        let k = channels_needed(ctx);
        // One round on even hosts: the inter-host phase runs in lane 0 between the other two
        // (nothing to overlap; a lane of its own measured 2-20% slower at 1-4 MiB on 2 x 2).
        let inline = rounds == 1 && k == 1;
        let mut main = Steps::default();
        let mut lanes: Vec<Steps> = (0..k).map(|_| Steps::default()).collect();
        // Per round: the last main-lane step of its reduce-scatter (None: nothing before it),
        // and the length of each stripe lane at its end.
        let mut rs_done: Vec<Option<usize>> = Vec::new();
        let mut lane_ends: Vec<Vec<usize>> = Vec::new();
        for round in 0..rounds {
            ring_reduce_scatter(&mut main, local, rank, &groups_of(round), false);
            rs_done.push(main.0.len().checked_sub(1));
            for c in (0..c_count).filter(|c| c % m == q) {
                let owners: Vec<Rank> = hosts
                    .iter()
                    .map(|h| h[(c % h.len() as u32) as usize])
                    .collect();
                let parts: Vec<ChunkRef> = (0..h_count)
                    .map(|s| ChunkRef::out(round * per_round + c * h_count + s))
                    .collect();
                let out = if inline {
                    &mut main
                } else {
                    &mut lanes[(c % k) as usize]
                };
                let first = out.0.len();
                match self.inter {
                    InterHost::Ring => {
                        let g: Vec<Vec<ChunkRef>> = parts.iter().map(|c| vec![*c]).collect();
                        ring_allreduce(out, &owners, rank, &g);
                    }
                    InterHost::Tree => {
                        let half = parts.len().div_ceil(2);
                        tree_allreduce(out, &owners, rank, [&parts[..half], &parts[half..]]);
                    }
                    InterHost::Butterfly => butterfly_allreduce(out, &owners, rank, &parts),
                    InterHost::Ps => ps_allreduce(out, &owners, rank, &parts),
                }
                // The stripe's first step waits for this round's reduce-scatter (in the lane
                // itself when inline).
                if let (false, Some(step), Some(d)) =
                    (inline, out.0.get_mut(first), rs_done[round as usize])
                {
                    step.deps.push(StepId {
                        lane: 0,
                        step: d as u32,
                    });
                }
            }
            lane_ends.push(lanes.iter().map(|l| l.0.len()).collect());
        }
        let mut ag_start = Vec::new();
        for round in 0..rounds {
            ag_start.push(main.0.len());
            ring_allgather(&mut main, local, rank, &groups_of(round), false);
        }
        let mut plan = allreduce_plan(
            format!("hybrid:{}", self.inter.name()),
            rank,
            ctx.nranks,
            rounds * per_round,
            main,
        );
        // Lane numbers of the non-empty stripe lanes, in order.
        let mut lane_no = vec![None; k as usize];
        for (x, l) in lanes.into_iter().enumerate() {
            if !l.0.is_empty() {
                lane_no[x] = Some(plan.lanes.len() as u32);
                plan.lanes.push(Lane {
                    channel: x as u32,
                    steps: l.0,
                });
            }
        }
        for round in 0..rounds as usize {
            // This round's allgather waits for its inter-host phase on every stripe lane.
            let deps: Vec<StepId> = (0..k as usize)
                .filter_map(|x| {
                    let end = lane_ends[round][x];
                    let before = if round == 0 {
                        0
                    } else {
                        lane_ends[round - 1][x]
                    };
                    (end > before).then(|| StepId {
                        lane: lane_no[x].expect("a lane with steps"),
                        step: end as u32 - 1,
                    })
                })
                .collect();
            if deps.is_empty() {
                continue;
            }
            // (No allgather steps when this rank is alone on its host: nothing to order, the
            // plan ends when every lane has.)
            if let Some(first) = plan.lanes[0].steps.get_mut(ag_start[round]) {
                first.deps.extend(deps);
            }
        }
        Ok(plan)
    }

    /// Rounds for a message of `bytes` on `ctx`: enough that each inter-host message is at
    /// least [`MIN_ROUND_CHUNK`] bytes, at most [`MAX_ROUNDS`]; 1 on one host (no network to
    /// hide the intra-host phases behind).
    pub fn rounds_for(bytes: usize, ctx: &PlanContext) -> u32 {
        let shape = ctx.shape();
        if shape.len() < 2 {
            return 1;
        }
        let chunks = (stripes(&shape) as usize) * shape.len();
        ((bytes / chunks / MIN_ROUND_CHUNK) as u32).clamp(1, MAX_ROUNDS)
    }
}

/// Most rounds a hybrid allreduce is cut into, and the smallest inter-host message a further
/// round may make. Measured under netsim (2 Gbit/s per host, 500 Mbit/s per flow, 2026-11-30,
/// medians of 3): at 64 MiB on hosts 3+1+2, 1 / 4 / 8 rounds took 481 / 415 / 411 ms (the flat
/// ring 480), on 2 x 2 320 / 299 / 297 ms; at 16 MiB on 3+1+2, in two sweeps, 2 rounds (466
/// KiB messages) took 117 and 119 ms, 1 round 132 and 124, 4 rounds (233 KiB) 155 and 130:
/// below a few hundred KiB a message's fixed costs outweigh the overlap.
pub const MAX_ROUNDS: u32 = 4;
pub const MIN_ROUND_CHUNK: usize = 384 << 10;

/// Lanes (and channels) hybrid spreads a rank's stripes over: with uneven hosts some ranks own
/// several stripes (the host of one rank on 3+1+2 owns all six), and their inter-host phases
/// run concurrently on lanes of their own, each on its own channel, so no stripe waits for
/// another's messages. At most 4, and 1 (a single lane, as before) on even hosts.
pub fn channels_needed(ctx: &PlanContext) -> u32 {
    let shape = ctx.shape();
    if shape.len() < 2 {
        return 1;
    }
    let m_min = shape.iter().copied().min().unwrap_or(1).max(1);
    (stripes(&shape) / m_min).clamp(1, MAX_STRIPE_LANES)
}

/// Most stripe lanes per rank (each is a channel: another mesh of connections at init).
const MAX_STRIPE_LANES: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_are_common_multiples_when_small() {
        assert_eq!(stripes(&[3, 1, 2]), 6);
        assert_eq!(stripes(&[4, 4]), 4);
        assert_eq!(stripes(&[1]), 1);
        assert_eq!(stripes(&[7, 8, 9]), 9); // lcm 504 is over the cap
    }
}
