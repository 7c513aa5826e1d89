//! # acspeed-algorithms
//!
//! Collective algorithms as **pure plan generators**: given the collective, a rank and the
//! number of ranks, an algorithm returns that rank's [`RankPlan`] — lanes of fused steps over
//! chunk indices. No I/O, no clock, no environment: that is what lets the same plan be
//! verified symbolically, cached, dumped, simulated over a topology model and executed over
//! any transport. This crate depends on `acspeed-core` only, never on a transport.

pub mod ring;

use acspeed_core::plan::{Collective, RankPlan};
use acspeed_core::{Error, Rank, Result};

pub use ring::Ring;

/// The algorithms acspeed can run, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Ring,
}

impl Algorithm {
    pub const ALL: [Algorithm; 1] = [Algorithm::Ring];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
        }
    }

    pub fn from_name(s: &str) -> Result<Algorithm> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                Error::invalid(format!(
                    "unknown algorithm '{s}' (available: auto, {})",
                    names.join(", ")
                ))
            })
    }

    pub fn plan_for_rank(self, coll: Collective, rank: Rank, nranks: u32) -> RankPlan {
        match self {
            Algorithm::Ring => Ring::default().plan_for_rank(coll, rank, nranks),
        }
    }
}

/// Plans of every rank (for verification and simulation at test scale).
pub fn all_plans(algo: impl Fn(Rank) -> RankPlan, nranks: u32) -> Vec<RankPlan> {
    (0..nranks).map(|r| algo(Rank(r))).collect()
}

#[cfg(test)]
mod tests;
