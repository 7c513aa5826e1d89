//! The device staging pipeline (CPU-Reduce's device side) on the host stand-in: the same code
//! that drives CUDA streams, run on memory with slow asynchronous copy queues.

use crate::util::{run_group, test_config, Fabric};
use acspeed::staging::{staged_allreduce, HostStandIn, StagingParams};
use acspeed::{DType, ReduceOp};
use std::time::Duration;

fn run(fabric: Fabric, n: u32, count: usize, chunk_bytes: usize, depth: usize, delay_us: u64) {
    run_with(
        fabric,
        n,
        count,
        chunk_bytes,
        depth,
        delay_us,
        test_config(1 << 14, 2, 30),
    )
}

fn run_with(
    fabric: Fabric,
    n: u32,
    count: usize,
    chunk_bytes: usize,
    depth: usize,
    delay_us: u64,
    cfg: acspeed::Config,
) {
    let outs = run_group(fabric, n, cfg, |comm| {
        let dev = HostStandIn::new(Duration::from_micros(delay_us));
        let r = comm.rank();
        // "Device memory": a host buffer addressed by its pointer.
        let mut buf: Vec<f32> = (0..count)
            .map(|i| (r + 1) as f32 * ((i % 7) as f32 + 1.0))
            .collect();
        let p = StagingParams { chunk_bytes, depth };
        staged_allreduce(
            &comm,
            &dev,
            buf.as_mut_ptr() as u64,
            count * 4,
            DType::F32,
            ReduceOp::Sum,
            p,
        )
        .unwrap();
        buf
    });
    let tri = (n * (n + 1) / 2) as f32;
    for (r, o) in outs.iter().enumerate() {
        for (i, v) in o.iter().enumerate() {
            assert_eq!(
                *v,
                tri * ((i % 7) as f32 + 1.0),
                "rank {r} element {i} (n={n} count={count} chunk={chunk_bytes} depth={depth})"
            );
        }
    }
}

#[test]
fn staged_allreduce_is_exact_for_every_shape() {
    for (n, count, chunk, depth, delay) in [
        (2, 0, 64, 2, 0),
        (2, 1, 64, 2, 0),
        (3, 1001, 64, 2, 50),
        (3, 1001, 256, 3, 20),
        (4, 50_000, 4096, 3, 10),
        (2, 10_007, 1 << 20, 4, 0),
    ] {
        run(Fabric::Memory, n, count, chunk, depth, delay);
    }
    run(Fabric::Shm, 3, 33_333, 8192, 3, 5);
}

/// CPU-Reduce for device tensors: each staged chunk's host allreduce is a host reduce through
/// the shared staging area (download, reduce in host memory, upload).
#[test]
fn staged_allreduce_through_cpu_reduce() {
    let cfg = acspeed::Config {
        algo: acspeed_core::config::AlgoChoice::Named("cpu_reduce".into()),
        ..test_config(1 << 14, 2, 30)
    };
    run_with(Fabric::Shm, 4, 100_003, 64 << 10, 3, 5, cfg.clone());
    run_with(Fabric::Memory, 3, 10_007, 4096, 2, 0, cfg);
}

#[test]
fn staged_allreduce_rejects_bad_shapes() {
    run_group(Fabric::Memory, 1, test_config(1 << 14, 2, 5), |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let mut b = vec![0u8; 6];
        let e = staged_allreduce(
            &comm,
            &dev,
            b.as_mut_ptr() as u64,
            6,
            DType::F32,
            ReduceOp::Sum,
            StagingParams::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("6 bytes"), "{e}");
        let e = staged_allreduce(
            &comm,
            &dev,
            b.as_mut_ptr() as u64,
            4,
            DType::F32,
            ReduceOp::Sum,
            StagingParams {
                chunk_bytes: 4,
                depth: 1,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 staging slots"), "{e}");
    });
}

#[test]
fn staged_allreduce_reports_a_mismatch_across_ranks() {
    let res = run_group(Fabric::Memory, 2, test_config(1 << 14, 2, 10), |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let count = if comm.rank() == 0 { 100 } else { 200 };
        let mut b = vec![1.0f32; count];
        staged_allreduce(
            &comm,
            &dev,
            b.as_mut_ptr() as u64,
            count * 4,
            DType::F32,
            ReduceOp::Sum,
            StagingParams {
                chunk_bytes: 1 << 20,
                depth: 2,
            },
        )
        .err()
        .map(|e| e.to_string())
    });
    assert!(
        res.iter().flatten().any(|m| m.contains("mismatch")),
        "{res:?}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_staging_without_a_driver_is_a_clear_error() {
    if acspeed::cuda::driver_present() {
        return; // a GPU machine: the real path is exercised by the Python tests there
    }
    let e = acspeed::cuda::CudaStaging::new(0)
        .err()
        .expect("no driver here")
        .to_string();
    assert!(e.contains("libcuda"), "{e}");
}
