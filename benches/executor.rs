//! The plan abstraction's cost: a ring allreduce run by the executor from a verified plan,
//! against a hand-written ring loop over the same transport with the same segment size and
//! pipeline depth.
//! DESIGN.md asks that the former cost no more than a few percent.
//! Also the cost of lowering a plan for one call.
//! (Run: `cargo bench --bench executor`.)

use acspeed_algorithms::Ring;
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor};
use acspeed_core::plan::{chunk_range, Collective};
use acspeed_core::{kernels, DType, FrameHeader, Rank, ReduceOp, Transport};
use acspeed_testkit::MemoryTransport;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};

const N: u32 = 4;
const SEG: usize = 256 << 10;
/// Receives in flight, as the executor's default `ACSPEED_PIPELINE_DEPTH`.
const DEPTH: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(30);

fn hdr(seq: u64, count: usize, len: usize) -> FrameHeader {
    FrameHeader {
        seq,
        coll: Collective::AllReduce.code(),
        dtype: DType::F32 as u8,
        op: ReduceOp::Sum as u8,
        algo: acspeed_core::plan::algorithm_code("ring"),
        channel: 0,
        root: 0,
        count: count as u64,
        len: len as u64,
    }
}

/// Textbook ring allreduce written directly against the transport, pipelined as the executor
/// is: `DEPTH` receives posted ahead (into rotating scratch slots where they are reduced),
/// every send left in flight, and a receive into the data only after the sends that read
/// those bytes are done. Same segment size, same depth: the comparison measures the plan
/// abstraction, not a pipelining difference.
fn hand_ring(t: &dyn Transport, data: &mut [f32], seq: u64) {
    let (r, n) = (t.rank().0 as i64, N as i64);
    let (next, prev) = (Rank(((r + 1) % n) as u32), Rank(((r + n - 1) % n) as u32));
    let count = data.len();
    let bytes = |c: i64| {
        let rr = chunk_range(count, N, c.rem_euclid(n) as u32);
        rr.start * 4..rr.end * 4
    };
    let base = data.as_mut_ptr() as *mut u8;
    let wait = |h: acspeed_core::OpHandle| {
        h.wait(Instant::now() + TIMEOUT, TIMEOUT, &|| "bench".into())
            .unwrap()
    };
    let segs = |rg: std::ops::Range<usize>| {
        (rg.start..rg.end)
            .step_by(SEG)
            .map(move |s| s..(s + SEG).min(rg.end))
            .collect::<Vec<_>>()
    };
    // Every received segment in order: (bytes, reduce into data?, forward to next?).
    let mut ops = Vec::new();
    for j in 1..n {
        ops.extend(segs(bytes(r - j)).into_iter().map(|s| (s, true, true)));
    }
    for j in 1..n {
        ops.extend(
            segs(bytes(r + 1 - j))
                .into_iter()
                .map(|s| (s, false, j < n - 1)),
        );
    }
    let mut slots = vec![vec![0u8; SEG]; DEPTH];
    let mut sends: Vec<(std::ops::Range<usize>, acspeed_core::OpHandle)> = Vec::new();
    let mut posted = std::collections::VecDeque::new();
    unsafe {
        let send = |sends: &mut Vec<_>, s: std::ops::Range<usize>| {
            let h = t
                .post_send(next, hdr(seq, count, s.len()), base.add(s.start), s.len())
                .unwrap();
            sends.push((s, h));
        };
        let post = |k: usize, slots: &mut Vec<Vec<u8>>, sends: &mut Vec<(_, _)>| {
            let (s, reduce, _) = ops[k].clone();
            let dst = if reduce {
                slots[k % DEPTH].as_mut_ptr()
            } else {
                // Bytes still being sent must not be overwritten.
                let (busy, rest): (Vec<_>, Vec<_>) = std::mem::take(sends).into_iter().partition(
                    |(x, _): &(std::ops::Range<usize>, _)| x.start < s.end && s.start < x.end,
                );
                *sends = rest;
                busy.into_iter().for_each(|(_, h)| wait(h));
                base.add(s.start)
            };
            t.post_recv(prev, hdr(seq, count, s.len()), dst).unwrap()
        };
        for s in segs(bytes(r)) {
            send(&mut sends, s);
        }
        for k in 0..ops.len().min(DEPTH) {
            posted.push_back(post(k, &mut slots, &mut sends));
        }
        for k in 0..ops.len() {
            wait(posted.pop_front().expect("posted ahead"));
            let (s, reduce, forward) = ops[k].clone();
            if reduce {
                let d = std::slice::from_raw_parts_mut(base.add(s.start), s.len());
                kernels::reduce(DType::F32, ReduceOp::Sum, d, &slots[k % DEPTH][..s.len()]);
            }
            if forward {
                send(&mut sends, s);
            }
            if k + DEPTH < ops.len() {
                posted.push_back(post(k + DEPTH, &mut slots, &mut sends));
            }
        }
    }
    sends.into_iter().for_each(|(_, h)| wait(h));
}

fn run(count: usize, iters: u64, planned: bool) -> Duration {
    let ts = MemoryTransport::fabric(N);
    let exe = Executor::new(ExecParams {
        segment_bytes: SEG,
        depth: DEPTH,
        timeout: TIMEOUT,
        stall_warn: Duration::ZERO,
        min_segments: 1,
    });
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in &ts {
            let exe = &exe;
            s.spawn(move || {
                let plan = Ring::default().plan_for_rank(Collective::AllReduce, t.rank(), N);
                let mut data = vec![1.0f32; count];
                for it in 0..iters {
                    if planned {
                        let bufs = Buffers {
                            input: std::ptr::null(),
                            input_len: 0,
                            output: data.as_mut_ptr() as *mut u8,
                            output_len: count * 4,
                        };
                        exe.run(
                            &plan,
                            t,
                            CallInfo {
                                seq: it + 1,
                                dtype: DType::F32,
                                op: Some(ReduceOp::Sum),
                                count,
                            },
                            bufs,
                        )
                        .unwrap();
                    } else {
                        hand_ring(t, &mut data, it + 1);
                    }
                    data.iter_mut().for_each(|x| *x = 1.0);
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let count = 1 << 20; // 4 MiB of f32
    let mut g = c.benchmark_group("ring_allreduce_4MiB_n4_memory");
    g.throughput(Throughput::Bytes((count * 4) as u64));
    g.sample_size(20);
    g.bench_function("planned_executor", |b| {
        b.iter_custom(|it| run(count, it, true))
    });
    g.bench_function("hand_written_loop", |b| {
        b.iter_custom(|it| run(count, it, false))
    });
    g.finish();
}

/// What lowering a plan costs per call when it is not kept (ring allreduce of 4 KiB-4 MiB,
/// the executor's default lowering), at 2, 4 and 8 ranks.
fn lowering(c: &mut Criterion) {
    use acspeed_core::schedule::{lower, Lowering};
    for (n, count) in [(2u32, 1024usize), (4, 1024), (8, 1 << 20)] {
        let plan = Ring::default().plan_for_rank(Collective::AllReduce, Rank(0), n);
        let low = Lowering::for_job(SEG, DEPTH, 1);
        c.bench_function(&format!("lower ring allreduce n={n} count={count}"), |b| {
            b.iter(|| lower(std::hint::black_box(&plan), count, 4, low))
        });
    }
}

criterion_group!(benches, bench, lowering);
criterion_main!(benches);
