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

    pub fn plan_for_rank(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
    ) -> Result<RankPlan> {
        ctx.check()?;
        if !Hybrid::serves(coll) {
            return Err(Error::invalid(format!(
                "hybrid serves allreduce only, not {}",
                coll.name()
            )));
        }
        let hosts = ctx.hosts();
        let shape = ctx.shape();
        let h_count = hosts.len() as u32;
        let c_count = stripes(&shape);
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
        let chunk = |c: u32, s: u32| ChunkRef::out(c * h_count + s);
        let by_owner = owned_stripes(m, c_count, h_count);
        let groups: Vec<Vec<ChunkRef>> = local
            .iter()
            .map(|r| by_owner[asc.iter().position(|x| x == r).expect("same host")].clone())
            .collect();
        let mut s = Steps::default();
        ring_reduce_scatter(&mut s, local, rank, &groups, false);
        let rs_len = s.0.len();
        // Stripe c's inter-host phase runs on lane c % k (one lane when hosts are even).
        let k = channels_needed(ctx);
        let mut lanes: Vec<Steps> = (0..k).map(|_| Steps::default()).collect();
        for c in (0..c_count).filter(|c| c % m == q) {
            let owners: Vec<Rank> = hosts
                .iter()
                .map(|h| h[(c % h.len() as u32) as usize])
                .collect();
            let parts: Vec<ChunkRef> = (0..h_count).map(|s| chunk(c, s)).collect();
            let out = if k == 1 {
                &mut s
            } else {
                &mut lanes[(c % k) as usize]
            };
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
        }
        let ag_start = s.0.len();
        ring_allgather(&mut s, local, rank, &groups, false);
        let mut plan = allreduce_plan(
            format!("hybrid:{}", self.inter.name()),
            rank,
            ctx.nranks,
            c_count * h_count,
            s,
        );
        if k > 1 {
            // Stripe lanes start once the reduce-scatter is done; the allgather starts once
            // every stripe lane is done.
            let rs_done = rs_len.checked_sub(1).map(|i| StepId {
                lane: 0,
                step: i as u32,
            });
            for (x, l) in lanes
                .into_iter()
                .enumerate()
                .filter(|(_, l)| !l.0.is_empty())
            {
                let mut steps = l.0;
                steps[0].deps.extend(rs_done);
                plan.lanes.push(Lane {
                    channel: x as u32,
                    steps,
                });
            }
            let done: Vec<StepId> = plan.lanes[1..]
                .iter()
                .enumerate()
                .map(|(i, l)| StepId {
                    lane: i as u32 + 1,
                    step: l.steps.len() as u32 - 1,
                })
                .collect();
            if let Some(first) = plan.lanes[0].steps.get_mut(ag_start) {
                first.deps.extend(done);
            }
        }
        Ok(plan)
    }
}

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
