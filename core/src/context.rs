//! What a plan generator may know about the job: world size and which ranks share a host.
//!
//! Every rank builds the same context from facts exchanged at rendezvous (host identities),
//! so every rank derives the same plans. Generators receive it read-only; they never probe.

use crate::error::{Error, Result};
use crate::plan::Rank;

/// The job as plan generators see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlanContext {
    pub nranks: u32,
    /// Host index of each rank (hosts numbered 0.. in order of their lowest rank).
    pub host_of: Vec<u32>,
}

impl PlanContext {
    /// Every rank on one host.
    pub fn single_host(nranks: u32) -> PlanContext {
        PlanContext {
            nranks,
            host_of: vec![0; nranks as usize],
        }
    }

    /// Consecutive ranks per host: `[3, 1, 2]` puts ranks 0-2 on host 0, 3 on host 1, 4-5 on
    /// host 2.
    pub fn from_shape(shape: &[u32]) -> Result<PlanContext> {
        if shape.is_empty() || shape.contains(&0) {
            return Err(Error::invalid(format!(
                "host shape {shape:?}: every host needs at least one rank"
            )));
        }
        let host_of: Vec<u32> = shape
            .iter()
            .enumerate()
            .flat_map(|(h, n)| std::iter::repeat_n(h as u32, *n as usize))
            .collect();
        Ok(PlanContext {
            nranks: host_of.len() as u32,
            host_of,
        })
    }

    /// From each rank's host identity (hostname or `ACSPEED_HOST_ID`), as rendezvous gives them.
    pub fn from_host_names(names: &[String]) -> PlanContext {
        let mut seen: Vec<&str> = Vec::new();
        let host_of = names
            .iter()
            .map(|n| match seen.iter().position(|s| *s == n.as_str()) {
                Some(i) => i as u32,
                None => {
                    seen.push(n);
                    seen.len() as u32 - 1
                }
            })
            .collect::<Vec<_>>();
        PlanContext {
            nranks: names.len() as u32,
            host_of,
        }
    }

    pub fn nhosts(&self) -> usize {
        self.host_of
            .iter()
            .map(|h| *h as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Ranks of each host, ascending.
    pub fn hosts(&self) -> Vec<Vec<Rank>> {
        let mut hosts = vec![Vec::new(); self.nhosts()];
        for (r, h) in self.host_of.iter().enumerate() {
            hosts[*h as usize].push(Rank(r as u32));
        }
        hosts
    }

    /// Ranks per host, e.g. `[3, 1, 2]`.
    pub fn shape(&self) -> Vec<u32> {
        self.hosts().iter().map(|h| h.len() as u32).collect()
    }

    /// Checks that the context describes `nranks` ranks with hosts numbered densely.
    pub fn check(&self) -> Result<()> {
        if self.host_of.len() != self.nranks as usize {
            return Err(Error::invalid(format!(
                "plan context: {} host entries for {} ranks",
                self.host_of.len(),
                self.nranks
            )));
        }
        if let Some(h) = (0..self.nhosts()).find(|h| !self.host_of.contains(&(*h as u32))) {
            return Err(Error::invalid(format!(
                "plan context: host {h} has no rank (hosts must be numbered 0.. densely)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names_agree() {
        let a = PlanContext::from_shape(&[3, 1, 2]).unwrap();
        assert_eq!(a.host_of, vec![0, 0, 0, 1, 2, 2]);
        assert_eq!(a.shape(), vec![3, 1, 2]);
        assert_eq!(a.hosts()[2], vec![Rank(4), Rank(5)]);
        a.check().unwrap();
        let names: Vec<String> = ["b", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b = PlanContext::from_host_names(&names);
        assert_eq!(b.host_of, vec![0, 1, 0, 2]);
        assert_eq!(b.shape(), vec![2, 1, 1]);
        assert!(PlanContext::from_shape(&[2, 0]).is_err());
        let bad = PlanContext {
            nranks: 2,
            host_of: vec![0, 2],
        };
        assert!(bad.check().unwrap_err().to_string().contains("host 1"));
    }
}
