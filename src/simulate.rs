//! `acspeed simulate`: predicted time and bus bandwidth of every algorithm at every size, on
//! a topology file, a saved `nvidia-smi topo -m` text, or this machine as measured now
//! (`--here`), times a number of hosts joined by a network of a given rate.

use acspeed_algorithms::select::{candidates, context_of, rank_candidates, row_name};
use acspeed_algorithms::Algorithm;
use acspeed_core::kernels;
use acspeed_core::plan::{Collective, Rank};
use acspeed_core::sim::{Cluster, HostModel, NetModel};
use acspeed_core::topology::TopoDescription;
use acspeed_core::{Config, DType, Error, ReduceOp, Result};
use serde::Serialize;
use std::time::Instant;

/// Where the host model comes from.
#[derive(Clone, Debug)]
pub enum HostSource {
    /// A topology description (GPU host; ranks are its GPUs).
    Topo(TopoDescription),
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
    const BYTES: usize = 32 << 20;
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
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    Ok(HostModel::cpu(
        cores,
        BYTES as f64 / copy_s / 1e9,
        BYTES as f64 / reduce_s / 1e9,
        measure_shm_latency_us()?,
    ))
}

/// Half the time of a 2-rank, one-element allreduce over shared memory (two messages in a
/// row), median of a few hundred calls: the cost of one small message between local ranks,
/// wake-ups included.
fn measure_shm_latency_us() -> Result<f64> {
    let store = crate::store::MemStore::new();
    let cfg = Config {
        shm: true,
        ..Config::default()
    };
    let times = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u32)
            .map(|r| {
                let (store, cfg) = (store.clone(), cfg.clone());
                s.spawn(move || -> Result<Vec<f64>> {
                    let comm = crate::init_with_store(
                        &*store,
                        "here",
                        r,
                        2,
                        "127.0.0.1".parse().expect("loopback"),
                        cfg,
                    )?;
                    let mut v = [1.0f32];
                    let mut t = Vec::new();
                    for i in 0..300 {
                        let t0 = Instant::now();
                        comm.allreduce(&mut v, ReduceOp::Sum)?;
                        if i >= 50 {
                            t.push(t0.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                    Ok(t)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Aborted("rank panicked".into())))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut t = times.into_iter().next().unwrap_or_default();
    t.sort_by(f64::total_cmp);
    Ok(t.get(t.len() / 2).copied().unwrap_or(10.0) / 2.0)
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
        // The selector chooses among all candidates, whatever subset is shown.
        let all = rank_candidates(
            spec.collective,
            cluster,
            &cands,
            bytes,
            es,
            spec.segment_bytes,
        )?;
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
                    spec.segment_bytes,
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

/// The collective named on the command line.
pub fn collective_named(s: &str) -> Result<Collective> {
    Ok(match s {
        "allreduce" => Collective::AllReduce,
        "broadcast" => Collective::Broadcast { root: Rank(0) },
        "reduce" => Collective::Reduce { root: Rank(0) },
        other => {
            return Err(Error::invalid(format!(
                "--collective {other}: expected allreduce, broadcast or reduce"
            )))
        }
    })
}

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
