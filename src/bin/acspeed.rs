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
use acspeed::simulate::{
    cluster_of, collective_named, format_rows, simulate_rows, HostSource, SimulateSpec,
};
use acspeed::Config;
use acspeed_algorithms::Algorithm;
use acspeed_core::sim::NetModel;
use acspeed_core::topology::{nvsmi, render, TopoDescription, TopoModel, LINK_TABLE};
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
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("machine").required(true).args(["topo", "nvidia_smi_topo", "here"])))]
struct SimArgs {
    /// A topology description (JSON, as `acspeed topo --dump` writes).
    #[arg(long, value_name = "FILE")]
    topo: Option<PathBuf>,
    /// A saved `nvidia-smi topo -m` output.
    #[arg(long, value_name = "FILE")]
    nvidia_smi_topo: Option<PathBuf>,
    /// This machine, measured now (copy and reduce rates, cores, shared-memory latency).
    #[arg(long)]
    here: bool,
    /// Number of hosts.
    #[arg(long, default_value_t = 1)]
    hosts: u32,
    /// Ranks per host (default: the topology's GPUs; 1 with --here).
    #[arg(long)]
    ranks_per_host: Option<u32>,
    /// Uneven hosts instead of --hosts x --ranks-per-host, e.g. 3,1,2.
    #[arg(long, value_name = "SHAPE", conflicts_with_all = ["hosts", "ranks_per_host"])]
    host_shape: Option<String>,
    /// Each host's network rate, Gbit/s.
    #[arg(long, default_value_t = 25.0)]
    net_gbps: f64,
    /// Per-flow cap (one TCP stream), Gbit/s, as cloud networks and netsim impose.
    #[arg(long)]
    flow_gbps: Option<f64>,
    /// Sockets per peer a message is striped over.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// Network latency per message, microseconds.
    #[arg(long, default_value_t = 30.0)]
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
    /// The executor's segment size (ACSPEED_SEGMENT_BYTES).
    #[arg(long, default_value = "256K")]
    segment: String,
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

fn load_topo(args: &SimArgs) -> Result<Option<acspeed_core::topology::TopoDescription>> {
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
    let topo = load_topo(&args)?;
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
            Some(d) => HostSource::Topo(d),
            None => HostSource::Here,
        },
        shape: shape.clone(),
        net: NetModel {
            nic_gbit: args.net_gbps,
            flow_gbit: args.flow_gbps,
            streams: args.streams,
            latency_us: args.net_latency_us,
        },
        sizes,
        algos,
        collective: collective_named(&args.collective)?,
        dtype: args.dtype,
        segment_bytes: parse_size(&args.segment)?,
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
        "# acspeed simulate (predicted): hosts {:?}; host {}; network {} Gbit/s per host{}, {} stream(s), {} us; {} {}, segment {}",
        shape,
        match &h.kind {
            acspeed_core::sim::HostKind::Cpu => format!(
                "cpu x{} cores, copy {:.1} GB/s, reduce {:.1} GB/s, shm stream {:.1} GB/s (slots) / {:.1} GB/s (CMA), message {:.1} us",
                h.cores, h.copy_gbps, h.reduce_gbps, h.shm_gbps, h.shm_cma_gbps, h.latency_us
            ),
            acspeed_core::sim::HostKind::Gpu { model } => format!("{} devices from topology", model.devices.len()),
        },
        args.net_gbps,
        args.flow_gbps.map(|f| format!(", {f} Gbit/s per flow")).unwrap_or_default(),
        args.streams,
        args.net_latency_us,
        args.collective,
        args.dtype,
        args.segment
    );
    print!("{}", format_rows(&rows));
    println!("# simulated in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
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
                println!("\nModel (GB/s one direction, us) per path class:");
                for (k, bw, lat) in LINK_TABLE {
                    println!("  {k:<16} {bw:>6.1} GB/s  {lat:>4.1} us");
                }
            }
            Ok(())
        }
    }
}
