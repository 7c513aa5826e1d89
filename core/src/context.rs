//! What a plan generator may know about the job: world size, which ranks share a host,
//! which GPU each rank drives and the fast (NVLink) links between a host's GPUs.
//!
//! Every rank builds the same context from facts exchanged at rendezvous (host identities,
//! and a topology every rank must agree on), so every rank derives the same plans.
//! Generators receive it read-only; they never probe.

use crate::error::{Error, Result};
use crate::plan::Rank;

/// The job as plan generators see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlanContext {
    pub nranks: u32,
    /// Host index of each rank (hosts numbered 0.. in order of their lowest rank).
    pub host_of: Vec<u32>,
    /// NVLink count between GPU `i` and GPU `j` of a host (every host alike, as on the
    /// machines clusters are built from); empty when no fast links are known.
    pub nvlinks: Vec<Vec<u8>>,
    /// The GPU index on its host that each rank drives (empty: none known). Ranks take GPUs
    /// in local-rank order, as torchrun's `LOCAL_RANK` -> `cuda:LOCAL_RANK` convention does.
    pub device_of: Vec<u32>,
    /// The socket (NUMA side) of each rank's GPU on its host; empty when every rank of a
    /// host shares one (or nothing is known). CPU-Reduce keeps a staging area per socket.
    pub socket_of: Vec<u32>,
}

impl PlanContext {
    /// Every rank on one host.
    pub fn single_host(nranks: u32) -> PlanContext {
        PlanContext {
            nranks,
            host_of: vec![0; nranks as usize],
            nvlinks: Vec::new(),
            device_of: Vec::new(),
            socket_of: Vec::new(),
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
            nvlinks: Vec::new(),
            device_of: Vec::new(),
            socket_of: Vec::new(),
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
            nvlinks: Vec::new(),
            device_of: Vec::new(),
            socket_of: Vec::new(),
        }
    }

    /// The same job with the GPUs of every host joined by `nvlinks` (count per GPU pair):
    /// each rank drives the GPU of its local index (local ranks beyond the GPU count wrap).
    /// A matrix without any link leaves the context without fast links.
    pub fn with_nvlinks(mut self, nvlinks: Vec<Vec<u8>>) -> Result<PlanContext> {
        let g = nvlinks.len();
        if nvlinks.iter().any(|row| row.len() != g) {
            return Err(Error::invalid(format!(
                "NVLink matrix is not square ({g} rows of lengths {:?})",
                nvlinks.iter().map(|r| r.len()).collect::<Vec<_>>()
            )));
        }
        if (0..g).any(|i| (0..g).any(|j| nvlinks[i][j] != nvlinks[j][i])) {
            return Err(Error::invalid("NVLink matrix is not symmetric"));
        }
        if nvlinks.iter().flatten().all(|n| *n == 0) {
            self.nvlinks = Vec::new();
            self.device_of = Vec::new();
            return Ok(self);
        }
        self.device_of = self.local_index().iter().map(|l| (*l % g) as u32).collect();
        self.nvlinks = nvlinks;
        Ok(self)
    }

    /// The same job with each host's GPUs on the sockets `gpu_socket` gives (per GPU index;
    /// local rank `i` drives GPU `i`, wrapping). One socket leaves the context without any.
    pub fn with_sockets(mut self, gpu_socket: &[u32]) -> PlanContext {
        self.socket_of = Vec::new();
        if gpu_socket
            .iter()
            .all(|s| *s == gpu_socket.first().copied().unwrap_or(0))
        {
            return self;
        }
        self.socket_of = self
            .local_index()
            .iter()
            .map(|l| gpu_socket[*l % gpu_socket.len()])
            .collect();
        self
    }

    /// Each rank's index among its host's ranks.
    pub fn local_index(&self) -> Vec<usize> {
        let mut seen = vec![0usize; self.nhosts()];
        self.host_of
            .iter()
            .map(|h| {
                seen[*h as usize] += 1;
                seen[*h as usize] - 1
            })
            .collect()
    }

    /// Ranks of each staging domain: a host's ranks on one socket, hosts in order, sockets in
    /// order within a host (the hosts themselves without socket information).
    pub fn domains(&self) -> Vec<Vec<Rank>> {
        let mut keys: Vec<(u32, u32)> = Vec::new();
        let mut out: Vec<Vec<Rank>> = Vec::new();
        for r in 0..self.nranks as usize {
            let k = (self.host_of[r], self.socket_of.get(r).copied().unwrap_or(0));
            match keys.iter().position(|x| *x == k) {
                Some(i) => out[i].push(Rank(r as u32)),
                None => {
                    keys.push(k);
                    out.push(vec![Rank(r as u32)]);
                }
            }
        }
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|i| keys[*i]);
        order.into_iter().map(|i| out[i].clone()).collect()
    }

    /// NVLinks between the GPUs of ranks `a` and `b` (0 across hosts, for the same GPU, or
    /// when no fast links are known).
    pub fn nvlinks_between(&self, a: Rank, b: Rank) -> u8 {
        if self.nvlinks.is_empty() || self.host_of[a.idx()] != self.host_of[b.idx()] {
            return 0;
        }
        let (da, db) = (self.device_of[a.idx()], self.device_of[b.idx()]);
        if da == db {
            return 0;
        }
        self.nvlinks[da as usize][db as usize]
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
        if !self.nvlinks.is_empty() && self.device_of.len() != self.nranks as usize {
            return Err(Error::invalid(format!(
                "plan context: {} device entries for {} ranks",
                self.device_of.len(),
                self.nranks
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
            nvlinks: Vec::new(),
            device_of: Vec::new(),
            socket_of: Vec::new(),
        };
        assert!(bad.check().unwrap_err().to_string().contains("host 1"));
    }
}
