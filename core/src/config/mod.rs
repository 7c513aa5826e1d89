//! All configuration, parsed in one place from `ACSPEED_*` and torchrun's variables.
//!
//! Two stages, as ripgrep does it: [`Config::from_vars`] only validates what the user wrote
//! (no syscalls), the integrator then resolves it against the machine. Nothing else in acspeed
//! reads the environment, so every knob is listed in [`VARS`] and can be varied per test.

mod launch;
mod settings;
mod vars;

pub use launch::LaunchEnv;
pub use settings::*;
pub use vars::VARS;

use crate::error::{Error, Result};
use std::time::Duration;

/// Library configuration (everything except the launcher's variables), one typed part per
/// layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub job: JobSettings,
    pub exec: ExecSettings,
    pub policy: PolicySettings,
    pub model: ModelSettings,
    pub transport: TransportSettings,
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

pub(crate) fn bad(name: &str, val: &str, expected: &str) -> Error {
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
        // Seconds, bounded (zero allowed where it means "off").
        let secs = |name: &str, v: &str, zero: bool, expected: &str| -> Result<Duration> {
            v.parse()
                .ok()
                .filter(|s: &f64| (*s > 0.0 || (zero && *s == 0.0)) && *s <= MAX_SECS)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(name, v, expected))
        };
        if let Some(v) = lookup(vars, "ACSPEED_TIMEOUT_SECS") {
            let e = "a positive number of seconds, at most 10000000";
            c.job.timeout = secs("ACSPEED_TIMEOUT_SECS", v, false, e)?;
        }
        if let Some(v) = lookup(vars, "ACSPEED_STALL_WARN_SECS") {
            let e = "a number of seconds up to 10000000 (0 = off)";
            c.job.stall_warn = secs("ACSPEED_STALL_WARN_SECS", v, true, e)?;
        }
        if let Some(v) = lookup(vars, "ACSPEED_SEGMENT_BYTES") {
            c.exec.segment_bytes = parse_size(v)
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
            c.exec.pipeline_depth = v
                .parse()
                .ok()
                .filter(|d| (1..=64).contains(d))
                .ok_or_else(|| bad("ACSPEED_PIPELINE_DEPTH", v, "an integer from 1 to 64"))?;
        }
        for (name, field) in [
            (
                "ACSPEED_CPU_REDUCE_PIPELINES",
                &mut c.exec.cpu_reduce_pipelines,
            ),
            ("ACSPEED_CPU_REDUCE_THREADS", &mut c.exec.cpu_reduce_threads),
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
            c.policy.algo = match v.to_ascii_lowercase().as_str() {
                "auto" => AlgoChoice::Auto,
                name => AlgoChoice::Named(
                    crate::plan::canonical_algorithm("ACSPEED_ALGO", name)?.to_string(),
                ),
            };
        }
        for (name, rules) in [
            ("ACSPEED_ALLREDUCE", &mut c.policy.allreduce_rules),
            ("ACSPEED_BROADCAST", &mut c.policy.broadcast_rules),
            ("ACSPEED_REDUCE", &mut c.policy.reduce_rules),
        ] {
            if let Some(v) = lookup(vars, name) {
                *rules = parse_size_rules(name, v)?;
            }
        }
        if let Some(v) = lookup(vars, "ACSPEED_DEBUG") {
            c.job.log = match v.to_ascii_uppercase().as_str() {
                "WARN" | "ERROR" | "OFF" | "0" => LogLevel::Warn,
                "INFO" | "1" => LogLevel::Info,
                "TRACE" | "DEBUG" | "2" => LogLevel::Trace,
                _ => return Err(bad("ACSPEED_DEBUG", v, "WARN, INFO or TRACE")),
            };
        }
        c.job.host_id = lookup(vars, "ACSPEED_HOST_ID").map(str::to_string);
        c.job.plan_dump_dir = lookup(vars, "ACSPEED_PLAN_DUMP_DIR").map(str::to_string);
        c.job.timeline = lookup(vars, "ACSPEED_TIMELINE")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(v) = lookup(vars, "ACSPEED_SHM") {
            c.transport.shm = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_SHM", v, "1 or 0")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_CUDA_PATH") {
            c.exec.cuda_device_path = match v.to_ascii_lowercase().as_str() {
                "device" => true,
                "staging" => false,
                _ => return Err(bad("ACSPEED_CUDA_PATH", v, "device or staging")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_BIND") {
            c.transport.bind = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_BIND", v, "1 or 0")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_AUTOTUNE") {
            c.policy.autotune = match v.to_ascii_lowercase().as_str() {
                "1" | "on" | "true" | "yes" => true,
                "0" | "off" | "false" | "no" => false,
                _ => return Err(bad("ACSPEED_AUTOTUNE", v, "1 or 0")),
            };
        }
        c.policy.autotune_file = lookup(vars, "ACSPEED_AUTOTUNE_FILE")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        c.policy.cache_dir = match (lookup(vars, "XDG_CACHE_HOME"), lookup(vars, "HOME")) {
            (Some(x), _) if !x.is_empty() => Some(format!("{x}/acspeed")),
            (_, Some(h)) if !h.is_empty() => Some(format!("{h}/.cache/acspeed")),
            _ => None,
        };
        if let Some(v) = lookup(vars, "ACSPEED_SHM_MODE") {
            c.transport.shm_mode = match v.to_ascii_lowercase().as_str() {
                "auto" => ShmMode::Auto,
                "cma" => ShmMode::Cma,
                "copy" => ShmMode::Copy,
                _ => return Err(bad("ACSPEED_SHM_MODE", v, "auto, cma or copy")),
            };
        }
        if let Some(v) = lookup(vars, "ACSPEED_SHM_CMA_MIN") {
            c.transport.shm_cma_min = parse_size(v)
                .ok_or_else(|| bad("ACSPEED_SHM_CMA_MIN", v, "a size such as 0, 4M or 1G"))?;
        }
        if let Some(v) = lookup(vars, "ACSPEED_NSTREAMS") {
            if !v.eq_ignore_ascii_case("auto") {
                c.transport.nstreams = Some(
                    v.parse()
                        .ok()
                        .filter(|k| (1..=64).contains(k))
                        .ok_or_else(|| {
                            bad("ACSPEED_NSTREAMS", v, "auto or an integer from 1 to 64")
                        })?,
                );
            }
        }
        c.transport.ifname = lookup(vars, "ACSPEED_SOCKET_IFNAME").map(IfaceFilter::parse);
        c.model.topo_file = lookup(vars, "ACSPEED_TOPO_FILE").map(str::to_string);
        c.model.topo_dump_file = lookup(vars, "ACSPEED_TOPO_DUMP_FILE").map(str::to_string);
        c.model.host_model = lookup(vars, "ACSPEED_HOST_MODEL").map(str::to_string);
        for (name, slot) in [
            ("ACSPEED_NET_GBPS", &mut c.model.net_gbps),
            ("ACSPEED_FLOW_GBPS", &mut c.model.flow_gbps),
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
            c.transport.rdma = match v.to_ascii_lowercase().as_str() {
                "auto" => RdmaChoice::Auto,
                "1" | "on" | "true" => RdmaChoice::On,
                "0" | "off" | "false" => RdmaChoice::Off,
                _ => return Err(bad("ACSPEED_RDMA", v, "auto, 1 or 0")),
            };
        }
        c.transport.rdma_provider = lookup(vars, "ACSPEED_RDMA_PROVIDER").map(str::to_string);
        if let Some(v) = lookup(vars, "ACSPEED_RDMA_CQ_DATA_BYTES") {
            c.transport.rdma_cq_data = Some(
                v.parse()
                    .ok()
                    .filter(|b| (1..=8).contains(b))
                    .ok_or_else(|| {
                        bad("ACSPEED_RDMA_CQ_DATA_BYTES", v, "an integer from 1 to 8")
                    })?,
            );
        }
        if let Some(v) = lookup(vars, "ACSPEED_SOCKET_BUFFER") {
            c.transport.socket_buffer = Some(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The README's defaults (from [`VARS`]) are text; each layer's `Default` is the value. A
    /// default written in the list must parse to exactly that value, so the two cannot drift.
    #[test]
    fn listed_defaults_are_the_defaults() {
        let mut checked = 0;
        for (name, default, _) in VARS {
            let stated = !default.starts_with('(') && !default.starts_with('~');
            if !name.starts_with("ACSPEED_") || !stated || *name == "ACSPEED_HOST_ID" {
                continue;
            }
            let parsed = Config::from_vars(&v(&[(name, default)]))
                .unwrap_or_else(|e| panic!("{name}={default} (its listed default): {e}"));
            assert_eq!(parsed, Config::default(), "{name}={default}");
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} defaults checked");
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
        let e = Config::from_vars(&v(&[("ACSPEED_CUDA_PATH", "gpu")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ACSPEED_CUDA_PATH") && e.contains("device or staging"),
            "{e}"
        );
        let staged = Config::from_vars(&v(&[("ACSPEED_CUDA_PATH", "staging")])).unwrap();
        assert!(!staged.exec.cuda_device_path);
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
        assert_eq!(c.exec.segment_bytes, 1 << 20);
        assert_eq!(c.policy.algo, AlgoChoice::Named("ring".into()));
    }

    #[test]
    fn bind_is_a_flag_checked_like_the_others() {
        assert!(Config::from_vars(&v(&[])).unwrap().transport.bind);
        assert!(
            !Config::from_vars(&v(&[("ACSPEED_BIND", "0")]))
                .unwrap()
                .transport
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
        assert_eq!(c.policy.algo, AlgoChoice::Named("hybrid".into()));
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
        assert_eq!(c.policy.broadcast_rules.len(), 1);
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
        assert_eq!(
            (c.model.net_gbps, c.model.flow_gbps),
            (Some(2.5), Some(0.5))
        );
        assert_eq!(c.model.host_model.as_deref(), Some("here.json"));
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
        assert!(!c.transport.shm);
        assert_eq!(c.transport.nstreams, Some(8));
        let f = c.transport.ifname.unwrap();
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
