//! The plan abstraction's cost: a ring allreduce run by the executor from a verified plan,
//! against a hand-written ring loop over the same transport with the same segment size.
//! DESIGN.md asks that the former cost no more than a few percent.
//! (Run: `cargo bench --bench executor`.)

use acspeed_algorithms::Ring;
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor};
use acspeed_core::memory::MemoryTransport;
use acspeed_core::plan::{chunk_range, Collective};
use acspeed_core::{kernels, DType, FrameHeader, Rank, ReduceOp, Transport};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};

const N: u32 = 4;
const SEG: usize = 256 << 10;
const TIMEOUT: Duration = Duration::from_secs(30);

fn hdr(seq: u64, count: usize, len: usize) -> FrameHeader {
    FrameHeader {
        seq,
        coll: Collective::AllReduce.code(),
        dtype: DType::F32 as u8,
        op: ReduceOp::Sum as u8,
        algo: acspeed_core::plan::algorithm_code("ring"),
        root: 0,
        count: count as u64,
        len: len as u64,
    }
}

/// Textbook ring allreduce written directly against the transport.
fn hand_ring(t: &dyn Transport, data: &mut [f32], seq: u64) {
    let (r, n) = (t.rank().0 as i64, N as i64);
    let (next, prev) = (Rank(((r + 1) % n) as u32), Rank(((r + n - 1) % n) as u32));
    let count = data.len();
    let bytes = |c: i64| {
        let rr = chunk_range(count, N, c.rem_euclid(n) as u32);
        rr.start * 4..rr.end * 4
    };
    let base = data.as_mut_ptr() as *mut u8;
    let mut scratch = vec![0u8; SEG];
    let wait = |h: acspeed_core::OpHandle| {
        h.wait(Instant::now() + TIMEOUT, TIMEOUT, &|| "bench".into())
            .unwrap()
    };
    let mut sends = Vec::new();
    let segs = |rg: std::ops::Range<usize>| {
        (rg.start..rg.end)
            .step_by(SEG)
            .map(move |s| s..(s + SEG).min(rg.end))
            .collect::<Vec<_>>()
    };
    unsafe {
        for s in segs(bytes(r)) {
            sends.push(
                t.post_send(next, hdr(seq, count, s.len()), base.add(s.start), s.len())
                    .unwrap(),
            );
        }
        for j in 1..n {
            for s in segs(bytes(r - j)) {
                wait(
                    t.post_recv(prev, hdr(seq, count, s.len()), scratch.as_mut_ptr())
                        .unwrap(),
                );
                let d = std::slice::from_raw_parts_mut(base.add(s.start), s.len());
                kernels::reduce(DType::F32, ReduceOp::Sum, d, &scratch[..s.len()]);
                sends.push(
                    t.post_send(next, hdr(seq, count, s.len()), base.add(s.start), s.len())
                        .unwrap(),
                );
            }
        }
        for j in 1..n {
            for s in segs(bytes(r + 1 - j)) {
                wait(
                    t.post_recv(prev, hdr(seq, count, s.len()), base.add(s.start))
                        .unwrap(),
                );
                if j < n - 1 {
                    sends.push(
                        t.post_send(next, hdr(seq, count, s.len()), base.add(s.start), s.len())
                            .unwrap(),
                    );
                }
            }
        }
    }
    sends.into_iter().for_each(wait);
}

fn run(count: usize, iters: u64, planned: bool) -> Duration {
    let ts = MemoryTransport::fabric(N);
    let exe = Executor::new(ExecParams {
        segment_bytes: SEG,
        depth: 4,
        timeout: TIMEOUT,
        stall_warn: Duration::ZERO,
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

criterion_group!(benches, bench);
criterion_main!(benches);
