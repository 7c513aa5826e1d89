//! The device executor's reading of the schedules, run on the host stand-in engine: for every
//! algorithm, collective and job shape whose plans are device work (no CPU-Reduce staging),
//! the outputs are bitwise those of the CPU executor on the same plans and data — f32 sums,
//! where a different reduction order would show. Also: counters that run on across calls of
//! different sizes, one slot per connection (no deadlock where a plan sends before it
//! receives), a rank that never runs or that fails named by its peers.

use acspeed_algorithms::Algorithm;
use acspeed_core::device::{self, DevBuffers, DevCall, DeviceExecutor, SlotShape};
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor};
use acspeed_core::plan::{Collective, RankPlan};
use acspeed_core::schedule::{lower, Lowering};
use acspeed_core::{DType, Error, PlanContext, Rank, ReduceOp, Transport};
use acspeed_testkit::{HostDevice, MemoryTransport};
use proptest::prelude::*;
use std::time::Duration;

fn value(r: usize, i: usize) -> f32 {
    // Values whose f32 sums depend on the order they are added in.
    ((r * 7919 + i * 104_729) % 10_007) as f32 * 1.37e-3 + (r as f32 + 1.0) * 1e4
}

fn inputs(plan: &RankPlan, r: usize, count: usize) -> (Vec<f32>, Vec<f32>) {
    let n = plan.nranks as usize;
    let (ie, oe) = plan.collective.buffer_elems(n, count);
    (
        (0..ie).map(|i| value(r, i)).collect(),
        (0..oe).map(|i| value(r, i + 5)).collect(),
    )
}

fn reduces(c: Collective) -> bool {
    matches!(
        c,
        Collective::AllReduce | Collective::Reduce { .. } | Collective::ReduceScatter
    )
}

fn low(seg: usize, depth: usize) -> Lowering {
    Lowering {
        segment_bytes: seg,
        min_segments: 1,
        depth,
    }
}

/// The CPU executor's outputs over the in-memory transport.
fn on_cpu(plans: &[RankPlan], count: usize, seg: usize) -> Vec<Vec<f32>> {
    let n = plans.len() as u32;
    let channels = plans.iter().map(|p| p.channels()).max().unwrap_or(1);
    let mut fabrics: Vec<Vec<MemoryTransport>> = (0..n).map(|_| Vec::new()).collect();
    for _ in 0..channels {
        for (r, t) in MemoryTransport::fabric(n).into_iter().enumerate() {
            fabrics[r].push(t);
        }
    }
    let exe = Executor::new(ExecParams {
        segment_bytes: seg,
        depth: 2,
        timeout: Duration::from_secs(30),
        stall_warn: Duration::ZERO,
        min_segments: 1,
    });
    std::thread::scope(|s| {
        let hs: Vec<_> = plans
            .iter()
            .zip(&fabrics)
            .enumerate()
            .map(|(r, (plan, ts))| {
                let exe = &exe;
                s.spawn(move || {
                    let (input, mut out) = inputs(plan, r, count);
                    let bufs = Buffers {
                        input: input.as_ptr() as *const u8,
                        input_len: input.len() * 4,
                        output: out.as_mut_ptr() as *mut u8,
                        output_len: out.len() * 4,
                    };
                    let call = CallInfo {
                        seq: 1,
                        dtype: DType::F32,
                        op: reduces(plan.collective).then_some(ReduceOp::Sum),
                        count,
                    };
                    let chans: Vec<&dyn Transport> =
                        ts.iter().map(|t| t as &dyn Transport).collect();
                    exe.run_with(plan, &chans, None, call, bufs, None)
                        .unwrap_or_else(|e| panic!("cpu rank {r}: {e}"));
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn executors(
    n: u32,
    seg: usize,
    depth: usize,
    timeout: Duration,
) -> Vec<DeviceExecutor<HostDevice>> {
    HostDevice::fabric(n)
        .into_iter()
        .map(|d| {
            DeviceExecutor::new(
                d,
                SlotShape {
                    depth,
                    slot_bytes: seg,
                },
                timeout,
            )
        })
        .collect()
}

/// Runs `plans` through the device executors (all ranks at once); `skip` ranks never run.
fn on_device(
    exes: &[DeviceExecutor<HostDevice>],
    plans: &[RankPlan],
    count: usize,
    l: Lowering,
    seq: u64,
    skip: &[usize],
) -> Vec<acspeed_core::Result<Vec<f32>>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = plans
            .iter()
            .zip(exes)
            .enumerate()
            .filter(|(r, _)| !skip.contains(r))
            .map(|(r, (plan, exe))| {
                s.spawn(move || {
                    let sched = lower(plan, count, 4, l);
                    let prog = device::compile(&sched)?;
                    let (input, mut out) = inputs(plan, r, count);
                    let bufs = DevBuffers {
                        input: input.as_ptr() as u64,
                        input_len: input.len() * 4,
                        output: out.as_mut_ptr() as u64,
                        output_len: out.len() * 4,
                        ready: None,
                    };
                    let call = DevCall {
                        seq,
                        dtype: DType::F32,
                        op: reduces(plan.collective).then_some(ReduceOp::Sum),
                        tag: DevCall::tag_of(seq, &[count as u64]),
                    };
                    exe.run(&prog, bufs, call)?;
                    Ok(out)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn context(shape: usize) -> PlanContext {
    let shapes: [&[u32]; 6] = [&[2], &[3], &[5], &[2, 2], &[2, 3], &[8]];
    let ctx = PlanContext::from_shape(shapes[shape % shapes.len()]).unwrap();
    if shape % shapes.len() == 5 {
        ctx.with_nvlinks(crate::util::dgx1()).unwrap()
    } else {
        ctx
    }
}

fn collective(n: u32, i: usize) -> Collective {
    let all = crate::util::collectives(n);
    all[i % all.len()]
}

/// Whether the device executor takes these plans (CPU-Reduce's host reduces are not device work).
fn device_work(plans: &[RankPlan]) -> bool {
    plans.iter().all(|p| {
        p.lanes
            .iter()
            .flat_map(|l| &l.steps)
            .all(|s| !matches!(s.op, acspeed_core::Op::HostReduce { .. }))
    })
}

/// Whether the plans ran on the device (false: not served, or CPU-Reduce's host reduces).
fn check(
    algo: Algorithm,
    shape: usize,
    coll: usize,
    count: usize,
    seg: usize,
    depth: usize,
) -> bool {
    let ctx = context(shape);
    let coll = collective(ctx.nranks, coll);
    if !algo.serves(coll) {
        return false;
    }
    let plans = algo.all_plans_rounds(coll, &ctx, 2).unwrap();
    if !device_work(&plans) {
        let sched = lower(&plans[0], count, 4, low(seg, depth));
        if plans[0]
            .lanes
            .iter()
            .flat_map(|l| &l.steps)
            .any(|s| matches!(s.op, acspeed_core::Op::HostReduce { .. }))
        {
            let e = device::compile(&sched).unwrap_err().to_string();
            assert!(e.contains("host reduce"), "{e}");
        }
        return false;
    }
    let want = on_cpu(&plans, count, seg);
    let exes = executors(ctx.nranks, seg, depth, Duration::from_secs(30));
    let got = on_device(&exes, &plans, count, low(seg, depth), 1, &[]);
    for (r, (g, w)) in got.into_iter().zip(&want).enumerate() {
        let g = g.unwrap_or_else(|e| panic!("{} {} rank {r}: {e}", algo.name(), coll.name()));
        let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && g.len() == w.len(),
            "{} {} on {} ranks, count {count}, segment {seg}, depth {depth}: rank {r} differs from the CPU executor",
            algo.name(),
            coll.name(),
            ctx.nranks
        );
    }
    true
}

#[test]
fn every_algorithm_and_collective_matches_the_cpu_executor() {
    let mut ran = std::collections::BTreeMap::new();
    for algo in Algorithm::ALL {
        for shape in 0..6 {
            for coll in 0..6 {
                if check(algo, shape, coll, 3000, 1024, 2) {
                    *ran.entry(algo.name()).or_insert(0) += 1;
                }
            }
        }
    }
    // Every algorithm but CPU-Reduce ran on the device, on every shape for allreduce at least.
    for algo in Algorithm::ALL {
        let want = if algo == Algorithm::CpuReduce { 0 } else { 6 };
        assert!(
            ran.get(algo.name()).copied().unwrap_or(0) >= want,
            "{ran:?}"
        );
    }
    eprintln!("device runs per algorithm: {ran:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn device_and_cpu_executors_agree(
        algo in 0..Algorithm::ALL.len(),
        shape in 0usize..6,
        coll in 0usize..6,
        count in prop_oneof![Just(0usize), 1usize..64, 64usize..20_000],
        seg in prop_oneof![Just(64usize), Just(1000), Just(4096)],
        depth in 1usize..4,
    ) {
        check(Algorithm::ALL[algo], shape, coll, count, seg, depth);
    }
}

/// One slot per connection and many segments: a ring sends its first chunk before it receives
/// anything, so sends must never hold up receives.
#[test]
fn one_slot_and_many_segments_do_not_deadlock() {
    for algo in [Algorithm::Ring, Algorithm::Tree, Algorithm::Ntree] {
        assert!(check(algo, 2, 0, 40_000, 256, 1));
        assert!(check(algo, 5, 0, 40_000, 512, 1));
    }
}

/// Counters run on across calls: calls of different sizes and collectives in a row on the same
/// executors, each exact.
#[test]
fn counters_run_on_across_calls() {
    let ctx = context(2);
    let exes = executors(ctx.nranks, 1024, 2, Duration::from_secs(30));
    for (i, (coll, count)) in [(0, 5000), (0, 7), (3, 300), (0, 0), (4, 2000), (0, 5000)]
        .into_iter()
        .enumerate()
    {
        let coll = collective(ctx.nranks, coll);
        let plans = Algorithm::Ring.all_plans_rounds(coll, &ctx, 1).unwrap();
        let want = on_cpu(&plans, count, 1024);
        let got = on_device(&exes, &plans, count, low(1024, 2), i as u64, &[]);
        for (r, g) in got.into_iter().enumerate() {
            let g = g.unwrap();
            assert!(
                g.iter()
                    .zip(&want[r])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "call {i} ({}) rank {r}",
                coll.name()
            );
        }
    }
}

/// A rank that never runs is named by the ranks waiting for it, within the timeout; the
/// executors are then poisoned and say so.
#[test]
fn a_rank_that_never_runs_is_named() {
    let ctx = context(1);
    let plans = Algorithm::Ring
        .all_plans_rounds(Collective::AllReduce, &ctx, 1)
        .unwrap();
    let exes = executors(ctx.nranks, 1024, 2, Duration::from_millis(600));
    let t0 = std::time::Instant::now();
    let got = on_device(&exes, &plans, 4000, low(1024, 2), 1, &[2]);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let mut named = false;
    for r in got {
        match r.unwrap_err() {
            Error::Timeout { rank, .. } => named |= rank == 2,
            // A rank whose peer gave up first hears it from that peer.
            Error::Remote { rank, .. } => assert!(rank < 2, "{rank}"),
            e => panic!("{e}"),
        }
    }
    assert!(named, "no rank named rank 2");
    let again = on_device(&exes, &plans, 4000, low(1024, 2), 2, &[2]);
    assert!(again[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("failed earlier"));
}

/// Programs the executor must refuse: another rank's, and buffers of the wrong size.
#[test]
fn foreign_programs_and_wrong_buffers_are_refused() {
    let ctx = context(0);
    let plans = Algorithm::Ring
        .all_plans_rounds(Collective::AllReduce, &ctx, 1)
        .unwrap();
    let exes = executors(2, 1024, 2, Duration::from_secs(1));
    let prog = device::compile(&lower(&plans[1], 100, 4, low(1024, 2))).unwrap();
    let mut out = vec![0f32; 100];
    let bufs = host_bufs(&mut out);
    let call = DevCall {
        seq: 1,
        dtype: DType::F32,
        op: Some(ReduceOp::Sum),
        tag: 1,
    };
    let e = exes[0].run(&prog, bufs, call).unwrap_err().to_string();
    assert!(e.contains("rank 1") && e.contains("rank 0"), "{e}");
    let prog = device::compile(&lower(&plans[0], 100, 4, low(1024, 2))).unwrap();
    let e = exes[0]
        .run(
            &prog,
            DevBuffers {
                output_len: 396,
                ..bufs
            },
            call,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("396"), "{e}");
    // Segments larger than the connections' slots.
    let prog = device::compile(&lower(&plans[0], 1000, 4, low(4096, 2))).unwrap();
    let mut out = vec![0f32; 1000];
    let bufs = host_bufs(&mut out);
    let big = exes[0].run(&prog, bufs, call).unwrap_err().to_string();
    assert!(big.contains("slots"), "{big}");
}

/// Device executors over one stand-in fabric, one per rank, for communicator-level tests.
fn comm_devices(n: u32) -> Vec<DeviceExecutor<HostDevice>> {
    executors(n, 256 << 10, 4, Duration::from_secs(30))
}

/// `v` as the output buffer of an in-place call (host memory is the stand-in's device memory).
fn host_bufs(v: &mut [f32]) -> DevBuffers {
    DevBuffers {
        input: 0,
        input_len: 0,
        output: v.as_mut_ptr() as u64,
        output_len: v.len() * 4,
        ready: None,
    }
}

/// An f32 allreduce of `v` through `comm`'s device path on its rank's executor.
fn device_allreduce(
    comm: &acspeed::Communicator,
    devs: &[DeviceExecutor<HostDevice>],
    v: &mut [f32],
    op: ReduceOp,
) -> acspeed::DeviceRun {
    let exe = &devs[comm.rank() as usize];
    comm.run_device(
        exe,
        Collective::AllReduce,
        DType::F32,
        Some(op),
        v.len(),
        host_bufs(v),
    )
    .unwrap()
}

/// Through the communicator: the policy's algorithm, the verified plan, the device program;
/// equal to the CPU path bitwise for sum and average (the epilogue on the engine), at sizes
/// that pick different algorithms, and the handle exchange the CUDA engine uses.
#[test]
fn communicator_runs_device_collectives_like_the_cpu_path() {
    use crate::util::{run_group, test_config, Fabric};
    use acspeed::{CommExchange, DeviceRun};
    use acspeed_core::device::PeerExchange;
    let n = 3;
    for algo in ["ring", "tree"] {
        let devs = comm_devices(n);
        let mut cfg = test_config(256 << 10, 4, 30);
        // Small allreduces on one host go through the host's staging area under `auto`.
        cfg.policy.algo = acspeed_core::config::AlgoChoice::Named(algo.into());
        let outs = run_group(Fabric::Memory, n, cfg, |comm| {
            let r = comm.rank() as usize;
            let comm = std::sync::Arc::new(comm);
            for (count, op) in [
                (1usize, ReduceOp::Sum),
                (1000, ReduceOp::Avg),
                (300_000, ReduceOp::Sum),
                (70_001, ReduceOp::Max),
            ] {
                let mut cpu: Vec<f32> = (0..count).map(|i| value(r, i)).collect();
                let mut dev = cpu.clone();
                comm.allreduce(&mut cpu, op).unwrap();
                assert_eq!(device_allreduce(&comm, &devs, &mut dev, op), DeviceRun::Ran);
                assert!(
                    cpu.iter()
                        .zip(&dev)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "rank {r}: {count} elements, {op}"
                );
            }
            // The exchange: every rank trades a message with each other rank.
            let ex = CommExchange(comm.clone());
            let mine: Vec<(Rank, Vec<u8>)> = (0..n)
                .filter(|p| *p as usize != r)
                .map(|p| (Rank(p), vec![r as u8 * 10 + p as u8; 69]))
                .collect();
            let got = ex.exchange(&mine).unwrap();
            for ((p, _), g) in mine.iter().zip(got) {
                assert_eq!(g, vec![p.0 as u8 * 10 + r as u8; 69], "rank {r} from {p}");
            }
            r
        });
        assert_eq!(outs, vec![0, 1, 2]);
    }
}

/// What is not device work is answered with the reason on every rank, and nothing runs:
/// CPU-Reduce chosen, ranks on two hosts.
#[test]
fn calls_that_are_not_device_work_are_staged_with_the_reason() {
    use crate::util::{run_group, run_group_on_hosts, test_config, Fabric};
    use acspeed::DeviceRun;
    let mut cfg = test_config(256 << 10, 4, 30);
    cfg.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
    let devs = comm_devices(2);
    let why = run_group(Fabric::Memory, 2, cfg, |comm| {
        let mut v = vec![1f32; 1000];
        let r = device_allreduce(&comm, &devs, &mut v, ReduceOp::Sum);
        assert!(v.iter().all(|x| *x == 1.0), "a staged call ran");
        r
    });
    for w in why {
        assert!(
            matches!(&w, DeviceRun::Staged(s) if s.contains("CPU-Reduce")),
            "{w:?}"
        );
    }
    let devs = comm_devices(4);
    let why = run_group_on_hosts(
        Fabric::Memory,
        &[2, 2],
        test_config(256 << 10, 4, 30),
        |comm| {
            let mut v = vec![1f32; 1000];
            device_allreduce(&comm, &devs, &mut v, ReduceOp::Sum)
        },
    );
    for w in why {
        assert!(
            matches!(&w, DeviceRun::Staged(s) if s.contains("2 hosts")),
            "{w:?}"
        );
    }
}

/// A topology whose GPU pairs have no peer-to-peer path (PCIe through the host bridge and
/// across sockets) keeps calls on the staging path, naming the pair; an NVLink box runs them.
#[test]
fn gpu_pairs_without_p2p_are_staged_naming_them() {
    use crate::util::{run_group, test_config, topo_json, Fabric};
    use acspeed::DeviceRun;
    let dir = std::env::temp_dir().join(format!("acspeed-devp2p-{}", std::process::id()));
    let run = |fixture: &str, n: u32, refused: bool| {
        let mut cfg = test_config(256 << 10, 4, 30);
        let name = format!("{n}-{refused}.json");
        cfg.model.topo_file = Some(topo_json(&dir, &name, fixture, |d| {
            if refused {
                // NVLink in the path matrix, but the driver refuses P2P (as in some VMs).
                d.p2p = Some(vec![vec![true, false], vec![false, true]]);
            }
        }));
        cfg.policy.algo = acspeed_core::config::AlgoChoice::Named("ring".into());
        let devs = comm_devices(n);
        run_group(Fabric::Memory, n, cfg, |comm| {
            let mut v = vec![comm.rank() as f32; 1000];
            let r = device_allreduce(&comm, &devs, &mut v, ReduceOp::Sum);
            (r, v[999])
        })
    };
    let pcie = run(
        fixture!("nvsmi/10-titanx-4gpu-pcie-phb-sys-2nic.txt"),
        4,
        false,
    );
    for (w, v) in pcie {
        assert!(
            matches!(&w, DeviceRun::Staged(s) if s.contains("GPUs 0 and 1") && s.contains("peer-to-peer")),
            "{w:?}"
        );
        assert!(v < 4.0, "a staged call ran");
    }
    let nvlink = run(fixture!("nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt"), 2, false);
    for (w, v) in nvlink {
        assert_eq!(w, DeviceRun::Ran);
        assert_eq!(v, 1.0);
    }
    let refused = run(fixture!("nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt"), 2, true);
    for (w, _) in refused {
        assert!(
            matches!(&w, DeviceRun::Staged(s) if s.contains("GPUs 0 and 1")),
            "{w:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every collective through the communicator's device path, with separate input buffers where
/// the collective has them, equals the CPU path bitwise (f32 sums); a root out of range is
/// refused naming it.
#[test]
fn every_collective_through_the_communicator_matches_the_cpu_path() {
    use crate::util::{run_group, test_config, Fabric};
    use acspeed::DeviceRun;
    let n = 3u32;
    let devs = comm_devices(n);
    let mut cfg = test_config(256 << 10, 4, 30);
    cfg.policy.algo = acspeed_core::config::AlgoChoice::Named("ring".into());
    run_group(Fabric::Memory, n, cfg, |comm| {
        let r = comm.rank() as usize;
        let exe = &devs[r];
        let count = 5000usize;
        let input: Vec<f32> = (0..count * n as usize).map(|i| value(r, i)).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
        let dev_run = |coll, op, count, inp: &[f32], out: &mut [f32]| {
            let bufs = DevBuffers {
                input: inp.as_ptr() as u64,
                input_len: inp.len() * 4,
                ..host_bufs(out)
            };
            comm.run_device(exe, coll, DType::F32, op, count, bufs)
                .unwrap()
        };
        let same = |what: &str, a: &[f32], b: &[u8]| {
            assert_eq!(bytes(a), b, "rank {r}: {what}");
        };
        // Broadcast and reduce from rank 1, in place.
        let root = Rank(1);
        let mut cpu = bytes(&input[..count]);
        comm.broadcast_bytes(&mut cpu, DType::F32, 1).unwrap();
        let mut dev = input[..count].to_vec();
        let ran = dev_run(Collective::Broadcast { root }, None, count, &[], &mut dev);
        assert_eq!(ran, DeviceRun::Ran);
        same("broadcast", &dev, &cpu);
        let mut cpu = bytes(&input[..count]);
        comm.reduce_bytes(&mut cpu, DType::F32, ReduceOp::Sum, 1)
            .unwrap();
        let mut dev = input[..count].to_vec();
        dev_run(
            Collective::Reduce { root },
            Some(ReduceOp::Sum),
            count,
            &[],
            &mut dev,
        );
        if r == 1 {
            same("reduce", &dev, &cpu);
        }
        // All-gather, reduce-scatter and all-to-all from separate inputs.
        let mut cpu = vec![0u8; count * n as usize * 4];
        comm.allgather_bytes(&bytes(&input[..count]), &mut cpu, DType::F32)
            .unwrap();
        let mut dev = vec![0f32; count * n as usize];
        dev_run(
            Collective::AllGather,
            None,
            count,
            &input[..count],
            &mut dev,
        );
        same("allgather", &dev, &cpu);
        let mut cpu = vec![0u8; count * 4];
        comm.reduce_scatter_bytes(&bytes(&input), &mut cpu, DType::F32, ReduceOp::Sum)
            .unwrap();
        let mut dev = vec![0f32; count];
        dev_run(
            Collective::ReduceScatter,
            Some(ReduceOp::Sum),
            count,
            &input,
            &mut dev,
        );
        same("reduce_scatter", &dev, &cpu);
        let mut cpu = vec![0u8; input.len() * 4];
        comm.alltoall_bytes(&bytes(&input), &mut cpu, DType::F32)
            .unwrap();
        let mut dev = vec![0f32; input.len()];
        dev_run(Collective::AllToAll, None, count, &input, &mut dev);
        same("alltoall", &dev, &cpu);
        let mut v = vec![0f32; 4];
        let e = comm
            .run_device(
                exe,
                Collective::Broadcast { root: Rank(7) },
                DType::F32,
                None,
                4,
                host_bufs(&mut v),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("root 7"), "{e}");
    });
}

/// Ranks that disagree on the call (different counts): the rank whose longer call waits for
/// messages that never come fails within the timeout naming the other, nobody hangs, and no
/// slot is written past its end. The rank whose shorter call completes is told of the
/// mismatch when its peer has not yet run ahead (the check is best effort: docs/CUDA.md).
#[test]
fn calls_that_differ_across_ranks_fail_without_hanging() {
    use crate::util::{run_group, test_config, Fabric};
    let devs = executors(2, 256 << 10, 2, Duration::from_millis(800));
    let mut cfg = test_config(256 << 10, 2, 30);
    cfg.policy.algo = acspeed_core::config::AlgoChoice::Named("ring".into());
    let t0 = std::time::Instant::now();
    let res = run_group(Fabric::Memory, 2, cfg, |comm| {
        let mut v = vec![1f32; if comm.rank() == 0 { 100_000 } else { 300_000 }];
        let exe = &devs[comm.rank() as usize];
        let n = v.len();
        comm.run_device(
            exe,
            Collective::AllReduce,
            DType::F32,
            Some(ReduceOp::Sum),
            n,
            host_bufs(&mut v),
        )
        .map_err(|e| e.to_string())
    });
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let longer = res[1].as_ref().unwrap_err();
    assert!(longer.contains("rank 0"), "{longer}");
    if let Err(e) = &res[0] {
        assert!(
            e.contains("mismatch with rank 1") && e.contains("another call"),
            "{e}"
        );
    }
}
