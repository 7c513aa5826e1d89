//! `acspeed simulate`: predicted time and bus bandwidth of every algorithm at every size, on
//! a topology file, a saved `nvidia-smi topo -m` text, or this machine as measured now
//! (`--here`), times a number of hosts joined by a network of a given rate.

use acspeed_algorithms::select::{candidates, context_of, rank_candidates, row_name};
use acspeed_algorithms::Algorithm;
use acspeed_core::kernels;
use acspeed_core::plan::Collective;
use acspeed_core::sim::{Cluster, HostModel, NetModel};
use acspeed_core::topology::TopoDescription;
use acspeed_core::{Config, DType, Error, ReduceOp, Result};
use serde::Serialize;
use std::time::Instant;

/// Where the host model comes from.
#[derive(Clone, Debug)]
pub enum HostSource {
    /// A topology description (GPU host; ranks are its GPUs).
    Topo(Box<TopoDescription>),
    /// This machine, measured now.
    Here,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulateSpec {
    pub source: HostSource,
    /// Ranks per host (host by host).
    pub shape: Vec<u32>,
    pub net: NetModel,
    pub sizes: Vec<usize>,
    /// Empty: every candidate.
    pub algos: Vec<Algorithm>,
    pub collective: Collective,
    pub dtype: DType,
    pub segment_bytes: usize,
}

/// One row of the output (`--json` prints `{"rows": [...]}`).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub algo: String,
    pub bytes: usize,
    pub time_us: f64,
    pub busbw_gbps: f64,
    pub selected: bool,
}

/// One core's copy and reduce rates (GB/s), the number of cores, and the shared-memory
/// message latency (us) of this machine, measured in about a second.
pub fn measure_here() -> Result<HostModel> {
    // Larger than any last-level cache: the rates of data that streams through DRAM.
    const BYTES: usize = 256 << 20;
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let best = |f: &mut dyn FnMut()| {
        let mut t = f64::INFINITY;
        for _ in 0..5 {
            let t0 = Instant::now();
            f();
            t = t.min(t0.elapsed().as_secs_f64());
        }
        t
    };
    // SAFETY: both buffers hold BYTES bytes and do not overlap.
    let copy_s = best(&mut || unsafe {
        kernels::copy::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), BYTES)
    });
    let reduce_s = best(&mut || kernels::reduce(DType::F32, ReduceOp::Sum, &mut dst, &src));
    // The same on data that stays in the last-level cache: a quarter of it (source and
    // destination), as a collective's buffers that fit there are spread over several ranks.
    let llc = llc_bytes();
    let small = (llc.max(16 << 20) / 8).min(BYTES);
    let reps = 8;
    // SAFETY: both buffers hold at least `small` bytes and do not overlap.
    let copy_c = best(&mut || {
        for _ in 0..reps {
            unsafe { kernels::copy::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), small) }
        }
    });
    let reduce_c = best(&mut || {
        for _ in 0..reps {
            kernels::reduce(DType::F32, ReduceOp::Sum, &mut dst[..small], &src[..small])
        }
    });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let cfg = Config::default();
    let shm = measure_shm()?;
    Ok(HostModel::cpu(
        cores,
        BYTES as f64 / copy_s / 1e9,
        BYTES as f64 / reduce_s / 1e9,
        shm.latency_us,
    )
    .with_shm(shm.slot_gbps, shm.cma_gbps, cfg.transport.shm_cma_min)
    .with_stage(
        shm.stage_gbps,
        shm.stage_stream_gbps,
        acspeed_transports::shm::STAGE_STREAM_FROM,
    )
    .with_cache(
        llc,
        (small * reps) as f64 / copy_c / 1e9,
        (small * reps) as f64 / reduce_c / 1e9,
    ))
}

/// The last-level cache's size from sysfs (0 when the machine does not say).
fn llc_bytes() -> usize {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8)
        .filter_map(|i| std::fs::read_to_string(dir.join(format!("index{i}/size"))).ok())
        .filter_map(|t| acspeed_core::config::parse_size(t.trim()))
        .max()
        .unwrap_or(0)
}

/// What two local ranks measure through the real shared-memory transport.
struct ShmRates {
    latency_us: f64,
    slot_gbps: f64,
    cma_gbps: f64,
    /// CPU-Reduce between the two: below and from the staging area's streaming size.
    stage_gbps: f64,
    stage_stream_gbps: f64,
}

/// Two ranks as two processes (forked from this one: [`crate::local_ranks`]) over the
/// shared-memory transport with default settings. Half a 4-byte allreduce (two messages in a
/// row) is one message's latency, wake-ups included. A two-rank ring allreduce of S bytes
/// moves S each way as two steps of S/2, both directions at once with the reduction fused
/// into the receive, so S / time is one stream's rate as collectives see it (contention
/// between the directions included: a one-way copy of a cached buffer, or ranks as threads
/// of one process, run several times faster and would mislead). At 4 MiB that is the slot
/// path, at 64 MiB cross-memory attach (the transport switches at ACSPEED_SHM_CMA_MIN).
/// A two-rank CPU-Reduce run at 1 MiB and 64 MiB gives the staging area's two rates the same
/// way. Two-rank shared-memory predictions are therefore calibrated, not independent; more
/// ranks and other shapes are not.
fn measure_shm() -> Result<ShmRates> {
    let ring = bench_rows(4, 64 << 20, 16, None)?;
    // CPU-Reduce at 1 MiB (ordinary stores) and 64 MiB (streaming), the same two processes'
    // worth of contention.
    let stage = bench_rows(1 << 20, 64 << 20, 64, Some("cpu_reduce"))?;
    Ok(ShmRates {
        latency_us: time_at(&ring, 4)? / 2.0,
        slot_gbps: rate_at(&ring, 4 << 20)?,
        cma_gbps: rate_at(&ring, 64 << 20)?,
        stage_gbps: rate_at(&stage, 1 << 20)?,
        stage_stream_gbps: rate_at(&stage, 64 << 20)?,
    })
}

/// Rows of a two-rank allreduce sweep from `min` to `max` bytes (times `factor`), default
/// settings but `algo` when given (`ACSPEED_ALGO` is not read: the measurement is of the
/// default path).
fn bench_rows(
    min: usize,
    max: usize,
    factor: usize,
    algo: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    let mut cfg = Config::from_env()?;
    cfg.policy.algo = match algo {
        Some(a) => acspeed_core::config::AlgoChoice::Named(a.into()),
        None => acspeed_core::config::AlgoChoice::Auto,
    };
    let p = crate::bench::BenchParams {
        min_bytes: min,
        max_bytes: max,
        factor,
        dtype: DType::F32,
        op: ReduceOp::Sum,
        warmup: 2,
        iters: 10,
        check: false,
        corrupt_rank: None,
        per_call: false,
    };
    crate::local_ranks::sweep_on_forked_ranks(2, &cfg, &p, std::time::Duration::from_secs(120))
        .map_err(|e| Error::invalid(format!("measuring shared memory with two local ranks: {e}")))
}

fn time_at(rows: &[serde_json::Value], bytes: u64) -> Result<f64> {
    rows.iter()
        .find(|r| r["bytes"].as_u64() == Some(bytes))
        .and_then(|r| r["time_us"].as_f64())
        .ok_or_else(|| Error::invalid(format!("the two-rank sweep gave no row of {bytes} bytes")))
}

/// Bytes per microsecond / 1e3 = GB/s.
fn rate_at(rows: &[serde_json::Value], bytes: u64) -> Result<f64> {
    Ok(bytes as f64 / time_at(rows, bytes)? / 1e3)
}

/// Builds the cluster model the spec describes.
pub fn cluster_of(spec: &SimulateSpec, here: Option<&HostModel>) -> Result<Cluster> {
    let host = match (&spec.source, here) {
        (HostSource::Topo(d), _) => HostModel::gpu(d)?,
        (HostSource::Here, Some(h)) => h.clone(),
        (HostSource::Here, None) => measure_here()?,
    };
    Cluster::new(vec![host; spec.shape.len()], &spec.shape, spec.net.clone())
}

/// Predicts every (algorithm, size); marks the selector's pick per size.
pub fn simulate_rows(spec: &SimulateSpec, cluster: &Cluster) -> Result<Vec<Row>> {
    let ctx = context_of(cluster);
    let cands = candidates(spec.collective, &ctx);
    let shown: Vec<Algorithm> = if spec.algos.is_empty() {
        cands.clone()
    } else {
        for a in &spec.algos {
            if !a.serves(spec.collective) {
                return Err(Error::invalid(format!(
                    "--algo {}: it does not serve {}",
                    a.name(),
                    spec.collective.name()
                )));
            }
        }
        spec.algos.clone()
    };
    let n = cluster.nranks() as f64;
    let es = spec.dtype.size();
    let mut rows = Vec::new();
    for &bytes in &spec.sizes {
        let bytes = (bytes / es).max(1) * es;
        // The selector's segments (at least 1/256 of the message), so the mark is its pick.
        let seg = acspeed_algorithms::select::sim_segment_bytes(spec.segment_bytes, bytes);
        // The selector chooses among all candidates, whatever subset is shown.
        let all = rank_candidates(spec.collective, cluster, &cands, bytes, es, seg)?;
        let pick = all.first().map(|p| p.algo);
        for &a in &shown {
            let time_us = match all.iter().find(|p| p.algo == a) {
                Some(p) => p.time_us,
                None => acspeed_algorithms::select::predict(
                    a,
                    spec.collective,
                    cluster,
                    bytes,
                    es,
                    seg,
                )?,
            };
            let algbw = bytes as f64 / time_us / 1e3;
            let factor = match spec.collective {
                Collective::AllReduce => 2.0 * (n - 1.0) / n,
                _ => 1.0,
            };
            rows.push(Row {
                algo: row_name(a).to_string(),
                bytes,
                time_us,
                busbw_gbps: algbw * factor,
                selected: Some(a) == pick,
            });
        }
    }
    Ok(rows)
}

pub use acspeed_core::plan::collective_named;

/// The table `acspeed simulate` prints.
pub fn format_rows(rows: &[Row]) -> String {
    let mut s = format!(
        "{:>12}  {:<12} {:>12} {:>11}  selected\n",
        "size", "algo", "time_us", "busbw_GB/s"
    );
    for r in rows {
        s.push_str(&format!(
            "{:>12}  {:<12} {:>12.1} {:>11.3}  {}\n",
            r.bytes,
            r.algo,
            r.time_us,
            r.busbw_gbps,
            if r.selected { "*" } else { "" }
        ));
    }
    s
}
