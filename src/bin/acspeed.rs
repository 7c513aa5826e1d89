//! `acspeed`: diagnostics for the machine acspeed runs on.
//!
//! `acspeed topo` prints the device matrix the way `nvidia-smi topo -m` does (plus NICs and
//! NUMA/CPU affinity), from this machine's sysfs and NVML, from a saved `nvidia-smi topo -m`
//! text (`--nvidia-smi-topo FILE`: describe a machine you are not on), from a captured sysfs
//! tree (`--sysfs-root DIR`) or from a description file (`ACSPEED_TOPO_FILE`).

use acspeed::probe;
use acspeed::Config;
use acspeed_core::topology::{nvsmi, render, TopoDescription, TopoModel, LINK_TABLE};
use anyhow::{Context, Result};
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

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
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
