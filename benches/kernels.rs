//! Reduction kernels against the machine's memcpy: how close is `dst += src` to a plain copy
//! of the same bytes? (Run: `cargo bench --bench kernels`.)

use acspeed_core::{kernels, DType, ReduceOp};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn aligned(bytes: usize) -> Vec<u64> {
    vec![0x3c00_3c00_3c00_3c00u64; bytes / 8]
}

fn as_bytes(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 storage viewed as bytes.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}

fn bench(c: &mut Criterion) {
    let bytes = 4 << 20;
    let mut g = c.benchmark_group("reduce_4MiB");
    g.throughput(Throughput::Bytes(bytes as u64));
    let (mut a, mut b) = (aligned(bytes), aligned(bytes));
    g.bench_function("memcpy", |bn| {
        bn.iter(|| {
            let src = as_bytes(&mut b).to_vec();
            as_bytes(&mut a).copy_from_slice(black_box(&src));
        })
    });
    let (mut a, mut b) = (aligned(bytes), aligned(bytes));
    let src = as_bytes(&mut b).to_vec();
    g.bench_function("memcpy_only", |bn| {
        bn.iter(|| as_bytes(&mut a).copy_from_slice(black_box(&src)))
    });
    for d in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::I8,
    ] {
        g.bench_with_input(BenchmarkId::new("sum", d.name()), &d, |bn, &d| {
            bn.iter(|| kernels::reduce(d, ReduceOp::Sum, as_bytes(&mut a), black_box(&src)))
        });
    }
    g.bench_function("max/float", |bn| {
        bn.iter(|| kernels::reduce(DType::F32, ReduceOp::Max, as_bytes(&mut a), black_box(&src)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
