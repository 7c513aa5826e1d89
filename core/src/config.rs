//! All configuration, parsed in one place from `ACSPEED_*` and torchrun's variables.
//!
//! Two stages, as ripgrep does it: [`Config::from_vars`] only validates what the user wrote
//! (no syscalls), the integrator then resolves it against the machine. Nothing else in acspeed
//! reads the environment, so every knob is listed in [`VARS`] and can be varied per test.

use crate::error::{Error, Result};
use std::time::Duration;

/// Every variable acspeed reads: (name, default, meaning). The README table is generated from
/// the same list (`acspeed-bench --list-env`).
pub const VARS: &[(&str, &str, &str)] = &[
    ("ACSPEED_TIMEOUT_SECS", "300", "Seconds without progress before an operation fails with a timeout naming the peer (also bounds rendezvous)."),
    ("ACSPEED_STALL_WARN_SECS", "60", "A collective that waits this long logs (then again every as many seconds) which rank it is waiting for, in which call (number, kind, size, algorithm), and rank 0's coordinator reports which ranks have not joined it; 0 = never (and no control plane). Independent of the timeout."),
    ("ACSPEED_SEGMENT_BYTES", "256K", "Pipeline segment size: each chunk moves in segments of this many bytes."),
    ("ACSPEED_PIPELINE_DEPTH", "4", "Segments in flight per receive (scratch slots for recv-reduce)."),
    ("ACSPEED_ALGO", "auto", "auto, ring, tree, ntree, hybrid (= hybrid:ring), hybrid:tree, hybrid:butterfly, hybrid:ps or cpu_reduce (a forced algorithm runs the collectives it serves; the others run ring)."),
    ("ACSPEED_CPU_REDUCE_PIPELINES", "1", "cpu_reduce: independent slot rings in the host staging area, each driven by its own thread per rank (more overlap on hosts with cores to spare)."),
    ("ACSPEED_CPU_REDUCE_THREADS", "1", "cpu_reduce: threads each rank reduces its part of a staging slot with (a rayon pool)."),
    ("ACSPEED_ALLREDUCE", "(off)", "Algorithm per size range for allreduce, oneCCL style: `tree:0-16K;ring:16K-1M;hybrid:1M-max` (upper bounds exclusive). Overrides ACSPEED_ALGO and auto where a range matches."),
    ("ACSPEED_BROADCAST", "(off)", "Algorithm per size range for broadcast (ring or tree), as ACSPEED_ALLREDUCE."),
    ("ACSPEED_REDUCE", "(off)", "Algorithm per size range for reduce (ring or tree), as ACSPEED_ALLREDUCE."),
    ("ACSPEED_AUTOTUNE", "0", "1 = choose by measurement where auto decides: the first calls of each collective and power-of-two size class try every candidate algorithm 3 times, the ranks agree on the fastest (median of the slowest rank's times) and later jobs of the same shape read the choice from ACSPEED_AUTOTUNE_FILE (checked by every rank before use). Same value on every rank."),
    ("ACSPEED_AUTOTUNE_FILE", "~/.cache/acspeed/autotune-<key>.json", "Where ACSPEED_AUTOTUNE keeps its choices; the default name hashes the job's shape and settings, so a different job never reads another's."),
    ("ACSPEED_DEBUG", "WARN", "Log level: WARN, INFO (prints the transport and algorithm chosen at init, and at the end per-collective timing statistics) or TRACE (also every call)."),
    ("ACSPEED_SHM", "1", "Use shared memory between ranks of the same host (0 forces TCP)."),
    ("ACSPEED_SHM_CMA_MIN", "16M", "Collective size from which shared memory takes its large-message path: streaming stores into the slots (auto) or cross-memory attach for messages of 64 KiB or more (cma). Smaller collectives stay in cache through the slot rings, which is faster there."),
    ("ACSPEED_SHM_MODE", "auto", "Large shared-memory messages: auto = slot rings filled with streaming stores, cma = the receiver reads the sender's buffer directly (process_vm_readv, one copy), copy = slot rings with ordinary stores."),
    ("ACSPEED_NSTREAMS", "auto", "TCP sockets per remote peer; auto = 4 across hosts (one flow rarely fills a cloud link), 1 on the same host."),
    ("ACSPEED_RDMA", "auto", "RDMA through libfabric (builds with the rdma feature): auto = hardware providers only, 1 = any provider (also tcp;ofi_rxm), 0 = off."),
    ("ACSPEED_BIND", "1", "The local launchers (acspeed-bench -n, acspeed linearity --workers): one core per rank when the ranks talk over shared memory and there is a core each; 0 = leave placement to the scheduler."),
    ("ACSPEED_RDMA_CQ_DATA_BYTES", "(provider's)", "RDMA: bytes of remote CQ data (1-8) each message's header fingerprint uses, at most what the provider offers (verbs and EFA: 4). The same on every rank."),
    ("ACSPEED_RDMA_PROVIDER", "(libfabric's choice)", "libfabric provider for RDMA, e.g. verbs;ofi_rxm, efa, tcp;ofi_rxm."),
    ("ACSPEED_SOCKET_BUFFER", "(kernel autotuning)", "SO_SNDBUF/SO_RCVBUF for TCP sockets, e.g. 4M for long fat links; unset leaves Linux's autotuning on."),
    ("ACSPEED_SOCKET_IFNAME", "(route to master)", "Interface to listen on, NCCL syntax: prefix `eth`, exact `=eth0`, exclude `^docker,lo`."),
    ("ACSPEED_HOST_ID", "hostname", "Overrides the host identity used to group ranks that share a machine."),
    ("ACSPEED_TOPO_FILE", "(probe)", "Load the topology from this JSON description instead of probing (VMs and containers that hide the real layout); its NVLinks are what ntree plans on."),
    ("ACSPEED_HOST_MODEL", "(off)", "CPU hosts: a host model (`acspeed simulate --here --json > F`, measured once per machine type) that lets auto choose by simulation, as a GPU ACSPEED_TOPO_FILE does; the same file on every rank."),
    ("ACSPEED_NET_GBPS", "(the NIC's, else 25)", "Network rate per host, Gbit/s, for the selector's model (ACSPEED_HOST_MODEL or a topology file without NIC speeds)."),
    ("ACSPEED_FLOW_GBPS", "(none)", "Per-flow cap of the network (cloud links, netsim), Gbit/s, for the selector's model."),
    ("ACSPEED_TOPO_DUMP_FILE", "(off)", "Write the probed topology description to this JSON file."),
    ("ACSPEED_TIMELINE", "(off)", "Write every collective as a Chrome-trace event (Perfetto, chrome://tracing) to this JSON file; ranks of a multi-rank job write path-r<rank>.json, a rank's further communicators (torch subgroups) path-r<rank>-<k>.json."),
    ("ACSPEED_PLAN_DUMP_DIR", "(off)", "Write every plan this rank generates as JSON into this directory."),
    ("MASTER_ADDR / MASTER_PORT", "127.0.0.1 / -", "Where rank 0 hosts the rendezvous store (torchrun's convention)."),
    ("RANK / WORLD_SIZE", "-", "This process's rank and the number of ranks (torchrun's convention)."),
    ("LOCAL_RANK / LOCAL_WORLD_SIZE", "RANK / WORLD_SIZE", "Rank within the host and ranks on the host (torchrun's convention)."),
];

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
        let lo = parse_size(lo.trim()).ok_or_else(|| err("has a bad lower bound"))?;
        let hi = match hi.trim() {
            "max" => usize::MAX,
            h => parse_size(h).ok_or_else(|| err("has a bad upper bound"))?,
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

/// Library configuration (everything except the launcher's variables).
#[derive(Clone, Debug)]
pub struct Config {
    pub timeout: Duration,
    /// Stall warning interval (`ACSPEED_STALL_WARN_SECS`; zero = off).
    pub stall_warn: Duration,
    pub segment_bytes: usize,
    pub pipeline_depth: usize,
    /// CPU-Reduce staging: slot rings (`ACSPEED_CPU_REDUCE_PIPELINES`) and reducer threads
    /// per rank (`ACSPEED_CPU_REDUCE_THREADS`).
    pub cpu_reduce_pipelines: usize,
    pub cpu_reduce_threads: usize,
    pub algo: AlgoChoice,
    /// Per-size algorithm rules (`ACSPEED_ALLREDUCE`, `ACSPEED_BROADCAST`, `ACSPEED_REDUCE`).
    pub allreduce_rules: Vec<SizeRule>,
    pub broadcast_rules: Vec<SizeRule>,
    pub reduce_rules: Vec<SizeRule>,
    pub log: LogLevel,
    pub host_id: Option<String>,
    pub plan_dump_dir: Option<String>,
    /// Chrome-trace file template (`ACSPEED_TIMELINE`).
    pub timeline: Option<String>,
    /// Shared memory between same-host ranks.
    pub shm: bool,
    /// `ACSPEED_BIND`: the local launchers give each rank a core of its own.
    pub bind: bool,
    pub shm_mode: ShmMode,
    /// Collective bytes from which large messages use cross-memory attach.
    pub shm_cma_min: usize,
    /// TCP sockets per remote peer (`None` = automatic).
    pub nstreams: Option<u32>,
    pub ifname: Option<IfaceFilter>,
    pub topo_file: Option<String>,
    /// `ACSPEED_HOST_MODEL`: a CPU host model file for the selector.
    pub host_model: Option<String>,
    /// `ACSPEED_NET_GBPS` and `ACSPEED_FLOW_GBPS`: the network the selector models.
    pub net_gbps: Option<f64>,
    pub flow_gbps: Option<f64>,
    pub topo_dump_file: Option<String>,
    pub rdma: RdmaChoice,
    pub rdma_provider: Option<String>,
    /// `ACSPEED_RDMA_CQ_DATA_BYTES`: cap on the CQ data the RDMA fingerprint uses.
    pub rdma_cq_data: Option<usize>,
    /// TCP socket buffer size (`None`: kernel autotuning).
    pub socket_buffer: Option<usize>,
    /// Measured algorithm choice where `auto` decides (`ACSPEED_AUTOTUNE`).
    pub autotune: bool,
    /// The autotuner's cache file (`None`: a file per job shape under `cache_dir`).
    pub autotune_file: Option<String>,
    /// The user's cache directory for acspeed (`$XDG_CACHE_HOME/acspeed`, else
    /// `$HOME/.cache/acspeed`; `None`: the system's temporary directory).
    pub cache_dir: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(300),
            stall_warn: Duration::from_secs(60),
            segment_bytes: crate::schedule::DEFAULT_SEGMENT_BYTES,
            pipeline_depth: crate::schedule::DEFAULT_PIPELINE_DEPTH,
            cpu_reduce_pipelines: 1,
            cpu_reduce_threads: 1,
            algo: AlgoChoice::Auto,
            allreduce_rules: Vec::new(),
            broadcast_rules: Vec::new(),
            reduce_rules: Vec::new(),
            log: LogLevel::Warn,
            host_id: None,
            plan_dump_dir: None,
            timeline: None,
            shm: true,
            bind: true,
            shm_mode: ShmMode::Auto,
            shm_cma_min: 16 << 20,
            nstreams: None,
            ifname: None,
            topo_file: None,
            host_model: None,
            net_gbps: None,
            flow_gbps: None,
            topo_dump_file: None,
            rdma: RdmaChoice::Auto,
            rdma_provider: None,
            rdma_cq_data: None,
            socket_buffer: None,
            autotune: false,
            autotune_file: None,
            cache_dir: None,
        }
    }
}

/// torchrun's launch variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: u32,
    pub world_size: u32,
    pub local_rank: u32,
    pub local_world_size: u32,
    pub master_addr: String,
    pub master_port: u16,
}

fn lookup<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// Parses sizes like `4096`, `4K`, `64M`, `1G` (binary multiples, optional `B`/`iB`).
pub fn parse_size(s: &str) -> Option<usize> {
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 1usize << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

fn bad(name: &str, val: &str, expected: &str) -> Error {
    Error::invalid(format!("{name}='{val}' is not valid: expected {expected}"))
}

/// Longest accepted timeout (about 116 days). Deadlines are `Instant::now() + timeout`, which
/// panics on overflow, and `Duration::from_secs_f64` panics past u64 seconds: a fuzzed
/// `ACSPEED_TIMEOUT_SECS=3099999999999999999999` crashed the parser before this bound.
const MAX_SECS: f64 = 1e7;

impl Config {
    /// Reads the process environment once.
    pub fn from_env() -> Result<Config> {
        Config::from_vars(&std::env::vars().collect::<Vec<_>>())
    }

    /// Parses from an explicit variable list (later entries win).
    pub fn from_vars(vars: &[(String, String)]) -> Result<Config> {
        let mut c = Config::default();
        if let Some(v) = lookup(vars, "ACSPEED_TIMEOUT_SECS") {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && *s <= MAX_SECS)
                .ok_or_else(|| {
                    bad(
                        "ACSPEED_TIMEOUT_SECS",
                        v,
                        "a positive number of seconds, at most 10000000",
                    )
                })?;
            c.timeout = Duration::from_secs_f64(secs);
        }
        if let Some(v) = lookup(vars, "ACSPEED_STALL_WARN_SECS") {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| *s >= 0.0 && *s <= MAX_SECS)
                .ok_or_else(|| {
                    bad(
                        "ACSPEED_STALL_WARN_SECS",
                        v,
                        "a number of seconds up to 10000000 (0 = off)",
                    )
                })?;
            c.stall_warn = Duration::from_secs_f64(secs);
        }
        if let Some(v) = lookup(vars, "ACSPEED_SEGMENT_BYTES") {
            c.segment_bytes = parse_size(v)
                .filter(|s| (64..=(1 << 30)).contains(s))
                .ok_or_else(|| {
                    bad(
                        "ACSPEED_SEGMENT_BYTES",
                        v,
                        "a size between 64 and 1G, e.g. 256K",
                    )
                })?;
        }
        if let Some(v) = lookup(vars, "ACSPEED_PIPELINE_DEPTH") {
            c.pipeline_depth = v
                .parse()
                .ok()
                .filter(|d| (1..=64).contains(d))
                .ok_or_else(|| bad("ACSPEED_PIPELINE_DEPTH", v, "an integer from 1 to 64"))?;
        }
        for (name, field) in [
            ("ACSPEED_CPU_REDUCE_PIPELINES", &mut c.cpu_reduce_pipelines),
            ("ACSPEED_CPU_REDUCE_THREADS", &mut c.cpu_reduce_threads),
        ] {
            if let Some(v) = lookup(vars, name) {
                *field = v
                    .parse()
                    .ok()
                    .filter(|d| (1..=16).contains(d))
                    .ok_or_else(|| bad(name, v, "an integer from 1 to 16"))?;
            }
        }
        if let Some(v) = lookup(vars, "ACSPEED_ALGO") {
            c.algo = match v.to_ascii_lowercase().as_str() {
                "auto" => AlgoChoice::Auto,
                name => AlgoChoice::Named(
                    crate::plan::canonical_algorithm("ACSPEED_ALGO", name)?.to_string(),
                ),
            };
        }
        for (name, rules) in [
            ("ACSPEED_ALLREDUCE", &mut c.allreduce_rules),
            ("ACSPEED_BROADCAST", &mut c.broadcast_rules),
            ("ACSPEED_REDUCE", &mut c.reduce_rules),
        ] {
            if let Some(v) = lookup(vars, name) {
                *rules = parse_size_rules(name, v)?;
            }
        }
        if let Some(v) = lookup(vars, "ACSPEED_DEBUG") {
            c.log = match v.to_ascii_uppercase().as_str() {
                "WARN" | "ERROR" | "OFF" | "0" => LogLevel::Warn,
                "INFO" | "1" => LogLevel::Info,
                "TRACE" | "DEBUG" | "2" => LogLevel::Trace,
                _ => return Err(bad("ACSPEED_DEBUG", v, "WARN, INFO or TRACE")),
            };
        }
        c.host_id = lookup(vars, "ACSPEED_HOST_ID").map(str::to_string);
        c.plan_dump_dir = lookup(vars, "ACSPEED_PLAN_DUMP_DIR").map(str::to_string);
        c.timeline = lookup(vars, "ACSPEED_TIMELINE")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(v) = lookup(vars, "ACSPEED_SHM") {
            c.shm = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_SHM", v, "1 or 0")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_BIND") {
            c.bind = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_BIND", v, "1 or 0")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_AUTOTUNE") {
            c.autotune = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_AUTOTUNE", v, "1 or 0")),
            };
        }
        c.autotune_file = lookup(vars, "ACSPEED_AUTOTUNE_FILE")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        c.cache_dir = match (lookup(vars, "XDG_CACHE_HOME"), lookup(vars, "HOME")) {
            (Some(x), _) if !x.is_empty() => Some(format!("{x}/acspeed")),
            (_, Some(h)) if !h.is_empty() => Some(format!("{h}/.cache/acspeed")),
            _ => None,
        };
        if let Some(v) = lookup(vars, "ACSPEED_SHM_MODE") {
            c.shm_mode = match v.to_ascii_lowercase().as_str() {
                "auto" => ShmMode::Auto,
                "cma" => ShmMode::Cma,
                "copy" => ShmMode::Copy,
                _ => return Err(bad("ACSPEED_SHM_MODE", v, "auto, cma or copy")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_SHM_CMA_MIN") {
            c.shm_cma_min = parse_size(v)
                .ok_or_else(|| bad("ACSPEED_SHM_CMA_MIN", v, "a size such as 0, 4M or 1G"))?;
        }
        if let Some(v) = lookup(vars, "ACSPEED_NSTREAMS") {
            if !v.eq_ignore_ascii_case("auto") {
                c.nstreams = Some(v.parse().ok().filter(|k| (1..=64).contains(k)).ok_or_else(
                    || bad("ACSPEED_NSTREAMS", v, "auto or an integer from 1 to 64"),
                )?);
            }
        }
        c.ifname = lookup(vars, "ACSPEED_SOCKET_IFNAME").map(IfaceFilter::parse);
        c.topo_file = lookup(vars, "ACSPEED_TOPO_FILE").map(str::to_string);
        c.topo_dump_file = lookup(vars, "ACSPEED_TOPO_DUMP_FILE").map(str::to_string);
        c.host_model = lookup(vars, "ACSPEED_HOST_MODEL").map(str::to_string);
        for (name, slot) in [
            ("ACSPEED_NET_GBPS", &mut c.net_gbps),
            ("ACSPEED_FLOW_GBPS", &mut c.flow_gbps),
        ] {
            if let Some(v) = lookup(vars, name) {
                *slot = Some(
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|g| g.is_finite() && *g > 0.0 && *g <= 1e5)
                        .ok_or_else(|| {
                            bad(name, v, "a rate in Gbit/s above 0 and at most 100000")
                        })?,
                );
            }
        }
        if let Some(v) = lookup(vars, "ACSPEED_RDMA") {
            c.rdma = match v.to_ascii_lowercase().as_str() {
                "auto" => RdmaChoice::Auto,
                "1" | "on" | "true" => RdmaChoice::On,
                "0" | "off" | "false" => RdmaChoice::Off,
                _ => return Err(bad("ACSPEED_RDMA", v, "auto, 1 or 0")),
            };
        }
        c.rdma_provider = lookup(vars, "ACSPEED_RDMA_PROVIDER").map(str::to_string);
        if let Some(v) = lookup(vars, "ACSPEED_RDMA_CQ_DATA_BYTES") {
            c.rdma_cq_data = Some(
                v.parse()
                    .ok()
                    .filter(|b| (1..=8).contains(b))
                    .ok_or_else(|| {
                        bad("ACSPEED_RDMA_CQ_DATA_BYTES", v, "an integer from 1 to 8")
                    })?,
            );
        }
        if let Some(v) = lookup(vars, "ACSPEED_SOCKET_BUFFER") {
            c.socket_buffer = Some(
                parse_size(v)
                    .filter(|s| ((4 << 10)..=(1 << 30)).contains(s))
                    .ok_or_else(|| {
                        bad(
                            "ACSPEED_SOCKET_BUFFER",
                            v,
                            "a size between 4K and 1G, e.g. 4M",
                        )
                    })?,
            );
        }
        Ok(c)
    }
}

impl LaunchEnv {
    pub fn from_env() -> Result<LaunchEnv> {
        LaunchEnv::from_vars(&std::env::vars().collect::<Vec<_>>())
    }

    /// Parses torchrun's variables; every problem names the variable.
    pub fn from_vars(vars: &[(String, String)]) -> Result<LaunchEnv> {
        let need = |k: &str| {
            lookup(vars, k).ok_or_else(|| {
                Error::invalid(format!(
                    "{k} is not set; launch with torchrun or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT \
                     (or use acspeed-bench -n N to start local ranks)"
                ))
            })
        };
        let num = |k: &str, v: &str| -> Result<u32> {
            v.trim()
                .parse()
                .map_err(|_| bad(k, v, "a non-negative integer"))
        };
        let world_size = num("WORLD_SIZE", need("WORLD_SIZE")?)?;
        if world_size == 0 {
            return Err(bad("WORLD_SIZE", "0", "at least 1"));
        }
        let rank = num("RANK", need("RANK")?)?;
        if rank >= world_size {
            return Err(Error::invalid(format!(
                "RANK={rank} is out of range for WORLD_SIZE={world_size} (ranks are 0..{})",
                world_size - 1
            )));
        }
        let local_rank = match lookup(vars, "LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", v)?,
            None => rank,
        };
        let local_world_size = match lookup(vars, "LOCAL_WORLD_SIZE") {
            Some(v) => num("LOCAL_WORLD_SIZE", v)?,
            None => world_size,
        };
        if local_rank >= local_world_size {
            return Err(Error::invalid(format!(
                "LOCAL_RANK={local_rank} is out of range for LOCAL_WORLD_SIZE={local_world_size}"
            )));
        }
        let master_addr = lookup(vars, "MASTER_ADDR")
            .unwrap_or("127.0.0.1")
            .to_string();
        let p = need("MASTER_PORT")?;
        let master_port = p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("MASTER_PORT", p, "a port number 1..65535"))?;
        Ok(LaunchEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("2KiB"), Some(2048));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn config_errors_name_the_variable() {
        let e = Config::from_vars(&v(&[("ACSPEED_SEGMENT_BYTES", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ACSPEED_SEGMENT_BYTES") && e.contains("lots"),
            "{e}"
        );
        let e = Config::from_vars(&v(&[("ACSPEED_TIMEOUT_SECS", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ACSPEED_TIMEOUT_SECS"), "{e}");
        // Found by the env_vars fuzz target: this panicked in Duration::from_secs_f64.
        for name in ["ACSPEED_TIMEOUT_SECS", "ACSPEED_STALL_WARN_SECS"] {
            for huge in ["3099999999999999999999", "1e300", "inf"] {
                let e = Config::from_vars(&v(&[(name, huge)]))
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(name) && (e.contains("at most") || e.contains("up to")),
                    "{e}"
                );
            }
        }
        let c = Config::from_vars(&v(&[
            ("ACSPEED_SEGMENT_BYTES", "1M"),
            ("ACSPEED_ALGO", "Ring"),
        ]))
        .unwrap();
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.algo, AlgoChoice::Named("ring".into()));
    }

    #[test]
    fn bind_is_a_flag_checked_like_the_others() {
        assert!(Config::from_vars(&v(&[])).unwrap().bind);
        assert!(
            !Config::from_vars(&v(&[("ACSPEED_BIND", "0")]))
                .unwrap()
                .bind
        );
        let e = Config::from_vars(&v(&[("ACSPEED_BIND", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ACSPEED_BIND") && e.contains("nope"), "{e}");
    }

    #[test]
    fn an_unknown_algorithm_is_refused_naming_the_variable_and_the_names() {
        let e = Config::from_vars(&v(&[("ACSPEED_ALGO", "trea")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ACSPEED_ALGO") && e.contains("'trea'"), "{e}");
        assert!(
            e.contains("available: auto, ring, tree, ntree, hybrid"),
            "{e}"
        );
        let e = Config::from_vars(&v(&[("ACSPEED_ALLREDUCE", "tree:0-16K;rign:16K-max")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ACSPEED_ALLREDUCE") && e.contains("'rign'"),
            "{e}"
        );
        let c = Config::from_vars(&v(&[("ACSPEED_ALGO", "Hybrid:Ring")])).unwrap();
        assert_eq!(c.algo, AlgoChoice::Named("hybrid".into()));
    }

    #[test]
    fn per_size_algorithm_strings() {
        let r = parse_size_rules(
            "ACSPEED_ALLREDUCE",
            "tree:0-16K; ring:16K-1M;hybrid:tree:1M-max",
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            SizeRule {
                algo: "tree".into(),
                lo: 0,
                hi: 16 << 10
            }
        );
        assert_eq!(r[2].algo, "hybrid:tree");
        assert_eq!(r[2].hi, usize::MAX);
        for bad in ["tree", "tree:16K", "tree:1M-16K", "tree:x-1M", ":0-1M", ""] {
            let e = parse_size_rules("ACSPEED_ALLREDUCE", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("ACSPEED_ALLREDUCE"), "{bad}: {e}");
        }
        let c = Config::from_vars(&[("ACSPEED_BROADCAST".into(), "tree:0-64K".into())]).unwrap();
        assert_eq!(c.broadcast_rules.len(), 1);
    }

    #[test]
    fn selector_model_rates() {
        let v = |k: &str, x: &str| vec![(k.to_string(), x.to_string())];
        let c = Config::from_vars(&[
            ("ACSPEED_NET_GBPS".into(), "2.5".into()),
            ("ACSPEED_FLOW_GBPS".into(), " 0.5".into()),
            ("ACSPEED_HOST_MODEL".into(), "here.json".into()),
        ])
        .unwrap();
        assert_eq!((c.net_gbps, c.flow_gbps), (Some(2.5), Some(0.5)));
        assert_eq!(c.host_model.as_deref(), Some("here.json"));
        for name in ["ACSPEED_NET_GBPS", "ACSPEED_FLOW_GBPS"] {
            for bad in ["0", "-1", "fast", "inf", "NaN", "1e9"] {
                let e = Config::from_vars(&v(name, bad)).unwrap_err().to_string();
                assert!(e.contains(name) && e.contains(bad), "{name}={bad}: {e}");
            }
        }
    }

    #[test]
    fn transport_knobs() {
        let c = Config::from_vars(&v(&[
            ("ACSPEED_SHM", "0"),
            ("ACSPEED_NSTREAMS", "8"),
            ("ACSPEED_SOCKET_IFNAME", "^docker,lo"),
        ]))
        .unwrap();
        assert!(!c.shm);
        assert_eq!(c.nstreams, Some(8));
        let f = c.ifname.unwrap();
        assert!(!f.matches("docker0") && !f.matches("lo") && f.matches("eth0"));
        assert!(IfaceFilter::parse("eth").matches("eth1"));
        assert!(!IfaceFilter::parse("=eth").matches("eth0"));
        assert!(IfaceFilter::parse("=eth0,ib0").matches("ib0"));
        let e = Config::from_vars(&v(&[("ACSPEED_NSTREAMS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ACSPEED_NSTREAMS"), "{e}");
        assert!(Config::from_vars(&v(&[("ACSPEED_SHM", "maybe")])).is_err());
    }

    #[test]
    fn launch_env() {
        let e = LaunchEnv::from_vars(&v(&[("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK is not set"), "{e}");
        let e = LaunchEnv::from_vars(&v(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_PORT", "1"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("RANK=2") && e.contains("WORLD_SIZE=2"), "{e}");
        let e = LaunchEnv::from_vars(&v(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_PORT", "99999"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
        let l = LaunchEnv::from_vars(&v(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap();
        assert_eq!(
            (l.local_rank, l.local_world_size, l.master_addr.as_str()),
            (3, 4, "127.0.0.1")
        );
    }
}
