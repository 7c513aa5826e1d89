//! Linearity diagnostics: how data-parallel training scales, why, and what to change.
//!
//! Linearity (ACSpeed's definition) = N-worker throughput / (1-worker throughput x N), from 0
//! to 1. This module holds the parts shared by the three modes of `acspeed linearity`: model
//! presets and DDP-style gradient buckets, the step model (buckets become ready during the
//! backward pass and are allreduced one after another while the backward pass goes on), the
//! arithmetic, and the verdict. Measuring lives in `linearity_measure`; predicting here, on
//! the simulator.

use acspeed_algorithms::select::{candidates, context_of, predict};
use acspeed_algorithms::Algorithm;
use acspeed_core::plan::Collective;
use acspeed_core::sim::Cluster;
use acspeed_core::{Error, Result};
use serde::Serialize;

/// Parameter counts of the presets (fp32 gradients).
pub const MODELS: &[(&str, u64)] = &[
    ("resnet50", 25_557_032),
    ("vgg16", 138_357_544),
    ("bert-base", 110_106_428),
    ("gpt2-medium", 354_823_168),
];

/// Parameters of a preset, or an error listing them.
pub fn model_params(name: &str) -> Result<u64> {
    MODELS
        .iter()
        .find(|(n, _)| *n == name.to_ascii_lowercase())
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            let names: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
            Error::invalid(format!(
                "unknown model '{name}' (presets: {}; or give --params N)",
                names.join(", ")
            ))
        })
}

/// Gradient buckets in the order DDP allreduces them (last layers first): `bucket_mb` MiB
/// each, the remainder last. fp32 gradients.
pub fn buckets(params: u64, bucket_mb: f64) -> Result<Vec<usize>> {
    if params == 0 || bucket_mb <= 0.0 {
        return Err(Error::invalid(
            "need a positive parameter count and bucket size",
        ));
    }
    let total = params as usize * 4;
    let cap = ((bucket_mb * (1 << 20) as f64) as usize / 4 * 4).max(4);
    let mut v = vec![cap; total / cap];
    if total % cap != 0 {
        v.push(total % cap);
    }
    Ok(v)
}

/// One step of one worker, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Step {
    pub compute_ms: f64,
    pub step_ms: f64,
    /// Time spent in allreduce (the union of the busy intervals).
    pub comm_ms: f64,
    /// Step time beyond the compute: communication nobody hid.
    pub exposed_ms: f64,
}

impl Step {
    /// Share of the communication that ran under the compute.
    pub fn overlap_frac(&self) -> f64 {
        if self.comm_ms <= 0.0 {
            1.0
        } else {
            ((self.comm_ms - self.exposed_ms) / self.comm_ms).clamp(0.0, 1.0)
        }
    }
    pub fn exposed_frac(&self) -> f64 {
        if self.step_ms <= 0.0 {
            0.0
        } else {
            self.exposed_ms / self.step_ms
        }
    }
}

/// The DDP step model: a third of the compute is the forward pass, the rest the backward pass,
/// during which bucket `i` becomes ready once its share of the gradients is computed. Buckets
/// are allreduced in order, one at a time (`allreduce_ms[i]` each).
pub fn ddp_step(compute_ms: f64, bucket_bytes: &[usize], allreduce_ms: &[f64]) -> Step {
    let fwd = compute_ms / 3.0;
    let bwd = compute_ms - fwd;
    let total: usize = bucket_bytes.iter().sum::<usize>().max(1);
    let mut done = 0usize;
    let mut comm_free = 0.0f64;
    let mut comm = 0.0;
    for (b, t) in bucket_bytes.iter().zip(allreduce_ms) {
        done += b;
        let ready = fwd + bwd * done as f64 / total as f64;
        let start = comm_free.max(ready);
        comm_free = start + t;
        comm += t;
    }
    let step = compute_ms.max(comm_free);
    Step {
        compute_ms,
        step_ms: step,
        comm_ms: comm,
        exposed_ms: step - compute_ms,
    }
}

/// N-worker throughput over N times the 1-worker throughput.
pub fn linearity(single: f64, multi: f64, workers: u32) -> Result<f64> {
    if single <= 0.0 || multi < 0.0 || workers == 0 {
        return Err(Error::invalid(format!(
            "linearity needs a positive single-worker throughput ({single}), a multi-worker throughput ({multi}) and workers ({workers})"
        )));
    }
    Ok(multi / (single * workers as f64))
}

/// What to tell the user. `exposed_frac` and `recommendation` are `None` when only the
/// throughputs are known.
pub fn verdict(
    lin: f64,
    exposed_frac: Option<f64>,
    straggler: Option<(u32, f64)>,
    recommendation: Option<&str>,
) -> String {
    let rec = recommendation.map(|r| format!("; {r}")).unwrap_or_default();
    let lag = straggler
        .filter(|(_, ms)| *ms >= 1.0)
        .map(|(r, ms)| format!("; slowest rank {r} (others wait {ms:.1} ms for it per step)"))
        .unwrap_or_default();
    match exposed_frac {
        _ if lin >= 0.8 => format!(
            "scales well: linearity {lin:.2} >= 0.8{}{lag}",
            exposed_frac
                .map(|f| format!("; {:.0}% of the step is exposed communication", f * 100.0))
                .unwrap_or_default()
        ),
        Some(f) if f >= 0.15 => format!(
            "communication-bound: linearity {lin:.2} < 0.8 - {:.0}% of the step is exposed allreduce{rec}{lag}",
            f * 100.0
        ),
        Some(f) => format!(
            "not communication-bound: linearity {lin:.2} < 0.8 with only {:.0}% exposed communication; the loss comes from elsewhere (input pipeline, CPU contention, a straggler){lag}",
            f * 100.0
        ),
        None => format!(
            "linearity {lin:.2} {}: measure with `acspeed linearity --workers N` (or predict with --topo) to see how much of the step is communication",
            if lin >= 0.8 { "(>= 0.8, scales well)" } else { "< 0.8" }
        ),
    }
}

/// One predicted configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Predicted {
    pub algo: String,
    pub hosts: u32,
    pub workers: u32,
    pub bucket_mb: f64,
    pub step: Step,
    pub linearity: f64,
    /// Across hosts: the one-host step of the same algorithm over this step (filled in by
    /// [`host_linearity`]).
    pub host_linearity: Option<f64>,
    pub exposed_comm_frac: f64,
    pub overlap_frac: f64,
}

/// Fills `host_linearity` (multi-host throughput / (one-host throughput x hosts)) from the
/// one-host rows of the same algorithm; a host-level algorithm with no one-host row (hybrid)
/// is compared with the best one-host step.
pub fn host_linearity(rows: &mut [Predicted]) {
    let best_one = rows
        .iter()
        .filter(|r| r.hosts == 1)
        .map(|r| r.step.step_ms)
        .fold(f64::INFINITY, f64::min);
    let one: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.hosts == 1)
        .map(|r| (r.algo.clone(), r.step.step_ms))
        .collect();
    for r in rows.iter_mut() {
        let base = one
            .iter()
            .find(|(a, _)| *a == r.algo)
            .map_or(best_one, |(_, t)| *t);
        r.host_linearity = base.is_finite().then(|| base / r.step.step_ms);
    }
}

/// Predicts the step of every candidate algorithm on `cluster` for a model of `params`
/// parameters, `compute_ms` per step and buckets of `bucket_mb` MiB.
/// The executor's pipeline: segments in flight per receive and segment size
/// (`ACSPEED_PIPELINE_DEPTH`, `ACSPEED_SEGMENT_BYTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipeline {
    pub depth: usize,
    pub segment_bytes: usize,
}

impl Default for Pipeline {
    /// The library's defaults.
    fn default() -> Self {
        Pipeline {
            depth: acspeed_core::schedule::DEFAULT_PIPELINE_DEPTH,
            segment_bytes: acspeed_core::schedule::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// A predicted DDP step for every candidate algorithm of the cluster.
pub fn predict_steps(
    cluster: &Cluster,
    params: u64,
    compute_ms: f64,
    bucket_mb: f64,
    pipe: Pipeline,
) -> Result<Vec<Predicted>> {
    predict_some(cluster, params, compute_ms, bucket_mb, pipe, None)
}

/// The predicted DDP step of one algorithm (`--algo` spelling), if it is a candidate.
pub fn predict_step_of(
    cluster: &Cluster,
    params: u64,
    compute_ms: f64,
    bucket_mb: f64,
    pipe: Pipeline,
    algo: &str,
) -> Result<Option<Predicted>> {
    Ok(predict_some(cluster, params, compute_ms, bucket_mb, pipe, Some(algo))?.pop())
}

fn predict_some(
    cluster: &Cluster,
    params: u64,
    compute_ms: f64,
    bucket_mb: f64,
    pipe: Pipeline,
    only: Option<&str>,
) -> Result<Vec<Predicted>> {
    let sizes = buckets(params, bucket_mb)?;
    let ctx = context_of(cluster);
    let mut out = Vec::new();
    for algo in candidates(Collective::AllReduce, &ctx) {
        if only.is_some_and(|o| o != algo_name(algo)) {
            continue;
        }
        let mut ms = Vec::new();
        // Buckets share a size except the last: two simulations per algorithm.
        for &b in &sizes {
            if let Some((_, t)) = ms_cache(&sizes, &ms, b) {
                ms.push(t);
                continue;
            }
            let t = if cluster.nranks() > 1 {
                predict(
                    algo,
                    Collective::AllReduce,
                    cluster,
                    b,
                    pipe.depth,
                    pipe.segment_bytes,
                )? / 1e3
            } else {
                0.0
            };
            ms.push(t);
        }
        let step = ddp_step(compute_ms, &sizes, &ms);
        let n = cluster.nranks() as u32;
        // One worker: the same compute, no communication.
        let lin = compute_ms / step.step_ms;
        out.push(Predicted {
            algo: algo_name(algo),
            hosts: cluster.hosts.len() as u32,
            workers: n,
            bucket_mb,
            linearity: lin,
            host_linearity: None,
            exposed_comm_frac: step.exposed_frac(),
            overlap_frac: step.overlap_frac(),
            step,
        });
    }
    Ok(out)
}

fn ms_cache(sizes: &[usize], ms: &[f64], b: usize) -> Option<(usize, f64)> {
    sizes
        .iter()
        .zip(ms)
        .find(|(s, _)| **s == b)
        .map(|(s, t)| (*s, *t))
}

/// `--algo` spelling.
pub fn algo_name(a: Algorithm) -> String {
    acspeed_algorithms::select::row_name(a).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_numbers() {
        assert!((linearity(100.0, 700.0, 8).unwrap() - 0.875).abs() < 1e-12);
        assert!(linearity(0.0, 1.0, 2).is_err());
        assert!(verdict(0.875, None, None, None).contains("scales well"));
        assert!(verdict(0.5, Some(0.41), None, Some("try X")).starts_with(
            "communication-bound: linearity 0.50 < 0.8 - 41% of the step is exposed allreduce; try X"
        ));
        assert!(verdict(0.5, Some(0.03), Some((5, 12.0)), None).contains("slowest rank 5"));
    }

    #[test]
    fn buckets_like_ddp() {
        // resnet50: 102 MB of fp32 gradients -> four 25 MiB buckets and the rest.
        let b = buckets(model_params("resnet50").unwrap(), 25.0).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b[0], 25 << 20);
        assert_eq!(b.iter().sum::<usize>(), 25_557_032 * 4);
        assert!(model_params("alexnet")
            .unwrap_err()
            .to_string()
            .contains("presets"));
    }

    #[test]
    fn predicted_linearity_in_closed_form() {
        use acspeed_core::sim::{Cluster, HostModel, NetModel};
        // 2 hosts x 1 rank, 1 GB/s per NIC, no latency, CPUs too fast to matter; one bucket of
        // 4 MiB, ready at the end of the backward pass. A 2-rank ring allreduce moves the
        // bucket once each way: 4 MiB / 1 GB/s = 4.194 ms, all exposed after 3 ms of compute.
        let cl = Cluster::new(
            vec![HostModel::cpu(64.0, 1e6, 1e6, 0.0); 2],
            &[1, 1],
            NetModel {
                nic_gbit: 8.0,
                flow_gbit: None,
                streams: 1,
                latency_us: 0.0,
            },
        )
        .unwrap();
        let rows = predict_steps(&cl, 1 << 20, 3.0, 4.0, Pipeline::default()).unwrap();
        let ring = rows.iter().find(|r| r.algo == "ring").unwrap();
        let want = 3.0 / (3.0 + 4.194304);
        assert!((ring.linearity - want).abs() < 0.01, "{ring:?} vs {want}");
        assert!((ring.exposed_comm_frac - 4.194304 / 7.194304).abs() < 0.01);
        assert_eq!((ring.workers, ring.hosts), (2, 2));
    }

    #[test]
    fn step_model_closed_form() {
        // Free communication: the step is the compute.
        let s = ddp_step(30.0, &[10, 10], &[0.0, 0.0]);
        assert_eq!(s.step_ms, 30.0);
        // One bucket, ready at the end of the backward pass: all of it is exposed.
        let s = ddp_step(30.0, &[100], &[12.0]);
        assert_eq!(
            (s.step_ms, s.exposed_ms, s.overlap_frac()),
            (42.0, 12.0, 0.0)
        );
        // Two equal buckets: the first is ready at 10 + 10 = 20 ms and takes 5 (hidden), the
        // second at 30 ms takes 5 (exposed): step 35, half the communication overlapped.
        let s = ddp_step(30.0, &[50, 50], &[5.0, 5.0]);
        assert_eq!((s.step_ms, s.exposed_ms), (35.0, 5.0));
        assert!((s.overlap_frac() - 0.5).abs() < 1e-12);
        // Communication slower than the backward pass queues up.
        let s = ddp_step(30.0, &[50, 50], &[20.0, 20.0]);
        assert_eq!(s.step_ms, 60.0);
    }
}
