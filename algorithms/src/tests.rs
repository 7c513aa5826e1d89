//! Property tests: every plan of every algorithm verifies symbolically (unbounded FIFOs and
//! bounded buffers) for nranks 1..=17, uneven host shapes, several chunk counts and concrete
//! element counts (including 0, 1 and odd ones).

use super::*;
use acspeed_core::plan::{ChunkRef, Op};
use acspeed_core::verify::{verify, verify_all_models};
use proptest::prelude::*;

fn collectives(n: u32) -> Vec<Collective> {
    let mut v = vec![
        Collective::AllReduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Barrier,
    ];
    for root in [0, n / 2, n - 1] {
        v.push(Collective::Broadcast { root: Rank(root) });
        v.push(Collective::Reduce { root: Rank(root) });
    }
    v
}

/// Host shapes the tests always cover, besides random ones.
const SHAPES: [&[u32]; 7] = [
    &[1],
    &[3, 1, 2],
    &[4, 4],
    &[2, 2, 2, 2, 1],
    &[1, 1, 1],
    &[5, 3],
    &[2, 7, 1, 4],
];

fn check_all(ctx: &PlanContext, count: Option<usize>) -> std::result::Result<(), String> {
    for algo in Algorithm::ALL {
        for coll in collectives(ctx.nranks) {
            if !algo.serves(coll) {
                continue;
            }
            // Every plan variant: hybrid's overlapping rounds too, where it would use them.
            let max_rounds = algo.rounds_for(coll, usize::MAX, ctx);
            for rounds in 1..=max_rounds {
                let plans = algo.all_plans_rounds(coll, ctx, rounds).map_err(|e| {
                    format!("{} x{rounds} {coll:?} {:?}: {e}", algo.name(), ctx.shape())
                })?;
                verify_all_models(&plans, count).map_err(|e| {
                    format!(
                        "{} x{rounds} {coll:?} shape {:?} count {count:?}: {e}",
                        algo.name(),
                        ctx.shape()
                    )
                })?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn ring_plans_verify(n in 1u32..=17, k in 1u32..=4, count in prop_oneof![Just(0usize), Just(1), Just(7), 0usize..5000]) {
        for coll in collectives(n) {
            let ring = Ring { chunks_per_rank: k };
            let plans = all_plans(|r| ring.plan_for_rank(coll, r, n), n);
            verify_all_models(&plans, Some(count)).map_err(|e| TestCaseError::fail(format!("{coll:?} n={n} k={k} count={count}: {e}")))?;
        }
    }

    #[test]
    fn every_algorithm_verifies_on_random_host_shapes(
        shape in proptest::collection::vec(1u32..=5, 1..=5),
        count in prop_oneof![Just(0usize), Just(1), Just(7), 0usize..5000],
    ) {
        let ctx = PlanContext::from_shape(&shape).unwrap();
        check_all(&ctx, Some(count)).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn every_algorithm_verifies_for_1_to_17_ranks_and_fixed_shapes() {
    for n in 1..=17 {
        // One host, and one rank per host.
        check_all(&PlanContext::single_host(n), Some(1001)).unwrap();
        check_all(
            &PlanContext::from_shape(&vec![1; n as usize]).unwrap(),
            Some(33),
        )
        .unwrap();
    }
    for shape in SHAPES {
        let ctx = PlanContext::from_shape(shape).unwrap();
        check_all(&ctx, None).unwrap();
        check_all(&ctx, Some(12345)).unwrap();
    }
}

#[test]
fn verifier_catches_a_broken_ring() {
    // Drop the last allgather step of rank 0: its last chunk stays partial.
    let n = 4;
    let ctx = PlanContext::single_host(n);
    let ring = |coll| Algorithm::Ring.all_plans(coll, &ctx).unwrap();
    let mut plans = ring(Collective::AllReduce);
    plans[0].lanes[0].steps.pop();
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(e.contains("never received") || e.contains("rank 0"), "{e}");

    // Double reduction: turn a copy into a reduce.
    let mut plans = ring(Collective::AllReduce);
    let s = plans[1].lanes[0]
        .steps
        .iter_mut()
        .find(|s| matches!(s.op, Op::RecvCopySend { .. }))
        .unwrap();
    if let Op::RecvCopySend { from, to, dst } = s.op {
        s.op = Op::RecvReduceSend { from, to, dst };
    }
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(e.contains("x2") || e.contains("must be"), "{e}");

    // A rank that does nothing: a deadlock or wrong data.
    let mut plans = ring(Collective::Broadcast { root: Rank(0) });
    plans[2].lanes[0].steps.clear();
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(
        e.contains("never received") || e.contains("deadlock") || e.contains("must be"),
        "{e}"
    );
}

#[test]
fn bounded_model_catches_the_single_scratch_reduce_scatter() {
    // ring.rs keeps partial sums in two scratch copies used in turn. With one, every rank
    // overwrites the partial it is still sending before its neighbour has taken it: fine with
    // unbounded FIFOs, a deadlock once transport buffers are finite.
    let n = 4;
    let mut plans = Algorithm::Ring
        .all_plans(Collective::ReduceScatter, &PlanContext::single_host(n))
        .unwrap();
    for p in &mut plans {
        p.scratch_factor = 1;
        for s in &mut p.lanes[0].steps {
            let fix = |c: ChunkRef| {
                if c.buf == acspeed_core::Buf::Scratch {
                    ChunkRef::scratch(0) // one chunk per rank: copy 0 only
                } else {
                    c
                }
            };
            s.op = match s.op {
                Op::Copy { src, dst } => Op::Copy { src, dst: fix(dst) },
                Op::RecvReduceSend { from, to, dst } => Op::RecvReduceSend {
                    from,
                    to,
                    dst: fix(dst),
                },
                op => op,
            };
        }
    }
    verify(&plans, Some(100)).expect("unbounded FIFOs hide the hazard");
    let e = verify_all_models(&plans, Some(100))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bounded") && e.contains("not yet received"),
        "{e}"
    );
}

#[test]
fn fan_steps_and_weights_are_checked() {
    let ctx = PlanContext::single_host(5);
    let mut plans = Algorithm::Tree
        .all_plans(Collective::AllReduce, &ctx)
        .unwrap();
    verify_all_models(&plans, Some(10)).unwrap();
    // Uneven shares are fine when every rank agrees...
    for p in &mut plans {
        p.weights = vec![2, 1];
    }
    verify_all_models(&plans, Some(10)).unwrap();
    // ...and an error naming the rank when one does not.
    plans[3].weights = vec![1, 2];
    let e = verify(&plans, Some(10)).unwrap_err().to_string();
    assert!(e.contains("rank 3") && e.contains("same layout"), "{e}");
    // A fan that reduces from nobody is malformed.
    let mut plans = Algorithm::Tree
        .all_plans(Collective::AllReduce, &ctx)
        .unwrap();
    let root = plans[0].lanes[0]
        .steps
        .iter_mut()
        .find(|s| matches!(s.op, Op::Fan { .. }))
        .unwrap();
    if let Op::Fan { to, dst, .. } = root.op {
        root.op = Op::Fan {
            from: acspeed_core::Peers::none(),
            to,
            dst,
            reduce: true,
        };
    }
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(e.contains("fan step"), "{e}");
}

#[test]
fn algorithm_names_and_refusals() {
    assert_eq!(Algorithm::from_name("RING").unwrap(), Algorithm::Ring);
    assert_eq!(Algorithm::from_name("tree").unwrap(), Algorithm::Tree);
    assert_eq!(
        Algorithm::from_name("hybrid:ring").unwrap(),
        Algorithm::Hybrid(InterHost::Ring)
    );
    for a in Algorithm::ALL {
        assert_eq!(Algorithm::from_name(a.name()).unwrap(), a);
    }
    // The names configuration checks are exactly the algorithms there are.
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    assert_eq!(names, acspeed_core::plan::ALGORITHM_NAMES);
    assert!(Algorithm::from_name("bogus")
        .unwrap_err()
        .to_string()
        .contains("available: auto, ring, tree, ntree, hybrid"));
    let ctx = PlanContext::single_host(4);
    let e = Algorithm::Tree
        .plan(Collective::AllToAll, Rank(0), &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tree cannot run alltoall"), "{e}");
    assert!(Algorithm::Ring
        .plan(Collective::AllReduce, Rank(4), &ctx)
        .is_err());
}

#[test]
fn hybrid_keeps_inter_host_traffic_to_stripe_owners() {
    // 2 hosts x 2 ranks: each rank talks across hosts only with its counterpart.
    let ctx = PlanContext::from_shape(&[2, 2]).unwrap();
    for r in 0..4u32 {
        let p = Algorithm::Hybrid(InterHost::Ring)
            .plan(Collective::AllReduce, Rank(r), &ctx)
            .unwrap();
        let peers: std::collections::BTreeSet<u32> = p
            .lanes
            .iter()
            .flat_map(|l| &l.steps)
            .flat_map(|s| s.op.send_peers().into_iter().chain(s.op.recv_peers()))
            .map(|r| r.0)
            .collect();
        let local = r ^ 1;
        let remote = (r + 2) % 4;
        assert_eq!(peers, [local, remote].into_iter().collect(), "rank {r}");
    }
}

#[test]
fn host_reduce_steps_are_checked() {
    use acspeed_core::plan::Peers;
    let ctx = PlanContext::single_host(3);
    let plans = Algorithm::CpuReduce
        .all_plans(Collective::AllReduce, &ctx)
        .unwrap();
    assert!(plans.iter().all(|p| p.algorithm == "cpu_reduce"));
    verify_all_models(&plans, Some(1001)).unwrap();
    // A member that names another group.
    let mut bad = plans.clone();
    let g = Peers::new(&[Rank(1), Rank(2)]);
    bad[2].lanes[0].steps[0].op = Op::HostReduce {
        dst: ChunkRef::out(0),
        group: g,
        to: g,
    };
    assert!(verify(&bad, None).is_err());
    // A member that never arrives: a deadlock naming the waiting step.
    let mut missing = plans.clone();
    missing[1].lanes[0].steps.clear();
    let e = verify(&missing, None).unwrap_err().to_string();
    assert!(e.contains("deadlock") && e.contains("HostReduce"), "{e}");
    // A group without the rank itself is malformed.
    let mut foreign = plans;
    foreign[0].lanes[0].steps[0].op = Op::HostReduce {
        dst: ChunkRef::out(0),
        group: g,
        to: g,
    };
    let e = verify(&foreign, None).unwrap_err().to_string();
    assert!(e.contains("host reduce group"), "{e}");
    // Too many ranks on a host for one group: the ring, the same everywhere.
    let big = PlanContext::single_host(9);
    let p = Algorithm::CpuReduce
        .plan(Collective::AllReduce, Rank(0), &big)
        .unwrap();
    assert_eq!(p.algorithm, "ring");
    assert!(crate::cpu_reduce::fallback_reason(&big).is_some());
}

#[test]
fn cpu_reduce_keeps_a_staging_area_per_socket() {
    let sockets = [0, 0, 0, 0, 1, 1, 1, 1];
    for shape in [&[8u32][..], &[8, 8], &[6, 3], &[5]] {
        let ctx = PlanContext::from_shape(shape)
            .unwrap()
            .with_sockets(&sockets);
        let plans = Algorithm::CpuReduce
            .all_plans(Collective::AllReduce, &ctx)
            .unwrap();
        verify_all_models(&plans, Some(1001)).unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert!(
            plans.iter().all(|p| p.algorithm == "cpu_reduce"),
            "{shape:?}"
        );
        for p in &plans {
            for st in &p.lanes[0].steps {
                if let Op::HostReduce { group, to, .. } = st.op {
                    // Groups never span sockets, and only one owner takes each chunk when
                    // there are several domains.
                    let s: Vec<u32> = group.iter().map(|r| ctx.socket_of[r.idx()]).collect();
                    assert!(s.iter().all(|x| *x == s[0]), "{shape:?}: {group:?}");
                    assert_eq!(
                        to.len(),
                        if ctx.domains().len() > 1 {
                            1
                        } else {
                            group.len()
                        }
                    );
                }
            }
        }
    }
    // Four ranks stay on socket 0: one domain, one host reduce of the whole buffer.
    let ctx = PlanContext::from_shape(&[4])
        .unwrap()
        .with_sockets(&sockets);
    assert_eq!(ctx.domains().len(), 1);
    // Five reach socket 1: two domains.
    let ctx = PlanContext::from_shape(&[5])
        .unwrap()
        .with_sockets(&sockets);
    assert_eq!(
        ctx.domains(),
        vec![(0..4).map(Rank).collect::<Vec<_>>(), vec![Rank(4)]]
    );
}

#[test]
fn butterfly_and_ps_serve_any_host_count() {
    for h in 1..=17usize {
        for per_host in [1u32, 2] {
            let ctx = PlanContext::from_shape(&vec![per_host; h]).unwrap();
            for inter in [InterHost::Butterfly, InterHost::Ps] {
                let plans = Algorithm::Hybrid(inter)
                    .all_plans_rounds(Collective::AllReduce, &ctx, 3)
                    .unwrap();
                verify_all_models(&plans, Some(777))
                    .unwrap_or_else(|e| panic!("{inter:?} on {h} hosts of {per_host}: {e}"));
            }
        }
    }
}

/// The one fallback rule: what each algorithm's plan is on a job, and why.
#[test]
fn fallbacks_name_the_plan_that_runs_and_why() {
    use crate::FallbackCause;
    let ar = Collective::AllReduce;
    let one = PlanContext::single_host(4);
    let flat = PlanContext::from_shape(&[1, 1, 1]).unwrap();
    let two = PlanContext::from_shape(&[2, 2]).unwrap();
    assert_eq!(Algorithm::CpuReduce.fallback(ar, &one, true), None);
    let f = Algorithm::CpuReduce.fallback(ar, &one, false).unwrap();
    assert_eq!(
        (f.runs, f.cause),
        (Algorithm::Ring, FallbackCause::NoSharedMemory)
    );
    let f = Algorithm::CpuReduce.fallback(ar, &two, false).unwrap();
    assert_eq!(f.runs, Algorithm::Hybrid(InterHost::Ring));
    let f = Algorithm::CpuReduce.fallback(ar, &flat, true).unwrap();
    assert!(matches!(f.cause, FallbackCause::NoStagingGroup(_)), "{f:?}");
    assert_eq!(f.runs, Algorithm::Hybrid(InterHost::Ring));
    assert!(f.to_string().ends_with("so it runs hybrid"), "{f}");
    let f = Algorithm::Ntree.fallback(ar, &one, true).unwrap();
    assert_eq!(f.runs, Algorithm::Tree);
    assert!(
        f.to_string().ends_with("so it runs the double binary tree"),
        "{f}"
    );
    let nv = PlanContext::single_host(4)
        .with_nvlinks(vec![
            vec![0, 1, 1, 1],
            vec![1, 0, 1, 1],
            vec![1, 1, 0, 1],
            vec![1, 1, 1, 0],
        ])
        .unwrap();
    assert_eq!(Algorithm::Ntree.fallback(ar, &nv, true), None);
    // An algorithm that does not serve the collective has no fallback to state (ring runs).
    assert_eq!(
        Algorithm::CpuReduce.fallback(Collective::AllGather, &flat, true),
        None
    );
    for a in [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::Hybrid(InterHost::Ps),
    ] {
        assert_eq!(a.fallback(ar, &flat, false), None);
    }
    // Plans and rounds follow the fallback: CPU-Reduce on one-rank hosts plans hybrid.
    let p = Algorithm::CpuReduce.plan(ar, Rank(0), &flat).unwrap();
    assert_eq!(p.algorithm, "hybrid:ring");
    assert_eq!(
        Algorithm::CpuReduce.rounds_for(ar, 64 << 20, &flat),
        Algorithm::Hybrid(InterHost::Ring).rounds_for(ar, 64 << 20, &flat)
    );
}

/// The GPU model's link elements in closed form, each on the published topology it describes:
/// - per-generation NVLink rates and NCCL's rings: on the V100 cube-mesh (6 NVLink2 links per
///   GPU at the 20 GB/s NCCL plans) six rings carry 6 x 20 = 120 GB/s busbw;
/// - NVSwitch port sharing: on the A100 box a GPU's 12 NVLink3 links (240 GB/s) are one port
///   shared by all its peers, and one ring fills it: 240 GB/s;
/// - a bridge's links: 2x RTX 2080 Ti over 2 bridge links at 12 GB/s: 24 GB/s;
/// - host memory on the path through it (below).
///
/// busbw = 2(n-1)/n x S / time, so time = 2(n-1)/n x S / busbw.
#[test]
fn gpu_links_in_closed_form() {
    use acspeed_core::sim::{Cluster, HostModel, NetModel};
    use acspeed_core::topology::{nvsmi, PathClass, TopoDescription};
    let fixture = |p: &str, gpu: &str| {
        let path = format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"));
        let mut d = nvsmi::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        d.gpu_name = Some(gpu.into());
        d
    };
    let bytes = 1usize << 30;
    // A ring allreduce on `d`'s `n` GPUs against busbw = 2(n-1)/n x S / time.
    let check = |d: &TopoDescription, n: u32, busbw: f64, what: &str| {
        let net = NetModel {
            nic_gbit: 100.0,
            flow_gbit: None,
            streams: 4,
            latency_us: 30.0,
        };
        let cl = Cluster::new(vec![HostModel::gpu(d).unwrap()], &[n], net).unwrap();
        let (ar, ring) = (Collective::AllReduce, Algorithm::Ring);
        let t = crate::select::predict(ring, ar, &cl, bytes, 4, 4 << 20).unwrap();
        let want = 2.0 * (n - 1) as f64 / n as f64 * bytes as f64 / (busbw * 1e3);
        assert!(
            (t / want - 1.0).abs() < 0.03,
            "{what}: {t:.0} us, closed form {want:.0} us ({busbw} GB/s busbw)"
        );
    };
    let cube = "tests/fixtures/topo/v100-cube-mesh/nvidia-smi.txt";
    check(&fixture(cube, "V100-SXM2"), 8, 120.0, "V100 rings");
    let a100 = "tests/fixtures/nvsmi/06-a100-8gpu-nv12-17nic.txt";
    check(&fixture(a100, "A100-SXM4"), 8, 240.0, "A100 port");
    let bridge = "benches/published/rtx2080ti-2gpu-nv2.txt";
    check(
        &fixture(bridge, "GeForce RTX 2080 Ti"),
        2,
        24.0,
        "2080 Ti bridge",
    );
    // Host memory as a shared resource: eight GeForce boards without P2P on one socket of an
    // unnamed CPU (128 GB/s of DRAM): every ring hop is written to and read from that DRAM,
    // 8 x 2 x r <= 128, so 8 GB/s per hop although each PCIe link carries 24.
    let mut d = fixture(
        "benches/published/rtx4090-8gpu-allsys.txt",
        "GeForce RTX 4090",
    );
    d.gpus.iter_mut().for_each(|g| g.numa_node = Some(0));
    for (i, row) in d.paths.iter_mut().enumerate() {
        for (j, c) in row.iter_mut().enumerate() {
            if i != j {
                *c = PathClass::PHB;
            }
        }
    }
    check(&d, 8, 8.0, "DRAM-bound ring");
}
