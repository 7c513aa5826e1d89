//! The device staging pipeline (CPU-Reduce's device side) on the host stand-in: the same code
//! that drives CUDA streams, run on memory with slow asynchronous copy queues.

use crate::util::{run_group, run_group_on_hosts, test_config, Fabric};
use acspeed::staging::{staged_allreduce, DeviceBuf, SlotPool, StagingParams};
use acspeed::{DType, ReduceOp};
use acspeed_testkit::HostStandIn;
use std::time::Duration;

/// A host buffer standing in for device memory: its address and the bytes to reduce.
fn host_buf<T>(b: &mut [T], bytes: usize) -> DeviceBuf {
    DeviceBuf {
        addr: b.as_mut_ptr() as u64,
        bytes,
        ready: None,
    }
}

fn run(fabric: Fabric, n: u32, count: usize, chunk_bytes: usize, depth: usize, delay_us: u64) {
    run_with(
        fabric,
        n,
        count,
        chunk_bytes,
        depth,
        delay_us,
        test_config(1 << 14, 2, 30),
    );
}

fn run_with(
    fabric: Fabric,
    n: u32,
    count: usize,
    chunk_bytes: usize,
    depth: usize,
    delay_us: u64,
    cfg: acspeed::Config,
) -> Vec<(usize, usize)> {
    run_on_hosts(
        fabric,
        &[n],
        count,
        chunk_bytes,
        depth,
        delay_us,
        cfg,
        ReduceOp::Sum,
    )
}

/// Runs one staged allreduce per rank on hosts of the sizes in `shape`, checks the result,
/// and returns each rank's (slots allocated, slots freed) on its stand-in device.
#[allow(clippy::too_many_arguments)]
fn run_on_hosts(
    fabric: Fabric,
    shape: &[u32],
    count: usize,
    chunk_bytes: usize,
    depth: usize,
    delay_us: u64,
    cfg: acspeed::Config,
    op: ReduceOp,
) -> Vec<(usize, usize)> {
    let n: u32 = shape.iter().sum();
    let outs = run_group_on_hosts(fabric, shape, cfg, |comm| {
        let dev = HostStandIn::new(Duration::from_micros(delay_us));
        let r = comm.rank();
        // "Device memory": a host buffer addressed by its pointer.
        let mut buf: Vec<f32> = (0..count)
            .map(|i| (r + 1) as f32 * ((i % 7) as f32 + 1.0))
            .collect();
        let p = StagingParams { chunk_bytes, depth };
        let pool = SlotPool::for_params(p);
        staged_allreduce(
            &comm,
            &dev,
            &pool,
            host_buf(&mut buf, count * 4),
            DType::F32,
            op,
            p,
        )
        .unwrap();
        (buf, dev.slot_counts())
    });
    let tri = match op {
        ReduceOp::Avg => (n + 1) as f32 / 2.0,
        _ => (n * (n + 1) / 2) as f32,
    };
    for (r, (o, _)) in outs.iter().enumerate() {
        for (i, v) in o.iter().enumerate() {
            assert_eq!(
                *v,
                tri * ((i % 7) as f32 + 1.0),
                "rank {r} element {i} (n={n} count={count} chunk={chunk_bytes} depth={depth})"
            );
        }
    }
    outs.into_iter().map(|(_, c)| c).collect()
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

/// CPU-Reduce for device tensors. On one host the device copies go straight into and out
/// of the shared staging area: no pinned slot is ever allocated. Where the plan does more than
/// one host reduce (several hosts), or for `Avg`, each staged chunk's host allreduce runs the
/// plan on a pinned slot instead (download, plan, upload).
#[test]
fn staged_allreduce_through_cpu_reduce() {
    let cfg = {
        let mut base = test_config(1 << 14, 2, 30);
        base.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
        base
    };
    let sum = ReduceOp::Sum;
    for (count, delay) in [(100_003, 5), (1, 0), (7, 50)] {
        let slots = run_on_hosts(
            Fabric::Shm,
            &[4],
            count,
            64 << 10,
            3,
            delay,
            cfg.clone(),
            sum,
        );
        assert!(slots.iter().all(|c| *c == (0, 0)), "{slots:?}");
    }
    let slots = run_on_hosts(
        Fabric::Shm,
        &[2, 2],
        50_001,
        64 << 10,
        3,
        5,
        cfg.clone(),
        sum,
    );
    assert!(slots.iter().all(|c| c.0 == 3), "{slots:?}");
    let avg = ReduceOp::Avg;
    let slots = run_on_hosts(Fabric::Shm, &[3], 10_007, 16 << 10, 2, 0, cfg.clone(), avg);
    assert!(slots.iter().all(|c| c.0 == 2), "{slots:?}");
    // The in-memory fabric's staging area takes the direct path too.
    let slots = run_with(Fabric::Memory, 3, 10_007, 4096, 2, 0, cfg.clone());
    assert!(slots.iter().all(|c| *c == (0, 0)), "{slots:?}");
    // Without shared memory cpu_reduce runs ring, through the slots.
    let slots = run_with(Fabric::Tcp, 3, 10_007, 4096, 2, 0, cfg);
    assert!(slots.iter().all(|c| c.0 == 2), "{slots:?}");
}

/// CUDA CPU-Reduce registers the shared staging area with the device once (so a real GPU
/// copies into it asynchronously), reads the input from the device straight into the area on
/// one host and across hosts alike (never into a slot first), copies only between device
/// memory and registered or slot memory, and gives the registration back when the
/// communicator goes, before the area is unmapped.
#[test]
fn cpu_reduce_registers_the_staging_area_once_and_releases_it() {
    let cfg = {
        let mut base = test_config(1 << 14, 2, 30);
        base.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
        base
    };
    for (shape, op) in [
        (&[3u32][..], ReduceOp::Sum),
        (&[2, 2], ReduceOp::Sum),
        (&[2, 1, 2], ReduceOp::Sum),
        (&[2, 2], ReduceOp::Avg),
    ] {
        let res = run_group_on_hosts(Fabric::Shm, shape, cfg.clone(), |comm| {
            let dev = HostStandIn::new(Duration::from_micros(5));
            let p = StagingParams {
                chunk_bytes: 64 << 10,
                depth: 3,
            };
            let pool = SlotPool::for_params(p);
            let r = comm.rank() as f32;
            let mut buf: Vec<f32> = (0..40_000).map(|i| r + (i % 5) as f32).collect();
            for _ in 0..3 {
                let b = host_buf(&mut buf, 40_000 * 4);
                staged_allreduce(&comm, &dev, &pool, b, DType::F32, op, p).unwrap();
            }
            let held = dev.registered();
            let alone = comm.local_ranks().len() == 1;
            drop(comm);
            let counts = (dev.pageable_copies(), dev.slot_downloads());
            (buf, counts, held, dev.registered(), alone)
        });
        let n: u32 = shape.iter().sum();
        for (r, (v, (copies, slot_dl), held, after, alone)) in res.into_iter().enumerate() {
            let what = format!("{shape:?} {op:?} rank {r}");
            for (i, x) in v.iter().enumerate() {
                // Three calls: sum_r (r + k) = S, then n S, then n^2 S (Avg: S / n each time).
                let s = (n * (n - 1) / 2) as f32 + n as f32 * (i % 5) as f32;
                let want = match op {
                    ReduceOp::Avg => s / n as f32,
                    _ => s * (n * n) as f32,
                };
                assert_eq!(*x, want, "{what}: element {i}");
            }
            let (pageable, regs) = copies;
            assert_eq!(pageable, 0, "{what}: copies to unregistered memory");
            assert!(after.is_empty(), "{what}: still registered {after:?}");
            if alone {
                // A rank alone on its host has no staging area: the slot pipeline.
                assert_eq!(regs, 0, "{what}");
                assert!(slot_dl > 0, "{what}");
                continue;
            }
            assert_eq!(regs, 1, "{what}: one registration per area");
            assert_eq!(held.len(), 1, "{what}");
            assert!(held[0].1 >= 3 * (64 << 10), "{held:?}");
            // One host (not Avg): the direct path; several: fed through the area. Either way
            // the input never lands in a slot first.
            assert_eq!(slot_dl, 0, "{what}: input downloaded into a slot");
        }
    }
}

#[test]
fn staged_allreduce_rejects_bad_shapes() {
    run_group(Fabric::Memory, 1, test_config(1 << 14, 2, 5), |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let mut b = vec![0u8; 6];
        let e = staged_allreduce(
            &comm,
            &dev,
            &SlotPool::new(0),
            host_buf(&mut b, 6),
            DType::F32,
            ReduceOp::Sum,
            StagingParams::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("6 bytes"), "{e}");
        let e = staged_allreduce(
            &comm,
            &dev,
            &SlotPool::new(0),
            host_buf(&mut b, 4),
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
            &SlotPool::new(0),
            host_buf(&mut b, count * 4),
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

/// A buffer with a ready event: the pipeline orders its downloads after the event before it
/// queues the first one (the caller no longer blocks on its stream).
#[test]
fn downloads_wait_for_the_producers_event() {
    run_group(Fabric::Memory, 2, test_config(1 << 14, 2, 10), |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let p = StagingParams {
            chunk_bytes: 4096,
            depth: 2,
        };
        let mut b = vec![1.0f32; 3000];
        let buf = DeviceBuf {
            addr: b.as_mut_ptr() as u64,
            bytes: 12_000,
            ready: Some(0xfeed),
        };
        staged_allreduce(
            &comm,
            &dev,
            &SlotPool::for_params(p),
            buf,
            DType::F32,
            ReduceOp::Sum,
            p,
        )
        .unwrap();
        assert!(b.iter().all(|v| *v == 2.0));
        assert_eq!(dev.events(), vec![(0xfeed, 0)]);
    });
}

/// The pool keeps the slots between calls: ten staged allreduces allocate one call's worth of
/// slots, results stay exact, and dropping the pool frees every slot.
#[test]
fn staging_slots_are_allocated_once_per_pool_and_freed_with_it() {
    // Ring: small allreduces would otherwise go through the host's staging area, no slots.
    let mut cfg = test_config(1 << 14, 2, 10);
    cfg.policy.algo = acspeed_core::config::AlgoChoice::Named("ring".into());
    let res = run_group(Fabric::Memory, 2, cfg, |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let p = StagingParams {
            chunk_bytes: 4096,
            depth: 3,
        };
        let pool = SlotPool::for_params(p);
        for call in 0..10u32 {
            // Sizes vary: 1, 2 and 5 chunks need 1, 2 and 3 slots.
            let count = [1024, 2048, 5000][call as usize % 3];
            let mut b = vec![(comm.rank() + call) as f32; count];
            staged_allreduce(
                &comm,
                &dev,
                &pool,
                host_buf(&mut b, count * 4),
                DType::F32,
                ReduceOp::Sum,
                p,
            )
            .unwrap();
            assert!(b.iter().all(|v| *v == (2 * call + 1) as f32), "call {call}");
        }
        let kept = pool.retained_bytes();
        let during = dev.slot_counts();
        drop(pool);
        (kept, during, dev.slot_counts())
    });
    for (kept, (allocs, freed_during), (_, freed_after)) in res {
        assert_eq!(allocs, 3, "one call's worth of slots");
        assert_eq!(freed_during, 0);
        assert_eq!(kept, 3 * 4096);
        assert_eq!(freed_after, 3, "the pool frees its slots when dropped");
    }
    // A pool smaller than one call's slots frees what it cannot keep.
    run_group(Fabric::Memory, 1, test_config(1 << 14, 2, 10), |comm| {
        let dev = HostStandIn::new(Duration::ZERO);
        let p = StagingParams {
            chunk_bytes: 4096,
            depth: 3,
        };
        let pool = SlotPool::new(4096);
        let mut b = vec![1.0f32; 5000];
        staged_allreduce(
            &comm,
            &dev,
            &pool,
            host_buf(&mut b, 20_000),
            DType::F32,
            ReduceOp::Sum,
            p,
        )
        .unwrap();
        assert_eq!(pool.retained_bytes(), 4096);
        assert_eq!(dev.slot_counts(), (3, 2));
    });
}

/// A device error on one rank (its third copy fails) is a device error there, and aborts the
/// communicator: the peers, waiting for its next chunk, fail at once naming it and the
/// reason, not at the 20 s timeout.
#[test]
fn a_device_error_fails_the_peers_fast_naming_the_rank() {
    let cpu_reduce = {
        let mut base = test_config(1 << 14, 2, 20);
        base.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
        base
    };
    let cases = [
        (Fabric::Memory, test_config(1 << 14, 2, 20)),
        (Fabric::Tcp, test_config(1 << 14, 2, 20)),
        (Fabric::Shm, test_config(1 << 14, 2, 20)),
        // The direct path: the copy fails inside the shared staging area's pipeline.
        (Fabric::Shm, cpu_reduce.clone()),
        (Fabric::Memory, cpu_reduce),
    ];
    for (f, cfg) in cases {
        let res = run_group(f, 3, cfg, |comm| {
            let dev = if comm.rank() == 1 {
                HostStandIn::failing_copy(Duration::ZERO, 3)
            } else {
                HostStandIn::new(Duration::ZERO)
            };
            let p = StagingParams {
                chunk_bytes: 4096,
                depth: 2,
            };
            let mut b = vec![1.0f32; 10_000];
            let t0 = std::time::Instant::now();
            let e = staged_allreduce(
                &comm,
                &dev,
                &SlotPool::for_params(p),
                host_buf(&mut b, 40_000),
                DType::F32,
                ReduceOp::Sum,
                p,
            )
            .unwrap_err();
            (e.kind(), e.to_string(), t0.elapsed().as_secs_f64())
        });
        let (kind, msg, _) = &res[1];
        assert_eq!(*kind, "device", "{f:?}: {msg}");
        assert!(msg.contains("stand-in copy 3 failed"), "{f:?}: {msg}");
        for r in [0, 2] {
            let (_, msg, secs) = &res[r];
            assert!(
                msg.contains("rank 1") && msg.contains("device error"),
                "{f:?} rank {r}: {msg}"
            );
            assert!(*secs < 5.0, "{f:?} rank {r}: {secs:.1} s: {msg}");
        }
    }
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
