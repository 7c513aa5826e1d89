//! # acspeed-algorithms
//!
//! Collective algorithms as **pure plan generators**: given the collective, a rank and the
//! number of ranks, an algorithm returns that rank's [`RankPlan`] — lanes of fused steps over
//! chunk indices. No I/O, no clock, no environment: that is what lets the same plan be
//! verified symbolically, cached, dumped, simulated over a topology model and executed over
//! any transport. This crate depends on `acspeed-core` only, never on a transport.

mod compose;
pub mod cpu_reduce;
pub mod generator;
pub mod hybrid;
pub mod ntree;
pub mod order;
pub mod ring;
pub mod select;
pub mod tree;

use acspeed_core::plan::{Collective, RankPlan};
use acspeed_core::{Error, PlanContext, Rank, Result};

pub use cpu_reduce::CpuReduce;
pub use generator::Generator;
pub use hybrid::{Hybrid, InterHost};
pub use ntree::NTrees;
pub use ring::Ring;
pub use tree::{BinaryTree, Tree};

/// The algorithms acspeed can run, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Ring,
    /// Double binary tree.
    Tree,
    /// Spanning trees packed on the NVLinks (double binary tree without them).
    Ntree,
    /// Intra-host reduce-scatter, inter-host allreduce per stripe, intra-host allgather.
    Hybrid(InterHost),
    /// The host's ranks reduce through a shared staging area (across hosts: per stripe).
    CpuReduce,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::Ntree,
        Algorithm::Hybrid(InterHost::Ring),
        Algorithm::Hybrid(InterHost::Tree),
        Algorithm::Hybrid(InterHost::Butterfly),
        Algorithm::Hybrid(InterHost::Ps),
        Algorithm::CpuReduce,
    ];

    /// The name `--algo` and `ACSPEED_ALGO` spell (`hybrid` alone means `hybrid:ring`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Tree => "tree",
            Algorithm::Ntree => "ntree",
            Algorithm::Hybrid(InterHost::Ring) => "hybrid",
            Algorithm::Hybrid(InterHost::Tree) => "hybrid:tree",
            Algorithm::Hybrid(InterHost::Butterfly) => "hybrid:butterfly",
            Algorithm::Hybrid(InterHost::Ps) => "hybrid:ps",
            Algorithm::CpuReduce => "cpu_reduce",
        }
    }

    pub fn from_name(s: &str) -> Result<Algorithm> {
        let s = acspeed_core::plan::canonical_algorithm("algorithm", s)?;
        Ok(Algorithm::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .expect("Algorithm::ALL spells every name of ALGORITHM_NAMES"))
    }

    /// The algorithm's plan generator.
    pub fn generator(self) -> &'static dyn Generator {
        static RING: Ring = Ring { chunks_per_rank: 1 };
        static HYBRID: [Hybrid; 4] = [
            Hybrid {
                inter: InterHost::Ring,
            },
            Hybrid {
                inter: InterHost::Tree,
            },
            Hybrid {
                inter: InterHost::Butterfly,
            },
            Hybrid {
                inter: InterHost::Ps,
            },
        ];
        match self {
            Algorithm::Ring => &RING,
            Algorithm::Tree => &Tree,
            Algorithm::Ntree => &NTrees,
            Algorithm::Hybrid(i) => &HYBRID[i as usize],
            Algorithm::CpuReduce => &CpuReduce,
        }
    }

    /// Whether the algorithm has a plan for `coll` (ring serves every collective).
    pub fn serves(self, coll: Collective) -> bool {
        self.generator().serves(coll)
    }

    /// Rank `rank`'s plan for `coll` in the job `ctx` (the plan of small messages: hybrid in
    /// one round).
    pub fn plan(self, coll: Collective, rank: Rank, ctx: &PlanContext) -> Result<RankPlan> {
        self.plan_rounds(coll, rank, ctx, 1)
    }

    /// What `self`'s plan for `coll` is on `ctx` when it is another algorithm's, and why; with
    /// `shm` false the job has no shared memory (so no CPU-Reduce staging area). The one
    /// fallback rule: planning, rounds, the policy and `explain` all ask it.
    pub fn fallback(self, coll: Collective, ctx: &PlanContext, shm: bool) -> Option<Fallback> {
        let hierarchical = || {
            if ctx.nhosts() > 1 {
                Algorithm::Hybrid(InterHost::Ring)
            } else {
                Algorithm::Ring
            }
        };
        match self {
            Algorithm::CpuReduce if self.serves(coll) && !shm => Some(Fallback {
                runs: hierarchical(),
                cause: FallbackCause::NoSharedMemory,
            }),
            Algorithm::CpuReduce if self.serves(coll) => {
                cpu_reduce::fallback_reason(ctx).map(|why| Fallback {
                    runs: hierarchical(),
                    cause: FallbackCause::NoStagingGroup(why),
                })
            }
            Algorithm::Ntree if self.serves(coll) => {
                ntree::fallback_reason(ctx).map(|why| Fallback {
                    runs: Algorithm::Tree,
                    cause: FallbackCause::NoTrees(why),
                })
            }
            _ => None,
        }
    }

    /// Rounds of the plan for a message of `bytes` (output per rank): hybrid, and CPU-Reduce
    /// where it runs hybrid across hosts, cut large messages into overlapping rounds
    /// ([`Hybrid::rounds_for`]); every other plan is the same at every size (1). The executor,
    /// the simulator and the selector all plan through this, so they run the same plan.
    pub fn rounds_for(self, coll: Collective, bytes: usize, ctx: &PlanContext) -> u32 {
        match self {
            Algorithm::Hybrid(_) if Hybrid::serves(coll) => Hybrid::rounds_for(bytes, ctx),
            Algorithm::CpuReduce => match self.fallback(coll, ctx, true) {
                Some(f) => f.runs.rounds_for(coll, bytes, ctx),
                None => 1,
            },
            _ => 1,
        }
    }

    /// Rank `rank`'s plan with `rounds` rounds (hybrid; ignored by the others).
    pub fn plan_rounds(
        self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
        rounds: u32,
    ) -> Result<RankPlan> {
        if rank.0 >= ctx.nranks {
            return Err(Error::invalid(format!(
                "rank {rank} is out of range for {} ranks",
                ctx.nranks
            )));
        }
        if !self.serves(coll) {
            return Err(Error::invalid(format!(
                "algorithm {} cannot run {} (it serves {})",
                self.name(),
                coll.name(),
                match self {
                    Algorithm::Tree | Algorithm::Ntree => "allreduce, broadcast and reduce",
                    _ => "allreduce only",
                }
            )));
        }
        match self.fallback(coll, ctx, true) {
            // CPU-Reduce without a group to stage: its fallback's plan.
            Some(f) if self == Algorithm::CpuReduce => f.runs.plan_rounds(coll, rank, ctx, rounds),
            _ => self.generator().generate(coll, rank, ctx, rounds),
        }
    }

    /// Plans of every rank (for verification and simulation).
    pub fn all_plans(self, coll: Collective, ctx: &PlanContext) -> Result<Vec<RankPlan>> {
        self.all_plans_rounds(coll, ctx, 1)
    }

    /// Plans of every rank with `rounds` rounds (see [`Algorithm::plan_rounds`]).
    pub fn all_plans_rounds(
        self,
        coll: Collective,
        ctx: &PlanContext,
        rounds: u32,
    ) -> Result<Vec<RankPlan>> {
        (0..ctx.nranks)
            .map(|r| self.plan_rounds(coll, Rank(r), ctx, rounds))
            .collect()
    }
}

/// An algorithm whose plan on a job is another algorithm's ([`Algorithm::fallback`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The algorithm whose plan runs.
    pub runs: Algorithm,
    pub cause: FallbackCause,
}

/// Why an algorithm falls back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackCause {
    /// CPU-Reduce meets in shared memory, and the job has none (`ACSPEED_SHM=0`).
    NoSharedMemory,
    /// CPU-Reduce has no host (or socket) group it can stage (the generator's words).
    NoStagingGroup(String),
    /// n-trees have no NVLinks to pack trees on (the generator's words).
    NoTrees(String),
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            FallbackCause::NoSharedMemory => write!(
                f,
                "cpu_reduce needs shared memory (ACSPEED_SHM=0): {}",
                self.runs.name()
            ),
            FallbackCause::NoStagingGroup(why) | FallbackCause::NoTrees(why) => {
                let runs = match self.runs {
                    Algorithm::Tree => "the double binary tree",
                    a => a.name(),
                };
                write!(f, "{why}, so it runs {runs}")
            }
        }
    }
}

/// Channels the communicator must connect for the plans of `ctx` (n-trees that share rank
/// pairs; hybrid's stripe lanes on uneven hosts); the same on every rank.
pub fn channels_needed(ctx: &PlanContext) -> u32 {
    let rings = order::nvlink_rings(ctx).map_or(1, |r| r.len() as u32);
    ntree::channels_needed(ctx)
        .max(hybrid::channels_needed(ctx))
        .max(rings)
}

/// Plans of every rank (for verification and simulation at test scale).
pub fn all_plans(algo: impl Fn(Rank) -> RankPlan, nranks: u32) -> Vec<RankPlan> {
    (0..nranks).map(|r| algo(Rank(r))).collect()
}

#[cfg(test)]
mod tests;
