//! Helpers shared by the integration tests: groups of communicators run as threads over the
//! in-memory transport or real TCP on loopback, and closed-form test values.

use acspeed::store::MemStore;
use acspeed::{Communicator, Config, DType};
use acspeed_testkit::MemoryTransport;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fabric {
    Memory,
    /// In-memory with receive-side reduction (the executor's fused path).
    MemoryFused,
    /// TCP on loopback, one socket per peer.
    Tcp,
    /// TCP on loopback, three sockets per peer (striped messages).
    TcpMulti,
    /// Shared memory (all ranks of a test share the host).
    Shm,
    /// Shared memory with every message of 64 KiB or more read by cross-memory attach.
    ShmCma,
    /// Shared memory with every slot filled by streaming stores (the large-collective path).
    ShmStream,
    /// libfabric RDM endpoints on the tcp;ofi_rxm provider over loopback (feature `rdma`).
    #[cfg(feature = "rdma")]
    Rdma,
}

impl Fabric {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fabric::Memory => "memory",
            Fabric::MemoryFused => "memfused",
            Fabric::Tcp => "tcp",
            Fabric::TcpMulti => "tcp3",
            Fabric::Shm => "shm",
            Fabric::ShmCma => "shm-cma",
            Fabric::ShmStream => "shm-stream",
            #[cfg(feature = "rdma")]
            Fabric::Rdma => "rdma",
        }
    }
}

pub(crate) fn test_config(segment: usize, depth: usize, timeout_s: u64) -> Config {
    Config {
        exec: acspeed_core::config::ExecSettings {
            segment_bytes: segment,
            pipeline_depth: depth,
            ..Default::default()
        },
        job: acspeed_core::config::JobSettings {
            timeout: Duration::from_secs(timeout_s),
            ..Default::default()
        },
        ..Config::default()
    }
}

/// Runs `f(comm)` on `n` threads, one communicator each, and returns their results by rank.
pub(crate) fn run_group<T: Send>(
    fabric: Fabric,
    n: u32,
    cfg: Config,
    f: impl Fn(Communicator) -> T + Sync,
) -> Vec<T> {
    run_group_on_hosts(fabric, &[n], cfg, f)
}

/// Like [`run_group`], with consecutive ranks grouped into hosts of the sizes in `shape`
/// (host identities `h0`, `h1`, ...). Shared memory only connects ranks of one host.
pub(crate) fn run_group_on_hosts<T: Send>(
    fabric: Fabric,
    shape: &[u32],
    cfg: Config,
    f: impl Fn(Communicator) -> T + Sync,
) -> Vec<T> {
    let n: u32 = shape.iter().sum();
    let hosts: Vec<String> = shape
        .iter()
        .enumerate()
        .flat_map(|(h, m)| std::iter::repeat_n(format!("h{h}"), *m as usize))
        .collect();
    static GROUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let group = GROUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let store = MemStore::new();
    let mut mem: Vec<Option<MemoryTransport>> = match fabric {
        Fabric::Memory => MemoryTransport::fabric(n).into_iter().map(Some).collect(),
        Fabric::MemoryFused => MemoryTransport::fabric_with(n, true)
            .into_iter()
            .map(Some)
            .collect(),
        _ => (0..n).map(|_| None).collect(),
    };
    // In-memory fabrics get the extra channels init would connect (n-trees that share pairs).
    let found = acspeed::model::discover(&cfg).unwrap();
    let ctx = (found.clone().agree(&cfg, hosts.clone()).unwrap()).context;
    let mut extra: Vec<Vec<Arc<dyn acspeed_core::Transport>>> =
        (0..n).map(|_| Vec::new()).collect();
    if mem[0].is_some() {
        for _ in 1..acspeed_algorithms::channels_needed(&ctx) {
            for (r, t) in MemoryTransport::fabric(n).into_iter().enumerate() {
                extra[r].push(Arc::new(t));
            }
        }
    }
    #[cfg(feature = "rdma")]
    let cfg = if fabric == Fabric::Rdma {
        loopback_fabric();
        Config {
            transport: acspeed_core::config::TransportSettings {
                rdma: acspeed_core::config::RdmaChoice::On,
                rdma_provider: Some("tcp;ofi_rxm".into()),
                ..cfg.transport
            },
            ..cfg
        }
    } else {
        cfg
    };
    let cfg = Config {
        transport: acspeed_core::config::TransportSettings {
            // In-memory fabrics get a real staging area too (see `memory_staging`), so they count
            // as having shared memory; TCP fabrics do not.
            shm: matches!(
                fabric,
                Fabric::Shm
                    | Fabric::ShmCma
                    | Fabric::ShmStream
                    | Fabric::Memory
                    | Fabric::MemoryFused
            ),
            shm_mode: if fabric == Fabric::ShmCma {
                acspeed_core::config::ShmMode::Cma
            } else {
                cfg.transport.shm_mode
            },
            shm_cma_min: if matches!(fabric, Fabric::ShmCma | Fabric::ShmStream) {
                0
            } else {
                cfg.transport.shm_cma_min
            },
            nstreams: (fabric == Fabric::TcpMulti).then_some(3),
            ..cfg.transport
        },
        ..cfg
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let m = mem[r as usize].take();
                let channels = std::mem::take(&mut extra[r as usize]);
                let (store, f, hosts, ctx) = (store.clone(), &f, &hosts, ctx.clone());
                let found = found.clone();
                let cfg = Config {
                    job: acspeed_core::config::JobSettings {
                        host_id: Some(hosts[r as usize].clone()),
                        ..cfg.job.clone()
                    },
                    ..cfg.clone()
                };
                s.spawn(move || {
                    let comm = match m {
                        Some(t) => {
                            let staging = memory_staging(r, group, &ctx, &cfg);
                            let model = found.agree(&cfg, hosts.clone()).unwrap();
                            Communicator::with_channels(Arc::new(t), channels, staging, cfg, model)
                                .unwrap()
                        }
                        None => acspeed::init_with_store(
                            &*store,
                            "t",
                            r,
                            n,
                            "127.0.0.1".parse().unwrap(),
                            cfg,
                        )
                        .unwrap(),
                    };
                    f(comm)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .collect()
    })
}

/// The CPU-Reduce staging area an in-memory fabric's rank `r` shares with the other ranks of
/// its host (as init would connect it). `group` tells concurrent harness calls apart (the
/// rendezvous socket is named after the secret).
fn memory_staging(
    r: u32,
    group: u64,
    ctx: &acspeed_core::PlanContext,
    cfg: &Config,
) -> Option<Arc<dyn acspeed_core::HostStage>> {
    let local: Vec<u32> = ctx
        .domains()
        .into_iter()
        .find(|d| d.contains(&acspeed_core::Rank(r)))
        .unwrap_or_default()
        .into_iter()
        .map(|q| q.0)
        .collect();
    if local.len() < 2 {
        return None;
    }
    let mut secret = [0u8; 16];
    secret[..8].copy_from_slice(&(std::process::id() as u64 | group << 32).to_le_bytes());
    Some(Arc::new(
        acspeed_transports::HostStaging::connect(
            acspeed_core::Rank(r),
            &local,
            &secret,
            acspeed::init::staging_params(&cfg.exec),
            cfg.job.timeout,
        )
        .unwrap(),
    ))
}

/// A command that starts its own local job: the launcher's variables of the test process
/// (torchrun's RANK, WORLD_SIZE, ...) must not make it join another one.
pub(crate) fn without_launch_env(c: &mut std::process::Command) -> &mut std::process::Command {
    for k in [
        "RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
    ] {
        c.env_remove(k);
    }
    c
}

/// Runs a command to the end: (exit status 0, stdout, stderr).
pub(crate) fn outcome(c: &mut std::process::Command) -> (bool, String, String) {
    let o = c.output().expect("running a binary of this crate");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Encodes values (exact small integers) as `dtype` bytes; integers wrap like the kernels.
pub(crate) fn encode(d: DType, vals: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * d.size());
    for &v in vals {
        match d {
            DType::F32 => out.extend_from_slice(&(v as f32).to_ne_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_ne_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_ne_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_ne_bytes()),
            DType::I32 => out.extend_from_slice(&(v as i64 as i32).to_ne_bytes()),
            DType::I64 => out.extend_from_slice(&(v as i64).to_ne_bytes()),
            DType::I8 => out.extend_from_slice(&(v as i64 as i8).to_ne_bytes()),
            DType::U8 => out.extend_from_slice(&(v as i64 as u8).to_ne_bytes()),
        }
    }
    out
}

/// A byte buffer with 8-byte alignment holding `bytes`.
pub(crate) fn aligned_copy(bytes: &[u8]) -> acspeed_tools::bench::Aligned {
    let mut a = acspeed_tools::bench::aligned(bytes.len());
    a.copy_from_slice(bytes);
    a
}

/// libfabric's tcp provider binds to the first interface unless told; tests stay on loopback.
#[cfg(feature = "rdma")]
fn loopback_fabric() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY (set_var): done once, before any endpoint of this process exists.
    ONCE.call_once(|| std::env::set_var("FI_TCP_IFACE", "lo"));
}

/// `nvidia-smi topo -m` output `fixture` written into `dir` as a topology description (for
/// `ACSPEED_TOPO_FILE`), `edit` applied first.
pub(crate) fn topo_json(
    dir: &std::path::Path,
    name: &str,
    fixture: &str,
    edit: impl FnOnce(&mut acspeed_core::topology::TopoDescription),
) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut d =
        acspeed_core::topology::nvsmi::parse(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    edit(&mut d);
    let p = dir.join(name);
    std::fs::write(&p, d.to_json()).unwrap();
    p.to_string_lossy().into_owned()
}

/// Init errors of a 2-rank job whose rank `r` uses `cfg(r)` (each must fail).
pub(crate) fn init_errors_of_two(prefix: &str, cfg: impl Fn(u32) -> Config + Sync) -> Vec<String> {
    let store = MemStore::new();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u32)
            .map(|r| {
                let (store, cfg) = (store.clone(), &cfg);
                s.spawn(move || {
                    acspeed::init_with_store(
                        &*store,
                        prefix,
                        r,
                        2,
                        "127.0.0.1".parse().unwrap(),
                        cfg(r),
                    )
                    .map(|_| ())
                    .unwrap_err()
                    .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A free TCP port on loopback (for a rendezvous of processes started by a test).
pub(crate) fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// Rank `r` of a `world`-rank acspeed-bench job at `port`, with `args` and extra `env`; its
/// standard error is captured.
pub(crate) fn spawn_bench_rank(
    r: u32,
    world: u32,
    port: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_acspeed-bench"));
    without_launch_env(&mut c)
        .args(args)
        .envs([
            ("RANK", r.to_string().as_str()),
            ("WORLD_SIZE", world.to_string().as_str()),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port),
        ])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// V100 DGX-1 cube-mesh (NV1/NV2 per GPU pair).
pub(crate) fn dgx1() -> Vec<Vec<u8>> {
    let m = [
        [0, 1, 1, 2, 2, 0, 0, 0],
        [1, 0, 2, 1, 0, 2, 0, 0],
        [1, 2, 0, 2, 0, 0, 1, 0],
        [2, 1, 2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 1, 1, 2],
        [0, 2, 0, 0, 1, 0, 2, 1],
        [0, 0, 1, 0, 1, 2, 0, 2],
        [0, 0, 0, 1, 2, 1, 2, 0],
    ];
    m.iter().map(|r| r.to_vec()).collect()
}

/// Every collective the plans serve, rooted ones at the last rank.
pub(crate) fn collectives(n: u32) -> Vec<acspeed_core::plan::Collective> {
    use acspeed_core::plan::Collective;
    let root = acspeed_core::Rank(n - 1);
    vec![
        Collective::AllReduce,
        Collective::Broadcast { root },
        Collective::Reduce { root },
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
    ]
}
