//! What every rank's plans and choices depend on, agreed once at rendezvous: each rank
//! publishes its [`JobFacts`] and compares the others' field by field, so a job whose ranks
//! were started with different settings fails at init with the setting and the rank named,
//! instead of exchanging data under different plans.

use acspeed_core::config::{AlgoChoice, SizeRule};
use acspeed_core::sim::HostModel;
use acspeed_core::topology::TopoDescription;
use acspeed_core::{Config, Error, PlanContext, Result};
use serde::{Deserialize, Serialize};

/// The settings and topology facts a rank's plans and algorithm choices depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFacts {
    /// `ACSPEED_ALGO` (`auto` or a canonical algorithm name).
    pub algo: String,
    pub segment_bytes: usize,
    /// The size rules, as `algo:lo-hi` entries.
    pub allreduce_rules: String,
    pub broadcast_rules: String,
    pub reduce_rules: String,
    pub cpu_reduce_pipelines: usize,
    pub shm: bool,
    pub autotune: bool,
    /// `ACSPEED_RDMA_CQ_DATA_BYTES` (`None`: the provider's).
    pub rdma_cq_data: Option<usize>,
    /// NVLink counts between the GPUs of `ACSPEED_TOPO_FILE` (empty without one).
    pub nvlinks: Vec<Vec<u8>>,
    pub gpu_sockets: Vec<u32>,
    /// A hash of what the selector models from the topology file (its paths, NIC speeds,
    /// GPU and core counts), hex; empty without a file.
    pub topology: String,
    /// A hash of `ACSPEED_HOST_MODEL`'s contents (not its path), hex; empty without one.
    pub host_model: String,
    /// The network the selector models (`ACSPEED_NET_GBPS`, `ACSPEED_FLOW_GBPS`).
    pub net_gbps: Option<f64>,
    pub flow_gbps: Option<f64>,
}

/// Each field's name as users set it, for errors.
const LABELS: [(&str, &str); 15] = [
    ("algo", "ACSPEED_ALGO"),
    ("segment_bytes", "ACSPEED_SEGMENT_BYTES"),
    ("allreduce_rules", "ACSPEED_ALLREDUCE"),
    ("broadcast_rules", "ACSPEED_BROADCAST"),
    ("reduce_rules", "ACSPEED_REDUCE"),
    ("cpu_reduce_pipelines", "ACSPEED_CPU_REDUCE_PIPELINES"),
    ("shm", "ACSPEED_SHM"),
    ("autotune", "ACSPEED_AUTOTUNE"),
    ("rdma_cq_data", "ACSPEED_RDMA_CQ_DATA_BYTES"),
    ("nvlinks", "NVLinks(ACSPEED_TOPO_FILE)"),
    ("gpu_sockets", "GPU sockets(ACSPEED_TOPO_FILE)"),
    ("topology", "topology file fingerprint"),
    ("host_model", "host-model"),
    ("net_gbps", "ACSPEED_NET_GBPS"),
    ("flow_gbps", "ACSPEED_FLOW_GBPS"),
];

impl JobFacts {
    /// This rank's facts under `cfg`, with `topo` and `host_model` as [`crate::model::discover`]
    /// read them.
    pub fn of(
        cfg: &Config,
        topo: Option<&TopoDescription>,
        host_model: Option<&HostModel>,
    ) -> Result<JobFacts> {
        let rules = |r: &[SizeRule]| {
            r.iter()
                .map(|x| format!("{}:{}-{}", x.algo, x.lo, x.hi))
                .collect::<Vec<_>>()
                .join(";")
        };
        let (nvlinks, gpu_sockets) = match topo {
            Some(d) => (d.nvlink_matrix(), d.gpu_sockets()),
            None => (Vec::new(), Vec::new()),
        };
        let topology = match topo {
            Some(d) => format!(
                "{:016x}",
                fnv64(&format!(
                    "{:?} {:?} {:?} {}",
                    d.paths,
                    d.nics.iter().map(|n| n.speed_mbps).collect::<Vec<_>>(),
                    d.gpus.len(),
                    d.cores
                ))
            ),
            None => String::new(),
        };
        // The model's contents, not its path: ranks that would predict differently fail.
        let host_model = match host_model {
            Some(m) => format!(
                "{:016x}",
                fnv64(&serde_json::to_string(m).unwrap_or_default())
            ),
            None => String::new(),
        };
        Ok(JobFacts {
            algo: match &cfg.policy.algo {
                AlgoChoice::Auto => "auto".into(),
                AlgoChoice::Named(n) => n.clone(),
            },
            segment_bytes: cfg.exec.segment_bytes,
            allreduce_rules: rules(&cfg.policy.allreduce_rules),
            broadcast_rules: rules(&cfg.policy.broadcast_rules),
            reduce_rules: rules(&cfg.policy.reduce_rules),
            cpu_reduce_pipelines: cfg.exec.cpu_reduce_pipelines,
            shm: cfg.transport.shm,
            autotune: cfg.policy.autotune,
            rdma_cq_data: cfg.transport.rdma_cq_data,
            nvlinks,
            gpu_sockets,
            topology,
            host_model,
            net_gbps: cfg.model.net_gbps,
            flow_gbps: cfg.model.flow_gbps,
        })
    }

    /// What the autotuner's choices depend on besides the measurements: the agreed job facts,
    /// the host map and the transport settings that change how algorithms perform. Its hash
    /// names the default cache file.
    pub fn tune_key(&self, ctx: &PlanContext, cfg: &Config) -> String {
        format!(
            "acspeed {} facts={} hosts={:?} shm_mode={:?} cma_min={} nstreams={:?} rdma={:?} depth={} cpu_reduce_threads={}",
            env!("CARGO_PKG_VERSION"),
            self.to_json(),
            ctx.host_of,
            cfg.transport.shm_mode,
            cfg.transport.shm_cma_min,
            cfg.transport.nstreams,
            cfg.transport.rdma,
            cfg.exec.pipeline_depth,
            cfg.exec.cpu_reduce_threads
        )
    }

    /// What a rank publishes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("facts always serialise")
    }

    /// A rank's published facts; `rank` names it in the error.
    pub fn from_json(rank: u32, s: &str) -> Result<JobFacts> {
        serde_json::from_str(s).map_err(|e| Error::Remote {
            rank,
            detail: format!("published job facts this version cannot read ({e}): is every rank the same acspeed?"),
        })
    }

    /// The fields that differ, as (setting, this value, the other's value), in field order.
    pub fn differences(&self, other: &JobFacts) -> Vec<(&'static str, String, String)> {
        let (a, b) = (
            serde_json::to_value(self).expect("facts serialise"),
            serde_json::to_value(other).expect("facts serialise"),
        );
        LABELS
            .iter()
            .filter(|(f, _)| a[f] != b[f])
            .map(|(f, label)| (*label, show(&a[f]), show(&b[f])))
            .collect()
    }

    /// Checks `theirs` (published by rank `q`) against these facts of rank `me`: the error
    /// names every setting that differs, both values and both ranks.
    pub fn check(&self, me: u32, q: u32, theirs: &JobFacts) -> Result<()> {
        let diff = self.differences(theirs);
        if diff.is_empty() {
            return Ok(());
        }
        let each: Vec<String> = diff
            .iter()
            .map(|(what, mine, other)| {
                format!("{what}={other} on rank {q} but {what}={mine} on rank {me}")
            })
            .collect();
        Err(Error::Mismatch {
            peer: q,
            detail: format!(
                "{}: the settings plans and algorithm choices depend on must be the same on every rank",
                each.join("; ")
            ),
        })
    }
}

/// FNV-1a: a stable hash for names and fingerprints (std's hasher may change between
/// releases).
pub(crate) fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A value as a user would write it (strings unquoted; `none` for unset).
fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) if s.is_empty() => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting_and_both_values() {
        let cfg = Config::default();
        let a = JobFacts::of(&cfg, None, None).unwrap();
        let b = JobFacts::of(
            &Config {
                exec: acspeed_core::config::ExecSettings {
                    segment_bytes: 1 << 20,
                    ..cfg.exec.clone()
                },
                transport: acspeed_core::config::TransportSettings {
                    shm: false,
                    ..cfg.transport.clone()
                },
                ..cfg.clone()
            },
            None,
            None,
        )
        .unwrap();
        assert!(a.check(0, 1, &a.clone()).is_ok());
        let e = a.check(0, 1, &b).unwrap_err().to_string();
        assert!(
            e.contains("ACSPEED_SEGMENT_BYTES=1048576 on rank 1 but ACSPEED_SEGMENT_BYTES=262144 on rank 0"),
            "{e}"
        );
        assert!(
            e.contains("ACSPEED_SHM=0 on rank 1 but ACSPEED_SHM=1 on rank 0"),
            "{e}"
        );
        assert!(!e.contains("ACSPEED_ALGO"), "only what differs: {e}");
        let round = JobFacts::from_json(1, &b.to_json()).unwrap();
        assert_eq!(round, b);
        let e = JobFacts::from_json(3, "{}").unwrap_err().to_string();
        assert!(e.contains("rank 3") && e.contains("same acspeed"), "{e}");
        // Every field has a label, so no difference goes unnamed.
        let v = serde_json::to_value(&a).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(LABELS.iter().any(|(f, _)| f == k), "{k} has no label");
        }
    }
}
