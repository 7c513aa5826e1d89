//! `acspeed linearity --workers N`, the measuring mode: every rank runs data-parallel training
//! steps of a model of a given size, DDP-style.
//!
//! A step is a forward pass (a third of the compute), then a backward pass during which the
//! gradient buckets become ready one by one and are handed to a communication thread that
//! allreduces them in order, as DDP's reducer does. The compute is emulated as idle time (what
//! a GPU's kernels leave the CPU), so the measured communication is what acspeed costs a GPU
//! job; a CPU-bound training loop would also compete with it for cores. The same loop
//! without communication is the one-worker baseline. Exposed communication is measured as
//! the step's time after the compute ended (the allreduces' busy intervals are a union,
//! never a sum of durations).

use acspeed::linearity::{buckets, verdict, Step};
use acspeed::Communicator;
use acspeed_algorithms::Algorithm;
use acspeed_core::{Error, ReduceOp, Result};
use serde::Serialize;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct MeasureSpec {
    pub model: String,
    pub params: u64,
    pub compute_ms: f64,
    pub bucket_mb: f64,
    pub steps: usize,
    pub warmup: usize,
    /// `None` = the automatic choice.
    pub algos: Vec<Option<Algorithm>>,
    /// Also measure busbw at a few message sizes per algorithm (for the charts).
    pub sweep: bool,
}

/// One algorithm's measurement (rank 0's view of the job).
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub algo: String,
    pub model: String,
    pub params: u64,
    pub workers: u32,
    pub hosts: u32,
    pub bucket_mb: f64,
    /// Worker-steps per second of the whole job (samples/s divided by the per-worker batch).
    pub throughput: f64,
    pub single_step_ms: f64,
    pub step: Step,
    pub linearity: f64,
    /// Across hosts (multi-host jobs): H-host throughput / (one host's throughput x H), one
    /// host's throughput measured by its ranks alone, with the automatic choice.
    pub host_linearity: Option<f64>,
    pub exposed_comm_frac: f64,
    pub overlap_frac: f64,
    /// Gradient bytes allreduced per step over the time spent allreducing, as busbw.
    pub busbw_gbps: f64,
    pub slowest_rank: u32,
    /// Per rank: its exposed wait minus the smallest exposed wait (ms per step).
    pub straggler_ms: Vec<f64>,
    pub verdict: String,
    /// (bytes, busbw GB/s) at a few sizes, when asked for.
    pub sweep: Vec<(usize, f64)>,
}

fn sleep_ms(ms: f64) {
    if ms > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(ms / 1e3));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Length of the union of intervals.
fn union_len(mut iv: Vec<(f64, f64)>) -> f64 {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (s, e) in iv {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map_or(0.0, |(s, e)| e - s)
}

/// Runs `steps` steps (after `warmup`); `comm` allreduces the buckets, or with `None` the
/// loop runs without communication (the one-worker baseline). Returns per-step records.
fn run_steps(
    comm: Option<&Communicator>,
    sizes: &[usize],
    compute_ms: f64,
    warmup: usize,
    steps: usize,
    tick: &dyn Fn(),
) -> Result<Vec<Step>> {
    let total: usize = sizes.iter().sum::<usize>().max(1);
    let fwd = compute_ms / 3.0;
    let bwd = compute_ms - fwd;
    let mut bufs: Vec<Vec<f32>> = sizes.iter().map(|b| vec![1.0f32; b / 4]).collect();
    std::thread::scope(|sc| -> Result<Vec<Step>> {
        let (to_comm, from_main) = mpsc::channel::<Option<usize>>();
        let (to_main, from_comm) = mpsc::channel::<Result<(Instant, Instant)>>();
        let worker = comm.map(|c| {
            let bufs = &mut bufs;
            sc.spawn(move || {
                while let Ok(Some(i)) = from_main.recv() {
                    let t0 = Instant::now();
                    let r = c
                        .allreduce(&mut bufs[i], ReduceOp::Sum)
                        .map(|_| (t0, Instant::now()));
                    let failed = r.is_err();
                    if to_main.send(r).is_err() || failed {
                        return;
                    }
                }
            })
        });
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for s in 0..warmup + steps {
                let t0 = Instant::now();
                sleep_ms(fwd);
                let mut done = 0usize;
                for (i, b) in sizes.iter().enumerate() {
                    let before = done as f64 / total as f64;
                    done += b;
                    sleep_ms(bwd * (done as f64 / total as f64 - before));
                    if worker.is_some() {
                        to_comm.send(Some(i)).map_err(|_| {
                            Error::Aborted("the communication thread stopped".into())
                        })?;
                    }
                }
                let compute_end = Instant::now();
                let mut busy = Vec::new();
                if worker.is_some() {
                    for _ in sizes {
                        let (a, b) = from_comm.recv().map_err(|_| {
                            Error::Aborted("the communication thread stopped".into())
                        })??;
                        let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
                        busy.push((ms(a), ms(b)));
                    }
                }
                let end = Instant::now();
                tick();
                if s >= warmup {
                    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
                    out.push(Step {
                        compute_ms: ms(compute_end),
                        step_ms: ms(end),
                        comm_ms: union_len(busy),
                        exposed_ms: ms(end) - ms(compute_end),
                    });
                }
            }
            Ok(())
        })();
        let _ = to_comm.send(None);
        if let Some(w) = worker {
            let _ = w.join();
        }
        result.map(|_| out)
    })
}

/// busbw of allreduce at sizes from 64 KiB up to `max` (median of 3 after one warm-up).
fn sweep(comm: &Communicator, max: usize) -> Result<Vec<(usize, f64)>> {
    let n = comm.nranks() as f64;
    let mut out = Vec::new();
    let mut b = 64usize << 10;
    while b <= max.max(64 << 10) {
        let mut v = vec![1.0f32; b / 4];
        let mut t = Vec::new();
        for i in 0..4 {
            comm.barrier()?;
            let t0 = Instant::now();
            comm.allreduce(&mut v, ReduceOp::Sum)?;
            if i > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        out.push((b, b as f64 / median(t) / 1e9 * 2.0 * (n - 1.0) / n.max(1.0)));
        b *= 4;
    }
    Ok(out)
}

/// Every rank calls this; rank 0 gets the results (the others an empty list). `tick` is
/// called after every step (progress).
pub fn measure(comm: &Communicator, spec: &MeasureSpec, tick: &dyn Fn()) -> Result<Vec<Measured>> {
    let sizes = buckets(spec.params, spec.bucket_mb)?;
    let n = comm.nranks();
    let hosts = comm.plan_context().nhosts() as u32;
    // The one-worker baseline, on every rank at once (no communication).
    let single = run_steps(None, &sizes, spec.compute_ms, 1, spec.steps.max(3), tick)?;
    let single_ms = median(single.iter().map(|s| s.step_ms).collect());
    let host_step = one_host_step(comm, &sizes, spec, tick)?;
    let mut out = Vec::new();
    for &algo in &spec.algos {
        comm.set_algorithm(algo);
        comm.barrier()?;
        let steps = run_steps(
            Some(comm),
            &sizes,
            spec.compute_ms,
            spec.warmup,
            spec.steps,
            tick,
        )?;
        let sweep = if spec.sweep && n > 1 {
            sweep(comm, sizes[0])?
        } else {
            Vec::new()
        };
        let med = |f: fn(&Step) -> f64| median(steps.iter().map(f).collect());
        let mine = Step {
            compute_ms: med(|s| s.compute_ms),
            step_ms: med(|s| s.step_ms),
            comm_ms: med(|s| s.comm_ms),
            exposed_ms: med(|s| s.exposed_ms),
        };
        // Everyone's (step, exposed) to everyone: the slowest rank is the one the others wait for.
        let local = [mine.step_ms, mine.exposed_ms];
        let mut all = vec![0f64; 2 * n as usize];
        comm.allgather(&local, &mut all)?;
        let waits: Vec<f64> = all.chunks(2).map(|c| c[1]).collect();
        let min_wait = waits.iter().copied().fold(f64::INFINITY, f64::min);
        let slowest = waits.iter().position(|w| *w == min_wait).unwrap_or(0) as u32;
        let job_step = all.chunks(2).map(|c| c[0]).fold(0.0, f64::max);
        let step = Step {
            step_ms: job_step,
            ..mine
        };
        let lin = single_ms / job_step;
        let bytes: usize = sizes.iter().sum();
        let algbw = if mine.comm_ms > 0.0 {
            bytes as f64 / (mine.comm_ms / 1e3) / 1e9
        } else {
            0.0
        };
        let name = match algo {
            Some(a) => acspeed::linearity::algo_name(a),
            None => format!(
                "auto({})",
                comm.algorithm_for(acspeed_core::Collective::AllReduce, sizes[0])
                    .name()
            ),
        };
        let straggler: Vec<f64> = waits.iter().map(|w| w - min_wait).collect();
        let worst = straggler.iter().copied().fold(0.0, f64::max);
        out.push(Measured {
            verdict: verdict(lin, Some(step.exposed_frac()), Some((slowest, worst)), None),
            algo: name,
            model: spec.model.clone(),
            params: spec.params,
            workers: n,
            hosts,
            bucket_mb: spec.bucket_mb,
            throughput: n as f64 * 1e3 / job_step,
            single_step_ms: single_ms,
            linearity: lin,
            host_linearity: host_step.map(|h| h / job_step),
            exposed_comm_frac: step.exposed_frac(),
            overlap_frac: step.overlap_frac(),
            busbw_gbps: algbw * 2.0 * (n as f64 - 1.0) / n as f64,
            slowest_rank: slowest,
            straggler_ms: straggler,
            step,
            sweep,
        });
    }
    comm.set_algorithm(None);
    Ok(if comm.rank() == 0 { out } else { Vec::new() })
}

/// In a multi-host job: every host's ranks run the same steps as a job of their own, at the
/// same time (their own communicator over a store the host's first rank serves on loopback),
/// with the automatic choice. Returns the slowest host's median step (ms), or `None` on one
/// host.
fn one_host_step(
    comm: &Communicator,
    sizes: &[usize],
    spec: &MeasureSpec,
    tick: &dyn Fn(),
) -> Result<Option<f64>> {
    let ctx = comm.plan_context();
    if ctx.nhosts() < 2 {
        return Ok(None);
    }
    let me = comm.rank();
    let host = ctx.host_of[me as usize];
    let local: Vec<u32> = (0..comm.nranks())
        .filter(|r| ctx.host_of[*r as usize] == host)
        .collect();
    let leader = local[0];
    let server = if me == leader {
        Some(acspeed::store::TcpStoreServer::start(
            "127.0.0.1:0".parse().expect("loopback"),
        )?)
    } else {
        None
    };
    let mine = [server.as_ref().map_or(0i64, |s| s.addr().port() as i64)];
    let mut ports = vec![0i64; comm.nranks() as usize];
    comm.allgather(&mine, &mut ports)?;
    let cfg = {
        let mut base = comm.config().clone();
        base.job.timeline = None;
        base
    };
    let store = acspeed::store::TcpStoreClient::connect(
        "127.0.0.1",
        ports[leader as usize] as u16,
        cfg.job.timeout,
    )?;
    let idx = local.iter().position(|r| *r == me).expect("on its host") as u32;
    let sub = acspeed::init_with_store(
        &store,
        "acspeed-linearity-host",
        idx,
        local.len() as u32,
        "127.0.0.1".parse().expect("loopback"),
        cfg,
    )?;
    let steps = run_steps(
        Some(&sub),
        sizes,
        spec.compute_ms,
        spec.warmup,
        spec.steps,
        tick,
    )?;
    let mine = [median(steps.iter().map(|s| s.step_ms).collect())];
    let mut all = vec![0f64; comm.nranks() as usize];
    comm.allgather(&mine, &mut all)?;
    drop(sub);
    // The store's server thread lives as long as the process (as the job store's does).
    let _ = server;
    Ok(Some(all.iter().copied().fold(0.0, f64::max)))
}

/// Adds the recommendation: the measured algorithm with the best throughput, when it beats
/// the automatic choice by more than the run-to-run noise we allow (5%).
pub fn recommend(rows: &mut [Measured]) {
    let Some(best) = rows
        .iter()
        .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
        .cloned()
    else {
        return;
    };
    for r in rows.iter_mut() {
        if r.linearity < 0.8 && best.throughput > r.throughput * 1.05 && best.algo != r.algo {
            let algo = best.algo.trim_start_matches("auto(").trim_end_matches(')');
            let rec = format!(
                "ACSPEED_ALGO={algo} measured {:+.0}% throughput here",
                (best.throughput / r.throughput - 1.0) * 100.0
            );
            r.verdict = verdict(
                r.linearity,
                Some(r.exposed_comm_frac),
                Some((
                    r.slowest_rank,
                    r.straggler_ms.iter().copied().fold(0.0, f64::max),
                )),
                Some(&rec),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_intervals() {
        assert_eq!(union_len(vec![]), 0.0);
        assert_eq!(union_len(vec![(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]), 4.0);
        assert_eq!(union_len(vec![(5.0, 6.0), (0.0, 1.0)]), 2.0);
    }
}
