//! The cluster model the simulator runs plans over: hosts (CPU cores and their copy/reduce
//! rates, or GPUs and the links between them from a topology description), and the network
//! between hosts (NIC rate, per-flow cap, streams per peer, latency).
//!
//! Rates are GB/s (10^9 bytes per second = 1000 bytes per microsecond), latencies
//! microseconds. GPU link rates and per-step costs come from one place,
//! [`crate::topology::gpus`].

use crate::error::{Error, Result};
use crate::topology::{PathClass, TopoDescription, TopoModel};
use serde::{Deserialize, Serialize};

/// Bytes per microsecond in one GB/s.
pub const GBPS: f64 = 1000.0;

/// How the ranks of one host move and reduce data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HostKind {
    /// Host-memory buffers: every intra-host message is a copy (into a shared slot, or by
    /// cross-memory attach) and every reduction runs on a core.
    Cpu,
    /// Device buffers: ranks are GPUs; messages between them use the path of the topology
    /// (NVLink pairs, PCIe uplinks, the inter-socket link), reductions run on the device.
    Gpu {
        model: TopoModel,
        /// Each GPU's socket (`TopoDescription::gpu_sockets`).
        #[serde(default)]
        sockets: Vec<u32>,
    },
}

/// One host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostModel {
    pub kind: HostKind,
    /// Cores available to the job's ranks (CPU work of all local ranks shares them).
    pub cores: f64,
    /// One core's copy rate, GB/s.
    pub copy_gbps: f64,
    /// One core's reduce rate (bytes of one input per second), GB/s.
    pub reduce_gbps: f64,
    /// One intra-host message's fixed cost, microseconds.
    pub latency_us: f64,
    /// One stream between two local ranks through the shared-memory transport, end to end
    /// (sender's copy in, receiver's copy out, waits included), GB/s: the slot path, and the
    /// single-copy (cross-memory attach) path taken in collectives of `cma_min_bytes` or more.
    #[serde(default)]
    pub shm_gbps: f64,
    #[serde(default)]
    pub shm_cma_gbps: f64,
    #[serde(default)]
    pub cma_min_bytes: usize,
    /// Last-level cache, bytes (0: unknown, so every collective streams through DRAM).
    #[serde(default)]
    pub llc_bytes: usize,
    /// One core's copy and reduce rates on data resident in that cache, GB/s (0: unmeasured).
    #[serde(default)]
    pub copy_cache_gbps: f64,
    #[serde(default)]
    pub reduce_cache_gbps: f64,
    /// A two-member CPU-Reduce allreduce through the host staging area as one member sees
    /// it (bytes / time), below `stage_stream_from` bytes and from there (where the area is
    /// filled with streaming stores), GB/s; 0: unmeasured, and a host reduce is costed from
    /// the copy and reduce rates. Calibrated like `shm_gbps`: the two-member case is
    /// measured, more members are predicted.
    #[serde(default)]
    pub stage_gbps: f64,
    #[serde(default)]
    pub stage_stream_gbps: f64,
    #[serde(default)]
    pub stage_stream_from: usize,
}

impl HostModel {
    /// A CPU host with these measured rates; a shared-memory stream at `copy_gbps` (the two
    /// copies of a message run on two cores at once) until [`HostModel::with_shm`] sets
    /// measured rates.
    pub fn cpu(cores: f64, copy_gbps: f64, reduce_gbps: f64, latency_us: f64) -> HostModel {
        HostModel {
            kind: HostKind::Cpu,
            cores,
            copy_gbps,
            reduce_gbps,
            latency_us,
            shm_gbps: copy_gbps,
            shm_cma_gbps: copy_gbps,
            cma_min_bytes: usize::MAX,
            llc_bytes: 0,
            copy_cache_gbps: 0.0,
            reduce_cache_gbps: 0.0,
            stage_gbps: 0.0,
            stage_stream_gbps: 0.0,
            stage_stream_from: usize::MAX,
        }
    }

    /// Measured rates on cache-resident data and the cache's size (see the fields).
    pub fn with_cache(self, llc_bytes: usize, copy_gbps: f64, reduce_gbps: f64) -> HostModel {
        HostModel {
            llc_bytes,
            copy_cache_gbps: copy_gbps,
            reduce_cache_gbps: reduce_gbps,
            ..self
        }
    }

    /// The rates a collective of `coll_bytes` per rank meets with `local` ranks on this
    /// host: cache rates while every local rank's buffer, its scratch and its slots (about
    /// 3 x `coll_bytes` each) fit in the last-level cache, else the DRAM rates.
    pub fn at_size(&self, coll_bytes: usize, local: usize) -> HostModel {
        let fits = self.llc_bytes > 0
            && coll_bytes.saturating_mul(3).saturating_mul(local.max(1)) <= self.llc_bytes;
        if fits && self.copy_cache_gbps > 0.0 && self.reduce_cache_gbps > 0.0 {
            HostModel {
                copy_gbps: self.copy_cache_gbps,
                reduce_gbps: self.reduce_cache_gbps,
                ..self.clone()
            }
        } else {
            self.clone()
        }
    }

    /// Measured shared-memory stream rates (see the fields).
    pub fn with_shm(self, shm_gbps: f64, shm_cma_gbps: f64, cma_min_bytes: usize) -> HostModel {
        HostModel {
            shm_gbps,
            shm_cma_gbps,
            cma_min_bytes,
            ..self
        }
    }

    /// Measured CPU-Reduce rates (see the fields).
    pub fn with_stage(
        self,
        stage_gbps: f64,
        stage_stream_gbps: f64,
        stream_from: usize,
    ) -> HostModel {
        HostModel {
            stage_gbps,
            stage_stream_gbps,
            stage_stream_from: stream_from,
            ..self
        }
    }

    /// The measured CPU-Reduce rate of a host reduce of `bytes` (0: unmeasured).
    pub fn stage_rate(&self, bytes: usize) -> f64 {
        if bytes >= self.stage_stream_from {
            self.stage_stream_gbps
        } else {
            self.stage_gbps
        }
    }

    /// One shared-memory stream's rate in a collective of `coll_bytes`.
    pub fn shm_rate(&self, coll_bytes: usize) -> f64 {
        if coll_bytes >= self.cma_min_bytes {
            self.shm_cma_gbps
        } else {
            self.shm_gbps
        }
    }

    /// A GPU host from a topology description (ranks = its GPUs, in index order).
    pub fn gpu(d: &TopoDescription) -> Result<HostModel> {
        if d.gpus.is_empty() {
            return Err(Error::invalid(
                "topology has no GPU: use a CPU host model (--here) for CPU-only machines",
            ));
        }
        let model = TopoModel::from_description(d)?;
        // A message's fixed cost is NCCL's per-step cost on the host's fastest kind of link.
        let nvlink = d
            .paths
            .iter()
            .flatten()
            .any(|c| matches!(c, PathClass::NV(_)));
        let step_us = if nvlink {
            crate::topology::gpus::RING_STEP_NVLINK_US
        } else {
            crate::topology::gpus::RING_STEP_PCIE_US
        };
        Ok(HostModel {
            kind: HostKind::Gpu {
                model,
                sockets: d.gpu_sockets(),
            },
            cores: d.cores.max(1) as f64,
            copy_gbps: 10.0,
            reduce_gbps: 8.0,
            latency_us: step_us,
            shm_gbps: 5.0,
            shm_cma_gbps: 5.0,
            cma_min_bytes: usize::MAX,
            llc_bytes: 0,
            copy_cache_gbps: 0.0,
            reduce_cache_gbps: 0.0,
            stage_gbps: 0.0,
            stage_stream_gbps: 0.0,
            stage_stream_from: usize::MAX,
        })
    }

    /// NVLink count between each pair of this host's GPUs (empty for a CPU host).
    pub fn nvlinks(&self) -> Vec<Vec<u8>> {
        match &self.kind {
            HostKind::Cpu => Vec::new(),
            HostKind::Gpu { model, .. } => {
                let gpus = self.max_ranks().unwrap_or(0);
                (0..gpus)
                    .map(|i| {
                        (0..gpus)
                            .map(|j| match model.classes[i][j] {
                                PathClass::NV(n) => n,
                                _ => 0,
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The socket of each of this host's GPUs (empty for a CPU host).
    pub fn gpu_sockets(&self) -> Vec<u32> {
        match &self.kind {
            HostKind::Cpu => Vec::new(),
            HostKind::Gpu { model, sockets } if sockets.is_empty() => {
                let g = self.max_ranks().unwrap_or(0);
                crate::topology::sockets_from(g, |i, j| model.classes[i][j] == PathClass::SYS)
            }
            HostKind::Gpu { sockets, .. } => sockets.clone(),
        }
    }

    /// Whether the GPUs sit behind an NVSwitch: three or more GPUs, every pair joined by the
    /// same number of NVLinks (what `nvidia-smi topo -m` prints for a switch fabric; direct
    /// meshes such as DGX-1 leave some pairs without NVLink).
    pub fn nvswitch(&self) -> bool {
        let nv = self.nvlinks();
        let g = nv.len();
        g >= 3 && (0..g).all(|i| (0..g).all(|j| i == j || (nv[i][j] > 0 && nv[i][j] == nv[0][1])))
    }

    /// Ranks this host can hold (GPUs for a GPU host; unbounded for CPU hosts).
    pub fn max_ranks(&self) -> Option<usize> {
        match &self.kind {
            HostKind::Cpu => None,
            HostKind::Gpu { model, .. } => Some(
                model
                    .devices
                    .iter()
                    .filter(|d| d.starts_with("GPU"))
                    .count(),
            ),
        }
    }
}

/// The network between hosts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetModel {
    /// Each host's NIC rate, Gbit/s, per direction.
    pub nic_gbit: f64,
    /// Per-flow cap (one TCP stream), Gbit/s; `None`: uncapped.
    pub flow_gbit: Option<f64>,
    /// Sockets per peer a message is striped over.
    pub streams: u32,
    /// One message's fixed cost, microseconds.
    pub latency_us: f64,
}

/// Everything the simulator knows about where ranks run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Host of each rank.
    pub host_of: Vec<u32>,
    /// Each rank's index among its host's ranks (its GPU on a GPU host).
    pub local_of: Vec<u32>,
    pub hosts: Vec<HostModel>,
    pub net: NetModel,
}

impl Cluster {
    /// This cluster as a collective of `coll_bytes` per rank meets it (cache-resident or
    /// not, host by host: [`HostModel::at_size`]).
    pub fn at_size(&self, coll_bytes: usize) -> Cluster {
        let shape = self.shape();
        Cluster {
            hosts: self
                .hosts
                .iter()
                .zip(&shape)
                .map(|(h, m)| h.at_size(coll_bytes, *m as usize))
                .collect(),
            ..self.clone()
        }
    }

    /// `hosts.len()` hosts, each with `ranks_per_host[h]` ranks numbered host by host.
    pub fn new(hosts: Vec<HostModel>, ranks_per_host: &[u32], net: NetModel) -> Result<Cluster> {
        if hosts.len() != ranks_per_host.len() || hosts.is_empty() {
            return Err(Error::invalid(format!(
                "cluster: {} host models for {} host sizes",
                hosts.len(),
                ranks_per_host.len()
            )));
        }
        let mut host_of = Vec::new();
        let mut local_of = Vec::new();
        for (h, (&m, model)) in ranks_per_host.iter().zip(&hosts).enumerate() {
            if m == 0 {
                return Err(Error::invalid(format!("cluster: host {h} has no rank")));
            }
            if let Some(max) = model.max_ranks() {
                if m as usize > max {
                    return Err(Error::invalid(format!(
                        "cluster: host {h} has {max} GPUs but {m} ranks were asked for"
                    )));
                }
            }
            for l in 0..m {
                host_of.push(h as u32);
                local_of.push(l);
            }
        }
        if net.streams == 0 || net.nic_gbit <= 0.0 || net.flow_gbit.is_some_and(|f| f <= 0.0) {
            return Err(Error::invalid(
                "cluster: network rates and stream count must be positive",
            ));
        }
        Ok(Cluster {
            host_of,
            local_of,
            hosts,
            net,
        })
    }

    pub fn nranks(&self) -> usize {
        self.host_of.len()
    }

    /// Ranks per host.
    pub fn shape(&self) -> Vec<u32> {
        let mut v = vec![0; self.hosts.len()];
        for h in &self.host_of {
            v[*h as usize] += 1;
        }
        v
    }

    /// Bandwidth (GB/s) and path class between two GPUs of a GPU host.
    pub(crate) fn gpu_path(model: &TopoModel, a: u32, b: u32) -> (f64, PathClass) {
        let (a, b) = (a as usize, b as usize);
        (model.bandwidth[a][b], model.classes[a][b])
    }
}
