//! The settings of each layer, typed and resolved once by [`super::Config::from_vars`]. Each
//! layer gets its own part and nothing else: the executor its segment rule, the transports
//! their sockets and shared memory, the policy its algorithm rules. Every default lives in
//! the `Default` of its layer, and only there.

use crate::error::{Error, Result};
use std::time::Duration;

/// The job as a whole: time bounds, logging and what it writes for diagnosis.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettings {
    /// Without progress for this long an operation fails naming the peer
    /// (`ACSPEED_TIMEOUT_SECS`; also bounds rendezvous).
    pub timeout: Duration,
    /// Stall warning interval (`ACSPEED_STALL_WARN_SECS`; zero = off).
    pub stall_warn: Duration,
    /// `ACSPEED_DEBUG`.
    pub log: LogLevel,
    /// `ACSPEED_HOST_ID`: the host identity that groups ranks (`None`: the hostname).
    pub host_id: Option<String>,
    /// `ACSPEED_PLAN_DUMP_DIR`.
    pub plan_dump_dir: Option<String>,
    /// Chrome-trace file template (`ACSPEED_TIMELINE`).
    pub timeline: Option<String>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            timeout: Duration::from_secs(300),
            stall_warn: Duration::from_secs(60),
            log: LogLevel::Warn,
            host_id: None,
            plan_dump_dir: None,
            timeline: None,
        }
    }
}

/// How the executor cuts and pipelines a schedule, and the CPU-Reduce staging area's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    /// `ACSPEED_SEGMENT_BYTES`.
    pub segment_bytes: usize,
    /// `ACSPEED_PIPELINE_DEPTH`.
    pub pipeline_depth: usize,
    /// CPU-Reduce staging: slot rings (`ACSPEED_CPU_REDUCE_PIPELINES`) and reducer threads
    /// per rank (`ACSPEED_CPU_REDUCE_THREADS`).
    pub cpu_reduce_pipelines: usize,
    pub cpu_reduce_threads: usize,
    /// Collectives on CUDA tensors may run on the device executor (`ACSPEED_CUDA_PATH=device`);
    /// `false` stages every one through host memory (`staging`).
    pub cuda_device_path: bool,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            segment_bytes: crate::schedule::DEFAULT_SEGMENT_BYTES,
            pipeline_depth: crate::schedule::DEFAULT_PIPELINE_DEPTH,
            cpu_reduce_pipelines: 1,
            cpu_reduce_threads: 1,
            cuda_device_path: true,
        }
    }
}

/// What the policy decides with: a forced algorithm, per-size rules, the autotuner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    /// `ACSPEED_ALGO`, its name already checked.
    pub algo: AlgoChoice,
    /// Per-size algorithm rules (`ACSPEED_ALLREDUCE`, `ACSPEED_BROADCAST`, `ACSPEED_REDUCE`).
    pub allreduce_rules: Vec<SizeRule>,
    pub broadcast_rules: Vec<SizeRule>,
    pub reduce_rules: Vec<SizeRule>,
    /// Measured algorithm choice where `auto` decides (`ACSPEED_AUTOTUNE`).
    pub autotune: bool,
    /// The autotuner's cache file (`None`: a file per job shape under `cache_dir`).
    pub autotune_file: Option<String>,
    /// The user's cache directory for acspeed (`$XDG_CACHE_HOME/acspeed`, else
    /// `$HOME/.cache/acspeed`; `None`: the system's temporary directory).
    pub cache_dir: Option<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            algo: AlgoChoice::Auto,
            allreduce_rules: Vec::new(),
            broadcast_rules: Vec::new(),
            reduce_rules: Vec::new(),
            autotune: false,
            autotune_file: None,
            cache_dir: None,
        }
    }
}

/// Where the job's model comes from: the topology file, a CPU host model, the network rates
/// the simulator assumes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSettings {
    /// `ACSPEED_TOPO_FILE`.
    pub topo_file: Option<String>,
    /// `ACSPEED_TOPO_DUMP_FILE`.
    pub topo_dump_file: Option<String>,
    /// `ACSPEED_HOST_MODEL`: a CPU host model file for the selector.
    pub host_model: Option<String>,
    /// `ACSPEED_NET_GBPS` and `ACSPEED_FLOW_GBPS`: the network the selector models.
    pub net_gbps: Option<f64>,
    pub flow_gbps: Option<f64>,
}

/// How ranks reach each other: shared memory, TCP sockets, RDMA, and the launchers' placement.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportSettings {
    /// Shared memory between same-host ranks (`ACSPEED_SHM`).
    pub shm: bool,
    /// `ACSPEED_BIND`: the local launchers give each rank a core of its own.
    pub bind: bool,
    /// `ACSPEED_SHM_MODE`.
    pub shm_mode: ShmMode,
    /// Collective bytes from which large messages take the large-message path
    /// (`ACSPEED_SHM_CMA_MIN`).
    pub shm_cma_min: usize,
    /// TCP sockets per remote peer (`ACSPEED_NSTREAMS`; `None` = automatic).
    pub nstreams: Option<u32>,
    /// `ACSPEED_SOCKET_IFNAME`.
    pub ifname: Option<IfaceFilter>,
    /// TCP socket buffer size (`ACSPEED_SOCKET_BUFFER`; `None`: kernel autotuning).
    pub socket_buffer: Option<usize>,
    /// `ACSPEED_RDMA`, `ACSPEED_RDMA_PROVIDER`.
    pub rdma: RdmaChoice,
    pub rdma_provider: Option<String>,
    /// `ACSPEED_RDMA_CQ_DATA_BYTES`: cap on the CQ data the RDMA fingerprint uses.
    pub rdma_cq_data: Option<usize>,
}

impl TransportSettings {
    /// Sockets per remote peer when nobody asked: one TCP flow rarely fills a cloud NIC
    /// (per-flow caps, single-core softirq), four usually do; on one host a single loopback
    /// flow is enough.
    pub const AUTO_STREAMS_REMOTE: u32 = 4;

    /// TCP sockets per remote peer as the transport opens them.
    pub fn remote_streams(&self) -> u32 {
        self.nstreams.unwrap_or(Self::AUTO_STREAMS_REMOTE)
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            shm: true,
            bind: true,
            shm_mode: ShmMode::Auto,
            shm_cma_min: 16 << 20,
            nstreams: None,
            ifname: None,
            socket_buffer: None,
            rdma: RdmaChoice::Auto,
            rdma_provider: None,
            rdma_cq_data: None,
        }
    }
}

/// One range of a per-size algorithm string: `algo` for sizes in `lo..hi` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeRule {
    pub algo: String,
    pub lo: usize,
    pub hi: usize,
}

/// Parses `tree:0-16K;ring:16K-1M;hybrid:1M-max` (algorithm names are checked by the
/// communicator, which knows them).
pub fn parse_size_rules(name: &str, v: &str) -> Result<Vec<SizeRule>> {
    let mut rules = Vec::new();
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let err = |why: &str| {
            Error::invalid(format!(
                "{name}='{v}': '{part}' {why} (expected entries like tree:0-16K;ring:16K-max)"
            ))
        };
        let (algo, range) = part
            .rsplit_once(':')
            .ok_or_else(|| err("has no ':' between algorithm and range"))?;
        let (lo, hi) = range
            .split_once('-')
            .ok_or_else(|| err("has no '-' in its range"))?;
        let lo = super::parse_size(lo.trim()).ok_or_else(|| err("has a bad lower bound"))?;
        let hi = match hi.trim() {
            "max" => usize::MAX,
            h => super::parse_size(h).ok_or_else(|| err("has a bad upper bound"))?,
        };
        if lo >= hi {
            return Err(err("has an empty range"));
        }
        if algo.trim().is_empty() {
            return Err(err("names no algorithm"));
        }
        let algo = crate::plan::canonical_algorithm(name, algo)?;
        rules.push(SizeRule {
            algo: algo.to_string(),
            lo,
            hi,
        });
    }
    if rules.is_empty() {
        return Err(Error::invalid(format!("{name}='{v}': no entries")));
    }
    Ok(rules)
}

/// Log verbosity (`ACSPEED_DEBUG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Warn,
    Info,
    Trace,
}

/// Which algorithm to run (`ACSPEED_ALGO`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlgoChoice {
    Auto,
    Named(String),
}

/// Interface selection in NCCL's syntax (`ACSPEED_SOCKET_IFNAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfaceFilter {
    Prefix(Vec<String>),
    Exact(Vec<String>),
    Exclude(Vec<String>),
}

impl IfaceFilter {
    pub fn parse(s: &str) -> IfaceFilter {
        let list = |t: &str| {
            t.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        };
        let t = s.trim();
        if let Some(r) = t.strip_prefix('^') {
            IfaceFilter::Exclude(list(r))
        } else if let Some(r) = t.strip_prefix('=') {
            IfaceFilter::Exact(list(r))
        } else {
            IfaceFilter::Prefix(list(t))
        }
    }

    pub fn matches(&self, ifname: &str) -> bool {
        match self {
            IfaceFilter::Prefix(p) => p.iter().any(|x| ifname.starts_with(x.as_str())),
            IfaceFilter::Exact(p) => p.iter().any(|x| ifname == x),
            IfaceFilter::Exclude(p) => !p.iter().any(|x| ifname.starts_with(x.as_str())),
        }
    }
}

/// RDMA use (`ACSPEED_RDMA`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdmaChoice {
    Auto,
    On,
    Off,
}

/// How large messages cross shared memory (`ACSPEED_SHM_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmMode {
    /// The slot rings; in collectives of at least `ACSPEED_SHM_CMA_MIN` bytes the sender
    /// fills slots with streaming (non-temporal) stores.
    Auto,
    /// Cross-memory attach for large messages; init fails if a local peer cannot be read.
    Cma,
    /// Always the slot rings with ordinary stores (for comparison).
    Copy,
}
