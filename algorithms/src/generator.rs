//! The one shape every plan generator has: the collectives it serves, and rank `rank`'s plan
//! for one of them on the job `ctx`. [`crate::Algorithm`] dispatches to these; a new
//! algorithm implements [`Generator`] and gets a variant there.

use crate::{order, CpuReduce, Hybrid, NTrees, Ring, Tree};
use acspeed_core::plan::{Collective, RankPlan};
use acspeed_core::{Error, PlanContext, Rank, Result};

/// A plan generator (pure: no I/O, no clock, no environment).
pub trait Generator: Sync {
    /// Whether it has a plan for `coll`.
    fn serves(&self, coll: Collective) -> bool;

    /// Rank `rank`'s plan for `coll` on `ctx`, cut into `rounds` overlapping rounds where the
    /// generator has rounds (hybrid's; the others ignore it). The caller has checked
    /// [`Generator::serves`] and that `rank` is in the job.
    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        rounds: u32,
    ) -> Result<RankPlan>;
}

impl Generator for Ring {
    fn serves(&self, _: Collective) -> bool {
        true
    }

    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        _: u32,
    ) -> Result<RankPlan> {
        // On an NVLink mesh, NCCL's rings: one channel per ring, the buffer split evenly
        // between them, so every link carries a share.
        if coll == Collective::AllReduce {
            if let Some(rings) = order::nvlink_rings(ctx).filter(|r| r.len() > 1) {
                return Ok(crate::ring::multi_ring_allreduce(rank, ctx.nranks, &rings));
            }
        }
        // An allreduce ring may take the ranks in any order: follow the fast links. (The
        // double binary tree keeps index order: in ring order its label pairs are not ring
        // neighbours, and on DGX-1 it predicted half as fast.)
        let order = order::ring_order(ctx);
        if coll != Collective::AllReduce || order.iter().enumerate().all(|(i, r)| r.idx() == i) {
            return Ok(self.plan_for_rank(coll, rank, ctx.nranks));
        }
        let pos = order
            .iter()
            .position(|r| *r == rank)
            .expect("every rank is in the order");
        Ok(order::relabel(
            self.plan_for_rank(coll, Rank(pos as u32), ctx.nranks),
            &order,
        ))
    }
}

impl Generator for Tree {
    fn serves(&self, coll: Collective) -> bool {
        Tree::serves(coll)
    }

    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        _: u32,
    ) -> Result<RankPlan> {
        Ok(self.plan_for_rank(coll, rank, ctx.nranks))
    }
}

impl Generator for NTrees {
    fn serves(&self, coll: Collective) -> bool {
        NTrees::serves(coll)
    }

    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        _: u32,
    ) -> Result<RankPlan> {
        Ok(self.plan_for_rank(coll, rank, ctx))
    }
}

impl Generator for Hybrid {
    fn serves(&self, coll: Collective) -> bool {
        Hybrid::serves(coll)
    }

    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        rounds: u32,
    ) -> Result<RankPlan> {
        self.plan_rounds(coll, rank, ctx, rounds)
    }
}

impl Generator for CpuReduce {
    fn serves(&self, coll: Collective) -> bool {
        CpuReduce::serves(coll)
    }

    fn generate(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        _: u32,
    ) -> Result<RankPlan> {
        self.plan_for_rank(coll, rank, ctx).ok_or_else(|| {
            Error::invalid(format!(
                "cpu_reduce has no plan on this job: {}",
                crate::cpu_reduce::fallback_reason(ctx).unwrap_or_default()
            ))
        })
    }
}
