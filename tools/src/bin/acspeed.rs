//! `acspeed`: diagnostics for the machine acspeed runs on.
//!
//! `acspeed topo` prints the device matrix the way `nvidia-smi topo -m` does (plus NICs and
//! NUMA/CPU affinity), from this machine's sysfs and NVML, from a saved `nvidia-smi topo -m`
//! text (`--nvidia-smi-topo FILE`: describe a machine you are not on), from a captured sysfs
//! tree (`--sysfs-root DIR`) or from a description file (`ACSPEED_TOPO_FILE`).
//!
//! `acspeed simulate` predicts every algorithm's time per size on a topology (or this machine
//! as measured now) times N hosts, with the very plans the executor runs, and marks the one
//! the selector picks.

use acspeed::probe;
use acspeed::Config;
use acspeed_algorithms::Algorithm;
use acspeed_core::sim::NetModel;
use acspeed_core::topology::{nvsmi, render, TopoDescription, TopoModel};
use acspeed_tools::simulate::{
    cluster_of, collective_named, format_rows, simulate_rows, HostSource, SimulateSpec,
};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "acspeed", version, about = "acspeed diagnostics")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the topology: GPUs, NICs, the path class of every pair, NUMA and CPU affinity.
    Topo {
        /// Print the description and its model (bandwidth, latency per pair) as JSON.
        #[arg(long)]
        json: bool,
        /// Build the topology from a saved `nvidia-smi topo -m` output instead of probing.
        #[arg(long, value_name = "FILE")]
        nvidia_smi_topo: Option<PathBuf>,
        /// Probe a captured sysfs tree under DIR instead of this machine.
        #[arg(long, value_name = "DIR")]
        sysfs_root: Option<PathBuf>,
        /// Write the description to FILE (loadable with ACSPEED_TOPO_FILE).
        #[arg(long, value_name = "FILE")]
        dump: Option<PathBuf>,
    },
    /// Predict time and bus bandwidth per algorithm and size (discrete-event simulation of
    /// the real plans); `*` marks the selector's pick.
    Simulate(SimArgs),
    /// How training scales and why: measure (--workers N), from numbers (--single/--multi),
    /// or predict on a topology (--topo/--nvidia-smi-topo/--here with --hosts).
    Linearity(LinArgs),
    /// Which algorithm a collective of a given size runs on a job shape, and why (the layer
    /// that decided: ACSPEED_ALLREDUCE-style ranges, ACSPEED_ALGO, auto); with a machine
    /// (--here, --topo, --nvidia-smi-topo) also every candidate's predicted time.
    Explain(ExplainArgs),
}

#[derive(clap::Args, Debug)]
struct ExplainArgs {
    /// Ranks per host, e.g. 8,8 or 3,1,2.
    #[arg(long, value_name = "SHAPE")]
    host_shape: String,
    /// Message size (output bytes), e.g. 4K, 25M.
    #[arg(long)]
    bytes: String,
    /// allreduce, broadcast or reduce.
    #[arg(long, default_value = "allreduce")]
    collective: String,
    /// Predict the candidates on a machine (--topo, --nvidia-smi-topo or --here).
    #[command(flatten)]
    machine: MachineArgs,
    /// The network between hosts (for predictions).
    #[command(flatten)]
    net: NetArgs,
}

#[derive(clap::Args, Debug)]
struct LinArgs {
    /// Workers (local ranks started by this command, or the job's size under torchrun).
    #[arg(long)]
    workers: Option<u32>,
    /// Model preset: resnet50, vgg16, bert-base, gpt2-medium.
    #[arg(long, default_value = "resnet50")]
    model: String,
    /// Parameter count instead of a preset.
    #[arg(long)]
    params: Option<u64>,
    /// Compute time per step in ms (forward + backward), emulated as GPU time.
    #[arg(long, default_value_t = 100.0)]
    compute_ms: f64,
    /// DDP bucket size in MiB.
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// Algorithms to measure (default: auto and ring), comma-separated.
    #[arg(long)]
    algo: Option<String>,
    /// Timed steps per algorithm.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// From numbers: one worker's (or one host's, with --hosts) throughput.
    #[arg(long, requires = "multi")]
    single: Option<f64>,
    /// From numbers: the N-worker (or H-host) throughput.
    #[arg(long, requires = "single")]
    multi: Option<f64>,
    /// Hosts (from numbers: linearity across hosts; predict: the largest host count).
    #[arg(long)]
    hosts: Option<u32>,
    /// Predict on a machine (--topo, --nvidia-smi-topo or --here).
    #[command(flatten)]
    machine: MachineArgs,
    /// Predict: ranks per host (default: the topology's GPUs; 1 with --here).
    #[arg(long)]
    ranks_per_host: Option<u32>,
    /// Predict: the network between hosts.
    #[command(flatten)]
    net: NetArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Write the charts (linearity, busbw against size, step breakdown) to this PNG.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Measure mode: also predict each row with the simulator (this machine measured with
    /// --here's method; hosts joined by --net-gbps/--flow-gbps/--streams).
    #[arg(long)]
    with_prediction: bool,
    /// Measure mode: the link rate (Gbit/s) to compare the measured busbw with.
    #[arg(long)]
    link_gbps: Option<f64>,
    /// Seconds the local job may take.
    #[arg(long, default_value_t = 600)]
    time_limit: u64,
}

/// The network between hosts, for predictions.
#[derive(clap::Args, Debug, Clone)]
struct NetArgs {
    /// Each host's network rate, Gbit/s.
    #[arg(long, default_value_t = acspeed::model::DEFAULT_NET_GBIT)]
    net_gbps: f64,
    /// Per-flow cap (one TCP stream), Gbit/s, as cloud networks and netsim impose.
    #[arg(long)]
    flow_gbps: Option<f64>,
    /// Sockets per peer a message is striped over.
    #[arg(long, default_value_t = acspeed_core::config::TransportSettings::AUTO_STREAMS_REMOTE)]
    streams: u32,
}

impl NetArgs {
    fn model(&self, latency_us: f64) -> NetModel {
        NetModel {
            nic_gbit: self.net_gbps,
            flow_gbit: self.flow_gbps,
            streams: self.streams,
            latency_us,
        }
    }
}

/// Which machine a prediction runs on (one host; `--hosts` and friends multiply it).
#[derive(clap::Args, Debug, Clone, Default)]
struct MachineArgs {
    /// A topology description (JSON, as `acspeed topo --dump` writes).
    #[arg(long, value_name = "FILE")]
    topo: Option<PathBuf>,
    /// A saved `nvidia-smi topo -m` output.
    #[arg(long, value_name = "FILE")]
    nvidia_smi_topo: Option<PathBuf>,
    /// This machine, measured now (copy and reduce rates, cores, shared-memory stream and
    /// latency).
    #[arg(long)]
    here: bool,
    /// The GPU model, as NVML names it (e.g. "A100-SXM4-80GB", "GeForce RTX 4090"): the
    /// link rates follow it. Default: the topology's `gpu_name`, else V100.
    #[arg(long, value_name = "NAME")]
    gpu: Option<String>,
    /// The CPU model (e.g. "AMD EPYC 7542"): the inter-socket link's rate follows its vendor.
    #[arg(long, value_name = "NAME")]
    cpu: Option<String>,
    /// Only these GPUs of the topology, as CUDA_VISIBLE_DEVICES would give them (e.g.
    /// 0,1,2,4,5 of a cube-mesh).
    #[arg(long, value_name = "LIST")]
    gpus: Option<String>,
}

impl MachineArgs {
    fn given(&self) -> bool {
        self.topo.is_some() || self.nvidia_smi_topo.is_some() || self.here
    }
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("machine").required(true).args(["topo", "nvidia_smi_topo", "here"])))]
struct SimArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Number of hosts.
    #[arg(long, default_value_t = 1)]
    hosts: u32,
    /// Ranks per host (default: the topology's GPUs; 1 with --here).
    #[arg(long)]
    ranks_per_host: Option<u32>,
    /// Uneven hosts instead of --hosts x --ranks-per-host, e.g. 3,1,2.
    #[arg(long, value_name = "SHAPE", conflicts_with_all = ["hosts", "ranks_per_host"])]
    host_shape: Option<String>,
    #[command(flatten)]
    net: NetArgs,
    /// Network latency per message, microseconds.
    #[arg(long, default_value_t = acspeed::model::NET_LATENCY_US)]
    net_latency_us: f64,
    /// Message sizes (bytes; 4K, 64M, 1G accepted), comma-separated.
    #[arg(long, default_value = "4K,64K,1M,16M,128M")]
    sizes: String,
    /// Algorithms to show (default: every candidate), comma-separated.
    #[arg(long)]
    algo: Option<String>,
    /// allreduce, broadcast or reduce.
    #[arg(long, default_value = "allreduce")]
    collective: String,
    /// Element type.
    #[arg(long, default_value = "f32")]
    dtype: acspeed::DType,
    /// The executor's segment size (ACSPEED_SEGMENT_BYTES; default: its default).
    #[arg(long)]
    segment: Option<String>,
    /// Print {"rows": [...], "host": {...}}; rows have algo, bytes, time_us, busbw_gbps,
    /// selected.
    #[arg(long)]
    json: bool,
    /// With --here: use this host model (the "host" object of an earlier --json run)
    /// instead of measuring again.
    #[arg(long, value_name = "FILE", requires = "here")]
    host_model: Option<PathBuf>,
    /// Cores per host available to the job (e.g. emulated hosts sharing one machine).
    #[arg(long)]
    cores_per_host: Option<f64>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acspeed: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn parse_size(s: &str) -> Result<usize> {
    acspeed_core::config::parse_size(s.trim())
        .with_context(|| format!("'{s}' is not a size (e.g. 4096, 4K, 64M, 1G)"))
}

fn load_topo(args: &MachineArgs) -> Result<Option<acspeed_core::topology::TopoDescription>> {
    let Some(mut d) = read_topo(args)? else {
        if args.gpu.is_some() || args.cpu.is_some() || args.gpus.is_some() {
            bail!("--gpu, --cpu and --gpus describe a topology: give --topo or --nvidia-smi-topo");
        }
        return Ok(None);
    };
    if let Some(g) = &args.gpu {
        if acspeed_core::topology::gpus::gpu_spec(g).is_none() {
            let known: Vec<&str> = acspeed_core::topology::gpus::GPUS
                .iter()
                .map(|s| s.key)
                .collect();
            bail!("--gpu '{g}' is no GPU the model knows; names containing one of: {known:?}");
        }
        d.gpu_name = Some(g.clone());
    }
    if let Some(c) = &args.cpu {
        d.cpu_name = Some(c.clone());
    }
    if let Some(list) = &args.gpus {
        let picked = list
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(|_| anyhow::anyhow!("--gpus '{list}': expected GPU indices like 0,1,2,4,5"))?;
        d = d.select_gpus(&picked)?;
    }
    Ok(Some(d))
}

fn read_topo(args: &MachineArgs) -> Result<Option<acspeed_core::topology::TopoDescription>> {
    if let Some(f) = &args.topo {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(Some(
            acspeed_core::topology::TopoDescription::from_json(&text)
                .with_context(|| format!("parsing {}", f.display()))?,
        ));
    }
    if let Some(f) = &args.nvidia_smi_topo {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(Some(
            nvsmi::parse(&text).with_context(|| format!("parsing {}", f.display()))?,
        ));
    }
    Ok(None)
}

fn simulate(args: SimArgs) -> Result<()> {
    let topo = load_topo(&args.machine)?;
    let gpus = topo.as_ref().map(|d| d.gpus.len() as u32);
    let shape: Vec<u32> = match &args.host_shape {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--host-shape '{s}': expected rank counts like 3,1,2"))?,
        None => {
            let r = args.ranks_per_host.or(gpus).unwrap_or(1);
            vec![r; args.hosts as usize]
        }
    };
    if shape.is_empty() || shape.contains(&0) {
        bail!("every host needs at least one rank (hosts {shape:?})");
    }
    let sizes = args
        .sizes
        .split(',')
        .map(parse_size)
        .collect::<Result<Vec<_>>>()?;
    let algos = match &args.algo {
        Some(a) => a
            .split(',')
            .map(|x| Algorithm::from_name(x).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let spec = SimulateSpec {
        source: match topo {
            Some(d) => HostSource::Topo(Box::new(d)),
            None => HostSource::Here,
        },
        shape: shape.clone(),
        net: args.net.model(args.net_latency_us),
        sizes,
        algos,
        collective: collective_named(&args.collective)?,
        dtype: args.dtype,
        segment_bytes: match &args.segment {
            Some(s) => parse_size(s)?,
            None => acspeed_core::schedule::DEFAULT_SEGMENT_BYTES,
        },
    };
    let here = match &args.host_model {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
            let h = v.get("host").cloned().unwrap_or(v);
            Some(
                serde_json::from_value::<acspeed_core::sim::HostModel>(h)
                    .with_context(|| format!("{}: not a host model", f.display()))?,
            )
        }
        None => None,
    };
    let mut cluster = cluster_of(&spec, here.as_ref())?;
    if let Some(c) = args.cores_per_host {
        if c <= 0.0 {
            bail!("--cores-per-host must be positive");
        }
        cluster.hosts.iter_mut().for_each(|h| h.cores = c);
    }
    let t0 = std::time::Instant::now();
    let rows = simulate_rows(&spec, &cluster)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "rows": rows, "host": cluster.hosts[0] }))?
        );
        return Ok(());
    }
    let h = &cluster.hosts[0];
    println!(
        "# acspeed simulate (predicted): hosts {:?}; host {}; network {} Gbit/s per host{}, {} stream(s), {} us; {} {}, segment {} (at least 1/256 of a message, as the selector)",
        shape,
        match &h.kind {
            acspeed_core::sim::HostKind::Cpu => format!(
                "cpu x{} cores, copy {:.1} GB/s, reduce {:.1} GB/s, shm stream {:.1} GB/s (slots) / {:.1} GB/s (CMA), message {:.1} us",
                h.cores, h.copy_gbps, h.reduce_gbps, h.shm_gbps, h.shm_cma_gbps, h.latency_us
            ),
            acspeed_core::sim::HostKind::Gpu { model, .. } => format!("{} devices from topology", model.devices.len()),
        },
        args.net.net_gbps,
        args.net.flow_gbps.map(|f| format!(", {f} Gbit/s per flow")).unwrap_or_default(),
        args.net.streams,
        args.net_latency_us,
        args.collective,
        args.dtype,
        args.segment.clone().unwrap_or_else(|| format!(
            "{}K",
            acspeed_core::schedule::DEFAULT_SEGMENT_BYTES >> 10
        ))
    );
    print!("{}", format_rows(&rows));
    println!("# simulated in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Linearity(args) => linearity(args),
        Cmd::Explain(args) => explain(args),
        Cmd::Simulate(args) => simulate(args),
        Cmd::Topo {
            json,
            nvidia_smi_topo,
            sysfs_root,
            dump,
        } => {
            let cfg = Config::from_env()?;
            let d: TopoDescription = if let Some(f) = nvidia_smi_topo {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let mut d =
                    nvsmi::parse(&text).with_context(|| format!("parsing {}", f.display()))?;
                d.source = format!("nvidia-smi text {}", f.display());
                d
            } else if let Some(root) = sysfs_root {
                probe::probe(&root)?
            } else {
                probe::discover(&cfg)?
            };
            if let Some(f) = dump {
                std::fs::write(&f, d.to_json())
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            let model = TopoModel::from_description(&d)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "description": d, "model": model })
                    )?
                );
            } else {
                print!("{}", render(&d));
                let spec = d.gpu_spec();
                println!(
                    "\nModel: GPUs as {} ({}), {} GB/s per NVLink, PCIe {:.0} GB/s each way; \
                     inter-socket {:.0} GB/s ({}); per ring step {} us over NVLink, {} us over \
                     PCIe (NCCL's figures: docs/GPU_MODEL.md)",
                    spec.key,
                    if d.gpu_name.is_some() {
                        "named"
                    } else {
                        "assumed: no GPU name given"
                    },
                    spec.nvlink_gbps(),
                    spec.pcie_gbps(),
                    model.socket_gbps,
                    acspeed_core::topology::gpus::inter_socket_gbps(d.cpu_name.as_deref()).1,
                    acspeed_core::topology::gpus::RING_STEP_NVLINK_US,
                    acspeed_core::topology::gpus::RING_STEP_PCIE_US,
                );
            }
            Ok(())
        }
    }
}

fn lin_params(args: &LinArgs) -> Result<(String, u64)> {
    Ok(match args.params {
        Some(p) if p > 0 => (format!("{p} params"), p),
        Some(_) => bail!("--params must be positive"),
        None => (
            args.model.clone(),
            acspeed::linearity::model_params(&args.model)?,
        ),
    })
}

fn linearity(args: LinArgs) -> Result<()> {
    use acspeed::linearity as lin;
    // From numbers.
    if let (Some(t1), Some(tn)) = (args.single, args.multi) {
        let (n, what) = match (args.hosts, args.workers) {
            (Some(h), _) => (h, "hosts"),
            (None, Some(w)) => (w, "workers"),
            (None, None) => bail!("--single/--multi need --workers N (or --hosts H)"),
        };
        let l = lin::linearity(t1, tn, n)?;
        let v = lin::verdict(l, None, None, None);
        if args.json {
            println!(
                "{}",
                serde_json::json!({"linearity": l, "workers": args.workers.unwrap_or(n), "hosts": args.hosts,
                    "throughput": tn, "single_throughput": t1, "exposed_comm_frac": null,
                    "overlap_frac": null, "algo": null, "verdict": v})
            );
        } else {
            println!("linearity over {n} {what}: {tn} / ({t1} x {n}) = {l:.3}\n{v}");
        }
        return Ok(());
    }
    // Predict.
    if args.machine.given() {
        return linearity_predict(&args);
    }
    linearity_measure(&args)
}

/// A byte count as the size options and variables spell it (`256K`, `4M`).
fn size_arg(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

fn linearity_predict(args: &LinArgs) -> Result<()> {
    use acspeed::linearity as lin;
    let (model, params) = lin_params(args)?;
    let topo = load_topo(&args.machine)?;
    let rph = args
        .ranks_per_host
        .or(topo.as_ref().map(|d| d.gpus.len() as u32))
        .unwrap_or(1);
    let max_hosts = args.hosts.unwrap_or(1).max(1);
    let host = match &topo {
        Some(d) => acspeed_core::sim::HostModel::gpu(d)?,
        None => acspeed_tools::simulate::measure_here()?,
    };
    let net = args.net.model(acspeed::model::NET_LATENCY_US);
    let mut rows = Vec::new();
    let mut h = 1;
    while h <= max_hosts {
        let cluster = acspeed_core::sim::Cluster::new(
            vec![host.clone(); h as usize],
            &vec![rph; h as usize],
            net.clone(),
        )?;
        rows.extend(lin::predict_steps(
            &cluster,
            params,
            args.compute_ms,
            args.bucket_mb,
            lin::Pipeline::default(),
        )?);
        if h == max_hosts {
            break;
        }
        h = (h * 2).min(max_hosts);
    }
    lin::host_linearity(&mut rows);
    // Recommendation at the largest scale: the best algorithm, then its bucket size and
    // sockets per peer.
    let top: Vec<&lin::Predicted> = rows.iter().filter(|r| r.hosts == max_hosts).collect();
    let best = top
        .iter()
        .max_by(|a, b| a.linearity.total_cmp(&b.linearity))
        .copied();
    let mut best_bucket = (args.bucket_mb, best.map_or(0.0, |b| b.linearity));
    if let Some(b) = best {
        let cluster = acspeed_core::sim::Cluster::new(
            vec![host.clone(); max_hosts as usize],
            &vec![rph; max_hosts as usize],
            net.clone(),
        )?;
        for mb in [1.0, 5.0, 25.0, 100.0] {
            let pipe = lin::Pipeline::default();
            if let Some(p) =
                lin::predict_step_of(&cluster, params, args.compute_ms, mb, pipe, &b.algo)?
            {
                if p.linearity > best_bucket.1 + 1e-9 {
                    best_bucket = (mb, p.linearity);
                }
            }
        }
    }
    let mut best_streams = (args.net.streams, best_bucket.1);
    if let (Some(b), true) = (best, max_hosts > 1) {
        for k in [1u32, 2, 4, 8] {
            let cluster = acspeed_core::sim::Cluster::new(
                vec![host.clone(); max_hosts as usize],
                &vec![rph; max_hosts as usize],
                NetModel {
                    streams: k,
                    ..net.clone()
                },
            )?;
            let pipe = lin::Pipeline::default();
            let bucket = best_bucket.0;
            if let Some(p) =
                lin::predict_step_of(&cluster, params, args.compute_ms, bucket, pipe, &b.algo)?
            {
                if p.linearity > best_streams.1 * 1.01 {
                    best_streams = (k, p.linearity);
                }
            }
        }
    }
    // Then the pipeline (segments in flight and their size) at that bucket size and streams.
    let mut best_pipe = (lin::Pipeline::default(), best_streams.1);
    if let Some(b) = best {
        let cluster = acspeed_core::sim::Cluster::new(
            vec![host.clone(); max_hosts as usize],
            &vec![rph; max_hosts as usize],
            NetModel {
                streams: best_streams.0,
                ..net.clone()
            },
        )?;
        for depth in [2, 4, 8] {
            for seg in [64usize << 10, 256 << 10, 1 << 20, 4 << 20] {
                let pipe = lin::Pipeline {
                    depth,
                    segment_bytes: seg,
                };
                let bucket = best_bucket.0;
                if let Some(p) =
                    lin::predict_step_of(&cluster, params, args.compute_ms, bucket, pipe, &b.algo)?
                {
                    if p.linearity > best_pipe.1 * 1.01 {
                        best_pipe = (pipe, p.linearity);
                    }
                }
            }
        }
    }
    let verdicts: Vec<String> = top
        .iter()
        .map(|r| {
            let rec = best.filter(|b| b.linearity > r.linearity * 1.01).map(|b| {
                format!(
                    "ACSPEED_ALGO={} predicted linearity {:.2} (+{:.0}% throughput)",
                    b.algo,
                    b.linearity,
                    (b.linearity / r.linearity - 1.0) * 100.0
                )
            });
            format!(
                "{}: {}",
                r.algo,
                lin::verdict(r.linearity, Some(r.exposed_comm_frac), None, rec.as_deref())
            )
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "predict", "model": model, "params": params, "compute_ms": args.compute_ms,
                "net_gbps": args.net.net_gbps, "ranks_per_host": rph, "rows": rows,
                "linearity": best.map(|b| b.linearity), "workers": best.map(|b| b.workers),
                "throughput": best.map(|b| b.workers as f64 * 1e3 / b.step.step_ms),
                "exposed_comm_frac": best.map(|b| b.exposed_comm_frac),
                "overlap_frac": best.map(|b| b.overlap_frac),
                "algo": best.map(|b| b.algo.clone()),
                "recommended_bucket_mb": best_bucket.0,
                "recommended_streams": best_streams.0,
                "recommended_pipeline_depth": best_pipe.0.depth,
                "recommended_segment_bytes": best_pipe.0.segment_bytes,
                "verdict": verdicts,
            })
        );
        return Ok(());
    }
    println!(
        "# acspeed linearity (predicted by simulation): model {model} ({params} params, buckets {} MiB), compute {} ms/step, {rph} ranks per host, network {} Gbit/s per host",
        args.bucket_mb, args.compute_ms, args.net.net_gbps
    );
    println!(
        "{:>6} {:>8}  {:<12} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "hosts", "workers", "algo", "step_ms", "linearity", "per-host", "exposed%", "overlap%"
    );
    for r in &rows {
        println!(
            "{:>6} {:>8}  {:<12} {:>9.1} {:>10.3} {:>10} {:>8.0}% {:>8.0}%",
            r.hosts,
            r.workers,
            r.algo,
            r.step.step_ms,
            r.linearity,
            r.host_linearity.map_or("-".into(), |l| format!("{l:.3}")),
            r.exposed_comm_frac * 100.0,
            r.overlap_frac * 100.0
        );
    }
    for v in verdicts {
        println!("{v}");
    }
    if let Some(b) = best {
        println!(
            "recommended at {max_hosts} host(s): ACSPEED_ALGO={} with {} MiB buckets, ACSPEED_NSTREAMS={}, ACSPEED_PIPELINE_DEPTH={} and ACSPEED_SEGMENT_BYTES={} (predicted linearity {:.2}, now {:.2})",
            b.algo,
            best_bucket.0,
            best_streams.0,
            best_pipe.0.depth,
            size_arg(best_pipe.0.segment_bytes),
            best_pipe.1,
            b.linearity
        );
    }
    if let Some(png) = &args.plot {
        let cluster = acspeed_core::sim::Cluster::new(
            vec![host.clone(); max_hosts as usize],
            &vec![rph; max_hosts as usize],
            net.clone(),
        )?;
        let mut d = acspeed_tools::charts::ChartData {
            title: format!(
                "acspeed linearity (predicted): {model}, compute {} ms/step, {rph} ranks per host, {} Gbit/s",
                args.compute_ms, args.net.net_gbps
            ),
            lin_x: "hosts".into(),
            ..Default::default()
        };
        for r in &rows {
            match d.linearity.iter_mut().find(|s| s.0 == r.algo) {
                Some(s) => s.1.push((r.hosts as f64, r.linearity)),
                None => d
                    .linearity
                    .push((r.algo.clone(), vec![(r.hosts as f64, r.linearity)])),
            }
        }
        let sizes: Vec<usize> = (0..7).map(|k| (64usize << 10) << (2 * k)).collect();
        let spec = acspeed_tools::simulate::SimulateSpec {
            source: acspeed_tools::simulate::HostSource::Here,
            shape: vec![rph; max_hosts as usize],
            net: net.clone(),
            sizes,
            algos: Vec::new(),
            collective: acspeed_core::Collective::AllReduce,
            dtype: acspeed::DType::F32,
            segment_bytes: acspeed_core::schedule::DEFAULT_SEGMENT_BYTES,
        };
        for row in acspeed_tools::simulate::simulate_rows(&spec, &cluster)? {
            match d.busbw.iter_mut().find(|s| s.0 == row.algo) {
                Some(s) => s.1.push((row.bytes as f64, row.busbw_gbps)),
                None => d
                    .busbw
                    .push((row.algo.clone(), vec![(row.bytes as f64, row.busbw_gbps)])),
            }
        }
        d.steps = top
            .iter()
            .map(|r| (r.algo.clone(), r.step.clone()))
            .collect();
        acspeed_tools::charts::render(png, &d)?;
        eprintln!("charts written to {}", png.display());
    }
    Ok(())
}

fn linearity_measure(args: &LinArgs) -> Result<()> {
    use acspeed_tools::linearity_measure::{measure, recommend, MeasureSpec};
    let (model, params) = lin_params(args)?;
    let Some(workers) = args.workers else {
        bail!("give --workers N (measure), --single/--multi (from numbers) or --topo/--nvidia-smi-topo/--here (predict)");
    };
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    if std::env::var_os("RANK").is_none() {
        // Start the ranks; each re-runs this command as one rank of the job.
        let child = acspeed_tools::launch::child_args(&[]);
        let ok = acspeed_tools::launch::run_local(
            "acspeed linearity",
            &child,
            workers,
            None,
            std::time::Duration::from_secs(args.time_limit),
        )?;
        if !ok {
            bail!("a rank failed");
        }
        return Ok(());
    }
    let launch = acspeed::LaunchEnv::from_env()?;
    if launch.world_size != workers {
        bail!(
            "--workers {workers} but WORLD_SIZE is {}",
            launch.world_size
        );
    }
    let algos = match &args.algo {
        Some(a) => a
            .split(',')
            .map(|x| match x.trim() {
                "auto" => Ok(None),
                n => Algorithm::from_name(n)
                    .map(Some)
                    .map_err(anyhow::Error::from),
            })
            .collect::<Result<Vec<_>>>()?,
        None => vec![None, Some(Algorithm::Ring)],
    };
    let comm = acspeed::init(&launch, Config::from_env()?).context("joining the job")?;
    let spec = MeasureSpec {
        sweep: args.plot.is_some(),
        model: model.clone(),
        params,
        compute_ms: args.compute_ms,
        bucket_mb: args.bucket_mb,
        steps: args.steps.max(1),
        warmup: 2,
        algos,
    };
    let multi_host = comm.plan_context().nhosts() > 1;
    let total = (1 + spec.steps.max(3))
        + (spec.algos.len() + usize::from(multi_host)) * (spec.warmup + spec.steps);
    let bar = if comm.rank() == 0 && !args.json {
        let pb = indicatif::ProgressBar::new(total as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "measuring {bar:40} {pos}/{len} steps, {elapsed} elapsed, about {eta} left",
            )
            .map_err(|e| anyhow::anyhow!("progress bar template: {e}"))?,
        );
        Some(pb)
    } else {
        None
    };
    let tick = || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    };
    let mut rows = measure(&comm, &spec, &tick)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    recommend(&mut rows);
    comm.barrier()?;
    if comm.rank() != 0 {
        return Ok(());
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "mode": "measure", "rows": rows,
            "linearity": rows.first().map(|r| r.linearity), "workers": workers,
            "host_linearity": rows.first().and_then(|r| r.host_linearity),
            "throughput": rows.first().map(|r| r.throughput),
            "exposed_comm_frac": rows.first().map(|r| r.exposed_comm_frac),
            "overlap_frac": rows.first().map(|r| r.overlap_frac),
            "algo": rows.first().map(|r| r.algo.clone()),
            "verdict": rows.first().map(|r| r.verdict.clone()) })
        );
        return Ok(());
    }
    let peer = if workers > 1 {
        comm.transport_name(1)
    } else {
        "none".into()
    };
    println!(
        "# acspeed linearity (measured): model {model} ({params} params, {} MiB buckets), compute {} ms/step (emulated GPU time), {workers} workers on {} host(s), transport to rank 1: {peer}; one-worker step {:.1} ms",
        args.bucket_mb,
        args.compute_ms,
        comm.plan_context().nhosts(),
        rows.first().map_or(0.0, |r| r.single_step_ms)
    );
    println!(
        "{:<14} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>11} {:>8}",
        "algo",
        "step_ms",
        "steps/s",
        "linearity",
        "per-host",
        "exposed%",
        "overlap%",
        "busbw_GB/s",
        "of link"
    );
    for r in &rows {
        println!(
            "{:<14} {:>9.1} {:>11.2} {:>10.3} {:>9} {:>8.0}% {:>8.0}% {:>11.3} {:>8}",
            r.algo,
            r.step.step_ms,
            r.throughput,
            r.linearity,
            r.host_linearity.map_or("-".into(), |l| format!("{l:.3}")),
            r.exposed_comm_frac * 100.0,
            r.overlap_frac * 100.0,
            r.busbw_gbps,
            args.link_gbps.map_or("-".into(), |l| format!(
                "{:.0}%",
                r.busbw_gbps * 8.0 / l * 100.0
            ))
        );
    }
    for r in &rows {
        println!("{}: {}", r.algo, r.verdict);
    }
    if args.with_prediction {
        let ctx = comm.plan_context();
        let host = acspeed_tools::simulate::measure_here()?;
        let cluster = acspeed_core::sim::Cluster::new(
            vec![host; ctx.nhosts()],
            &ctx.shape(),
            args.net.model(acspeed::model::NET_LATENCY_US),
        )?;
        let pred = acspeed::linearity::predict_steps(
            &cluster,
            params,
            args.compute_ms,
            args.bucket_mb,
            acspeed::linearity::Pipeline {
                depth: comm.config().exec.pipeline_depth,
                segment_bytes: comm.config().exec.segment_bytes,
            },
        )?;
        println!(
            "predicted by the simulator (this machine measured now; hosts joined at {} Gbit/s):",
            args.net.net_gbps
        );
        println!(
            "{:<14} {:>18} {:>18}",
            "algo", "step_ms meas/pred", "linearity meas/pred"
        );
        for r in &rows {
            let name = r.algo.trim_start_matches("auto(").trim_end_matches(')');
            let name = if name == "hybrid" {
                "hybrid:ring"
            } else {
                name
            };
            if let Some(p) = pred.iter().find(|p| p.algo == name) {
                println!(
                    "{:<14} {:>8.1} / {:<8.1} {:>8.3} / {:<8.3}",
                    r.algo, r.step.step_ms, p.step.step_ms, r.linearity, p.linearity
                );
            }
        }
    }
    if let Some(png) = &args.plot {
        let d = acspeed_tools::charts::ChartData {
            title: format!(
                "acspeed linearity (measured): {model}, compute {} ms/step, {workers} workers on {} host(s)",
                args.compute_ms,
                comm.plan_context().nhosts()
            ),
            lin_x: "workers".into(),
            linearity: rows
                .iter()
                .map(|r| (r.algo.clone(), vec![(1.0, 1.0), (workers as f64, r.linearity)]))
                .collect(),
            busbw: rows
                .iter()
                .map(|r| (r.algo.clone(), r.sweep.iter().map(|(b, g)| (*b as f64, *g)).collect()))
                .collect(),
            steps: rows.iter().map(|r| (r.algo.clone(), r.step.clone())).collect(),
        };
        acspeed_tools::charts::render(png, &d)?;
        eprintln!("charts written to {}", png.display());
    }
    Ok(())
}

fn explain(args: ExplainArgs) -> Result<()> {
    let cfg = Config::from_env()?;
    let shape = acspeed_tools::launch::host_shape("--host-shape", &args.host_shape)?;
    let coll = collective_named(&args.collective)?;
    let bytes = parse_size(&args.bytes)?;
    // The job as init builds it: the topology given here (a machine you are not on), else
    // ACSPEED_TOPO_FILE; then the same policy the communicator decides with.
    let found = match load_topo(&args.machine)? {
        Some(d) => acspeed::model::Discovery::of(&cfg, Some(d))?,
        None => acspeed::model::discover(&cfg)?,
    };
    let model = found.agree_shape(&cfg, &shape)?;
    let ctx = &model.context;
    let log = acspeed::log::Logger::new(cfg.job.log, 0);
    let policy = acspeed::policy::Policy::for_job(&cfg, &model, log)?;
    let decision = policy.decide(coll, bytes);
    let algo = decision.algorithm;
    println!(
        "{}",
        acspeed::policy::explain_line(ctx, coll, bytes, &decision)
    );
    if let Some(d) = model.description.as_ref().filter(|d| !d.gpus.is_empty()) {
        if let Some(line) = acspeed_tools::published::nccl_line(d, &shape)? {
            println!("{line}");
        }
    }
    let host = match &model.description {
        Some(d) if !d.gpus.is_empty() => acspeed_core::sim::HostModel::gpu(d)?,
        _ if args.machine.here => acspeed_tools::simulate::measure_here()?,
        _ => return Ok(()),
    };
    let cluster = acspeed_core::sim::Cluster::new(
        vec![host; shape.len()],
        &shape,
        NetArgs {
            streams: cfg.transport.nstreams.unwrap_or(args.net.streams),
            ..args.net.clone()
        }
        .model(acspeed::model::NET_LATENCY_US),
    )?;
    let cands = acspeed_algorithms::select::candidates(coll, ctx);
    let preds = acspeed_algorithms::select::rank_candidates(
        coll,
        &cluster,
        &cands,
        bytes,
        4,
        cfg.exec.segment_bytes,
    )?;
    println!("predicted (simulated), fastest first:");
    for p in preds {
        println!(
            "  {:<12} {:>12.1} us{}",
            acspeed_algorithms::select::row_name(p.algo),
            p.time_us,
            if p.algo == algo { "   <- runs" } else { "" }
        );
    }
    Ok(())
}
