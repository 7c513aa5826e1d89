//! The labelled matrix tester (DESIGN.md section 3): every collective x transport x nranks
//! {1,2,3,4,7,8} x counts {0,1,odd,large} x dtype, with closed-form expected values. Each
//! case has a label like `tcp-ring-n7-c1001-allreduce.sum-f32`; set `ACSPEED_MATRIX_FILTER`
//! to a substring to run only matching cases. Small segments (and depth 2) force the
//! multi-segment pipeline paths, as gloo's tests do with `setMaxSegmentSize`.

use crate::util::{aligned_copy, encode, run_group_on_hosts, test_config, Fabric};
use acspeed::{Communicator, Config, DType, ReduceOp};

const NRANKS: [u32; 6] = [1, 2, 3, 4, 7, 8];
const COUNTS: [usize; 4] = [0, 1, 1001, 20_011];

#[derive(Clone, Copy, Debug)]
enum Case {
    AllReduce(ReduceOp),
    Broadcast(u32),
    Reduce(u32),
    AllGather,
    ReduceScatter,
    AllToAll,
    Barrier,
}

fn cases(n: u32) -> Vec<Case> {
    let mut v = vec![
        Case::AllReduce(ReduceOp::Sum),
        Case::AllReduce(ReduceOp::Max),
        Case::AllReduce(ReduceOp::Min),
        Case::AllReduce(ReduceOp::Avg),
        Case::AllReduce(ReduceOp::Prod),
        Case::Broadcast(0),
        Case::Broadcast(n - 1),
        Case::Reduce(n / 2),
        Case::AllGather,
        Case::ReduceScatter,
        Case::AllToAll,
        Case::Barrier,
    ];
    if n > 2 {
        v.push(Case::Broadcast(1));
    }
    v
}

/// Which algorithm a matrix run forces, and how its ranks sit on hosts.
#[derive(Clone, Copy, Debug)]
struct Algo {
    /// `ACSPEED_ALGO` (`auto`, or an algorithm name such as `ring` or `hybrid:tree`).
    name: &'static str,
    /// Hosts for `n` ranks.
    shape: fn(u32) -> Vec<u32>,
}

fn one_host(n: u32) -> Vec<u32> {
    vec![n]
}

/// Uneven hosts: 1 -> [1], 2 -> [1,1], 3 -> [2,1], 4 -> [2,2], 7 -> [3,1,2,1], 8 -> [3,1,2,2].
fn uneven_hosts(n: u32) -> Vec<u32> {
    let pattern = [3, 1, 2, 2];
    match n {
        1 => vec![1],
        2 => vec![1, 1],
        3 => vec![2, 1],
        4 => vec![2, 2],
        _ => {
            let mut v = Vec::new();
            let mut left = n;
            for &p in pattern.iter().cycle() {
                if left == 0 {
                    break;
                }
                v.push(p.min(left));
                left -= p.min(left);
            }
            v
        }
    }
}

const RING: Algo = Algo {
    name: "ring",
    shape: one_host,
};

fn label(a: Algo, f: Fabric, n: u32, c: usize, case: Case, d: DType) -> String {
    let what = match case {
        Case::AllReduce(op) => format!("allreduce.{op}"),
        Case::Broadcast(r) => format!("broadcast.root{r}"),
        Case::Reduce(r) => format!("reduce.root{r}"),
        other => format!("{other:?}").to_lowercase(),
    };
    let hosts = (a.shape)(n);
    let shape = if hosts.len() > 1 {
        format!(
            "-h{}",
            hosts
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join("+")
        )
    } else {
        String::new()
    };
    format!("{}-{}-n{n}{shape}-c{c}-{what}-{d:?}", f.name(), a.name).to_lowercase()
}

/// Input of rank r, element i (small integers: exact in every dtype for n <= 8).
fn x(r: u32, i: usize) -> f64 {
    (r as f64 + 1.0) * ((i % 7) as f64 + 1.0)
}

fn allreduce_expect(op: ReduceOp, n: u32, i: usize, d: DType) -> f64 {
    let base = (i % 7) as f64 + 1.0;
    match op {
        ReduceOp::Sum => base * (n * (n + 1) / 2) as f64,
        ReduceOp::Max => base * n as f64,
        ReduceOp::Min => base,
        ReduceOp::Avg => {
            let s = base * (n * (n + 1) / 2) as f64;
            if d.is_float() {
                s / n as f64
            } else {
                // Integer average truncates the wrapped sum.
                let wrapped = i64::from_ne_bytes(pad(&encode(d, &[s]), d));
                (wrapped / n as i64) as f64
            }
        }
        ReduceOp::Prod => 2.0,
        _ => unreachable!(),
    }
}

fn pad(b: &[u8], d: DType) -> [u8; 8] {
    let v: i64 = match d {
        DType::I8 => b[0] as i8 as i64,
        DType::U8 => b[0] as i64,
        DType::I32 => i32::from_ne_bytes(b.try_into().unwrap()) as i64,
        _ => i64::from_ne_bytes(b.try_into().unwrap()),
    };
    v.to_ne_bytes()
}

/// Runs one case on this rank; returns an error string with the label on mismatch.
fn run_case(
    comm: &Communicator,
    a: Algo,
    f: Fabric,
    c: usize,
    case: Case,
    d: DType,
) -> Result<(), String> {
    let (r, n) = (comm.rank(), comm.nranks());
    let lbl = label(a, f, n, c, case, d);
    let fail = |e: String| Err(format!("{lbl}: {e}"));
    let input: Vec<f64> = match case {
        Case::AllReduce(ReduceOp::Prod) => (0..c)
            .map(|i| {
                if i % n as usize == r as usize {
                    2.0
                } else {
                    1.0
                }
            })
            .collect(),
        Case::ReduceScatter | Case::AllToAll => (0..c * n as usize).map(|i| x(r, i)).collect(),
        _ => (0..c).map(|i| x(r, i)).collect(),
    };
    let inb = aligned_copy(&encode(d, &input));
    let (got, want): (Vec<u8>, Vec<f64>) = match case {
        Case::AllReduce(op) => {
            let mut b = aligned_copy(&inb);
            if let Err(e) = comm.allreduce_bytes(&mut b, d, op) {
                return fail(e.to_string());
            }
            (
                b.to_vec(),
                (0..c).map(|i| allreduce_expect(op, n, i, d)).collect(),
            )
        }
        Case::Broadcast(root) => {
            let mut b = aligned_copy(&inb);
            if let Err(e) = comm.broadcast_bytes(&mut b, d, root) {
                return fail(e.to_string());
            }
            (b.to_vec(), (0..c).map(|i| x(root, i)).collect())
        }
        Case::Reduce(root) => {
            let mut b = aligned_copy(&inb);
            if let Err(e) = comm.reduce_bytes(&mut b, d, ReduceOp::Sum, root) {
                return fail(e.to_string());
            }
            if r != root {
                return Ok(());
            }
            (
                b.to_vec(),
                (0..c)
                    .map(|i| allreduce_expect(ReduceOp::Sum, n, i, d))
                    .collect(),
            )
        }
        Case::AllGather => {
            let mut out = aligned_copy(&vec![0u8; inb.len() * n as usize]);
            if let Err(e) = comm.allgather_bytes(&inb, &mut out, d) {
                return fail(e.to_string());
            }
            (
                out.to_vec(),
                (0..n).flat_map(|q| (0..c).map(move |i| x(q, i))).collect(),
            )
        }
        Case::ReduceScatter => {
            let mut out = aligned_copy(&vec![0u8; c * d.size()]);
            if let Err(e) = comm.reduce_scatter_bytes(&inb, &mut out, d, ReduceOp::Sum) {
                return fail(e.to_string());
            }
            let want = (0..c)
                .map(|i| (0..n).map(|q| x(q, r as usize * c + i)).sum::<f64>())
                .collect();
            (out.to_vec(), want)
        }
        Case::AllToAll => {
            let mut out = aligned_copy(&vec![0u8; inb.len()]);
            if let Err(e) = comm.alltoall_bytes(&inb, &mut out, d) {
                return fail(e.to_string());
            }
            // Block q of our output is block r of rank q's input.
            (
                out.to_vec(),
                (0..n)
                    .flat_map(|q| (0..c).map(move |i| x(q, r as usize * c + i)))
                    .collect(),
            )
        }
        Case::Barrier => {
            return comm.barrier().map_err(|e| format!("{lbl}: {e}"));
        }
    };
    let want = encode(d, &want);
    if got != want {
        let es = d.size();
        let first = got
            .chunks(es)
            .zip(want.chunks(es))
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return fail(format!(
            "rank {r}: first wrong element {first} of {}",
            want.len() / es
        ));
    }
    Ok(())
}

fn run_matrix(f: Fabric, counts: &[usize], dtypes: &[DType]) {
    run_matrix_algo(RING, f, counts, dtypes)
}

fn run_matrix_algo(a: Algo, f: Fabric, counts: &[usize], dtypes: &[DType]) {
    run_matrix_topo(a, f, counts, dtypes, None)
}

/// [`run_matrix_algo`] with `ACSPEED_TOPO_FILE` set to `topo`.
fn run_matrix_topo(a: Algo, f: Fabric, counts: &[usize], dtypes: &[DType], topo: Option<&str>) {
    let filter = std::env::var("ACSPEED_MATRIX_FILTER").unwrap_or_default();
    let mut ran = 0usize;
    for n in NRANKS {
        let plan: Vec<(usize, Case, DType)> = counts
            .iter()
            .flat_map(|&c| {
                cases(n)
                    .into_iter()
                    .flat_map(move |k| dtypes.iter().map(move |&d| (c, k, d)))
            })
            .filter(|(c, k, d)| label(a, f, n, *c, *k, *d).contains(&filter))
            .collect();
        ran += plan.len();
        let cfg = {
            let mut base = test_config(4096, 2, 30);
            base.policy.algo = acspeed_core::config::AlgoChoice::Named(a.name.into());
            base.model.topo_file = topo.map(str::to_string);
            base
        };
        let cfg = if a.name == "auto" {
            Config {
                policy: acspeed_core::config::PolicySettings {
                    algo: acspeed_core::config::AlgoChoice::Auto,
                    ..cfg.policy
                },
                ..cfg
            }
        } else {
            cfg
        };
        let res = run_group_on_hosts(f, &(a.shape)(n), cfg, |comm| {
            let mut errs = Vec::new();
            for (c, k, d) in &plan {
                if let Err(e) = run_case(&comm, a, f, *c, *k, *d) {
                    errs.push(e);
                    break; // the communicator is poisoned after a failure
                }
            }
            errs
        });
        let errs: Vec<String> = res.into_iter().flatten().collect();
        assert!(errs.is_empty(), "matrix failures:\n{}", errs.join("\n"));
    }
    assert!(ran > 0 || !filter.is_empty(), "the matrix ran no case");
}

#[test]
fn matrix_memory_all_dtypes() {
    run_matrix(Fabric::Memory, &COUNTS, &DType::ALL);
}

#[test]
fn matrix_memory_fused_reduce() {
    run_matrix(
        Fabric::MemoryFused,
        &COUNTS,
        &[DType::F32, DType::F16, DType::I32, DType::U8],
    );
}

#[test]
fn matrix_tcp_loopback() {
    run_matrix(
        Fabric::Tcp,
        &COUNTS,
        &[DType::F32, DType::BF16, DType::I8, DType::F64],
    );
}

#[test]
fn matrix_tcp_multistream() {
    run_matrix(Fabric::TcpMulti, &COUNTS, &[DType::F32, DType::I64]);
}

/// The single-copy path: every message of 64 KiB or more (the large counts) is read by
/// process_vm_readv, plain and reducing receives alike.
#[test]
fn matrix_shared_memory_cma() {
    run_matrix(
        Fabric::ShmCma,
        &COUNTS,
        &[DType::F32, DType::BF16, DType::I8],
    );
}

/// The large-collective path of the default mode: every slot filled with streaming stores.
#[test]
fn matrix_shared_memory_streaming_stores() {
    run_matrix(
        Fabric::ShmStream,
        &COUNTS,
        &[DType::F32, DType::BF16, DType::I8],
    );
}

#[test]
fn matrix_shared_memory() {
    run_matrix(
        Fabric::Shm,
        &COUNTS,
        &[DType::F32, DType::BF16, DType::I8, DType::F64],
    );
}

#[cfg(feature = "rdma")]
#[test]
fn matrix_rdma_libfabric() {
    run_matrix(Fabric::Rdma, &COUNTS, &[DType::F32, DType::I8]);
}

/// The double binary tree (allreduce, broadcast, reduce; the other collectives fall back to
/// ring, which the matrix covers too).
#[test]
fn matrix_tree() {
    let tree = Algo {
        name: "tree",
        shape: one_host,
    };
    run_matrix_algo(tree, Fabric::Memory, &COUNTS, &DType::ALL);
    run_matrix_algo(tree, Fabric::MemoryFused, &COUNTS, &[DType::F32, DType::I8]);
    run_matrix_algo(tree, Fabric::Tcp, &COUNTS, &[DType::F32, DType::BF16]);
    run_matrix_algo(tree, Fabric::Shm, &COUNTS, &[DType::F32, DType::I64]);
}

/// n-trees from topology files: the 8-GPU V100 cube-mesh (partial allocations for fewer
/// ranks; link-disjoint trees on one channel) and a 4-GPU layout whose two trees share
/// links (two channels; beyond 4 ranks GPUs would be shared, so it falls back to the tree).
#[test]
fn matrix_ntree() {
    let dir = std::env::temp_dir().join(format!("acspeed-ntree-{}", std::process::id()));
    let file = |name: &str, fixture: &str| crate::util::topo_json(&dir, name, fixture, |_| {});
    let v100 = file(
        "v100.json",
        fixture!("nvsmi/02-v100-8gpu-vm-phb-likejazz.txt"),
    );
    let shared = file("fake4.json", fixture!("fake-nvlink-4gpu.txt"));
    let a = Algo {
        name: "ntree",
        shape: one_host,
    };
    for topo in [&v100, &shared] {
        let t = Some(topo.as_str());
        run_matrix_topo(a, Fabric::Memory, &COUNTS, &DType::ALL, t);
        run_matrix_topo(a, Fabric::Tcp, &COUNTS, &[DType::F32, DType::BF16], t);
        run_matrix_topo(a, Fabric::Shm, &COUNTS, &[DType::F32, DType::I64], t);
    }
    // Two hosts of the cube-mesh: trees join at rotating roots across TCP.
    let two = Algo {
        name: "ntree",
        shape: |n| {
            if n < 2 {
                vec![n]
            } else {
                vec![n / 2, n - n / 2]
            }
        },
    };
    run_matrix_topo(two, Fabric::Shm, &COUNTS, &[DType::F32], Some(&v100));
    std::fs::remove_dir_all(&dir).ok();
}

/// CPU-Reduce: one host (the staging area; beyond 8 ranks the plan is the ring), uneven
/// hosts (staging inside each host, stripes across hosts over TCP), and a dual-socket box
/// (a staging area per socket once ranks reach the second one: 7 and 8 ranks).
#[test]
fn matrix_cpu_reduce() {
    let dir = std::env::temp_dir().join(format!("acspeed-cpured-{}", std::process::id()));
    let two_sockets = crate::util::topo_json(
        &dir,
        "pcie8.json",
        fixture!("nvsmi/04-savio4-8gpu-pcie-pxb-pix.txt"),
        |_| {},
    );
    let one = Algo {
        name: "cpu_reduce",
        shape: one_host,
    };
    run_matrix_algo(one, Fabric::Memory, &COUNTS, &DType::ALL);
    run_matrix_algo(
        one,
        Fabric::Shm,
        &COUNTS,
        &[DType::F32, DType::BF16, DType::I64],
    );
    let hosts = Algo {
        name: "cpu_reduce",
        shape: uneven_hosts,
    };
    run_matrix_algo(hosts, Fabric::Memory, &COUNTS, &[DType::F32, DType::U8]);
    run_matrix_algo(hosts, Fabric::Shm, &COUNTS, &[DType::F32]);
    let t = Some(two_sockets.as_str());
    run_matrix_topo(one, Fabric::Memory, &COUNTS, &[DType::F32, DType::I32], t);
    run_matrix_topo(one, Fabric::Shm, &COUNTS, &[DType::F32], t);
    std::fs::remove_dir_all(&dir).ok();
}

/// Hybrid over uneven hosts (e.g. 3+1+2+1 for 7 ranks), with ring and tree between hosts.
#[test]
fn matrix_hybrid() {
    for name in ["hybrid", "hybrid:tree", "hybrid:butterfly", "hybrid:ps"] {
        let a = Algo {
            name,
            shape: uneven_hosts,
        };
        run_matrix_algo(a, Fabric::Memory, &COUNTS, &DType::ALL);
        run_matrix_algo(a, Fabric::MemoryFused, &COUNTS, &[DType::F32, DType::U8]);
        run_matrix_algo(a, Fabric::TcpMulti, &COUNTS, &[DType::F32]);
    }
    let a = Algo {
        name: "hybrid",
        shape: uneven_hosts,
    };
    // Shared memory inside each host, TCP between hosts.
    run_matrix_algo(a, Fabric::Shm, &COUNTS, &[DType::F32, DType::BF16]);
}

/// `auto` switches algorithm by size and shape; every choice must be right.
#[test]
fn matrix_auto() {
    let a = Algo {
        name: "auto",
        shape: uneven_hosts,
    };
    run_matrix_algo(
        a,
        Fabric::Memory,
        &[0, 1, 1001, 300_007],
        &[DType::F32, DType::I32],
    );
}

#[test]
fn results_are_bitwise_identical_on_every_rank() {
    // Non-integer floats: rounding depends on reduction order, so this catches any rank that
    // reduces in its own order. Every algorithm, on two uneven hosts.
    for algo in acspeed_core::plan::ALGORITHM_NAMES {
        let cfg = {
            let mut base = test_config(4096, 3, 60);
            base.policy.algo = acspeed_core::config::AlgoChoice::Named(algo.into());
            base
        };
        let outs = run_group_on_hosts(Fabric::Tcp, &[2, 3], cfg, |comm| {
            let r = comm.rank() as f32;
            let mut v: Vec<f32> = (0..30_011)
                .map(|i| ((i as f32 * 0.37 + r * 1.91).sin() * 1e3) / 7.0)
                .collect();
            comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
            let mut h: Vec<half::bf16> = (0..5003)
                .map(|i| half::bf16::from_f32((i as f32 * 0.11 + r).cos()))
                .collect();
            comm.allreduce(&mut h, ReduceOp::Avg).unwrap();
            (v, h)
        });
        for (q, o) in outs.iter().enumerate().skip(1) {
            let same_f32 =
                o.0.iter()
                    .zip(&outs[0].0)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            let same_bf16 =
                o.1.iter()
                    .zip(&outs[0].1)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same_f32 && same_bf16,
                "{algo}: rank {q} differs from rank 0"
            );
        }
    }
}

/// Large hybrid allreduces run in overlapping rounds (each round's inter-host phase beside
/// the next round's reduce-scatter and the last one's allgather): on uneven hosts over TCP,
/// every inter-host variant gives the exact sum, bitwise the same on every rank, and the plan
/// that ran is the four-round one.
#[test]
fn hybrid_rounds_overlap_phases_and_stay_exact() {
    let dir = std::env::temp_dir().join(format!("acspeed-rounds-{}", std::process::id()));
    let shape = [3u32, 1, 2];
    // 28 MiB of f32: 18 inter-host chunks per round, at least 384 KiB each: 4 rounds.
    let count = 7 << 20;
    let ctx = acspeed_core::PlanContext::from_shape(&shape).unwrap();
    for algo in ["hybrid", "hybrid:tree", "hybrid:butterfly", "hybrid:ps"] {
        let a = acspeed_algorithms::Algorithm::from_name(algo).unwrap();
        assert_eq!(
            a.rounds_for(acspeed_core::plan::Collective::AllReduce, count * 4, &ctx),
            4
        );
        assert_eq!(
            a.rounds_for(acspeed_core::plan::Collective::AllReduce, 1 << 20, &ctx),
            1
        );
        let cfg = {
            let mut base = test_config(256 << 10, 4, 60);
            base.policy.algo = acspeed_core::config::AlgoChoice::Named(algo.into());
            base.job.plan_dump_dir = Some(dir.to_str().unwrap().into());
            base
        };
        let outs = run_group_on_hosts(Fabric::Tcp, &shape, cfg, |comm| {
            let r = comm.rank();
            let mut v: Vec<f32> = (0..count).map(|i| ((i % 7) as u32 + r) as f32).collect();
            comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
            let wrong = v
                .iter()
                .enumerate()
                .filter(|(i, x)| **x != (6 * (i % 7) + 15) as f32)
                .count();
            let mut f: Vec<f32> = (0..count / 3)
                .map(|i| ((i as f32 * 0.37 + r as f32 * 1.91).sin() * 1e3) / 7.0)
                .collect();
            comm.allreduce(&mut f, ReduceOp::Sum).unwrap();
            (wrong, f)
        });
        for (q, o) in outs.iter().enumerate() {
            assert_eq!(o.0, 0, "{algo}: rank {q} has wrong elements");
            assert!(
                o.1.iter()
                    .zip(&outs[0].1)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{algo}: rank {q} differs from rank 0"
            );
        }
        let name = a.name();
        assert!(
            dir.join(format!("plan-allreduce-{name}-x4-n6-r3.json"))
                .exists(),
            "{algo}: no four-round plan dumped in {}",
            dir.display()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Soak: 10,000 collectives of random kinds, sizes, dtypes, ops and algorithms on 4 ranks
/// (2 hosts of 2: shared memory inside, TCP across), every result checked against its closed
/// form. Every rank draws the same sequence from the same seed, as a training job issues the
/// same calls everywhere; switching algorithms between calls exercises the plan cache.
#[test]
fn soak_10000_random_collectives_all_checked() {
    const CALLS: usize = 10_000;
    const ALGOS: [Option<&str>; 8] = [
        None,
        Some("ring"),
        Some("tree"),
        Some("hybrid"),
        Some("hybrid:tree"),
        Some("hybrid:butterfly"),
        Some("hybrid:ps"),
        Some("cpu_reduce"),
    ];
    const SOAK_COUNTS: [usize; 7] = [0, 1, 7, 64, 1001, 4096, 20_011];
    let seed: u64 = std::env::var("ACSPEED_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let res = run_group_on_hosts(Fabric::Shm, &[2, 2], test_config(4096, 2, 60), |comm| {
        let mut x = seed;
        let mut next = move || {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let n = comm.nranks();
        let kinds = cases(n);
        let mut counts = [0usize; ALGOS.len()];
        for i in 0..CALLS {
            let algo = ALGOS[(next() % ALGOS.len() as u64) as usize];
            let case = kinds[(next() % kinds.len() as u64) as usize];
            // Mostly small messages, some large: a training step's mix.
            let c = SOAK_COUNTS[(next() % SOAK_COUNTS.len() as u64) as usize];
            let d = DType::ALL[(next() % DType::ALL.len() as u64) as usize];
            comm.set_algorithm(algo.map(|a| acspeed_algorithms::Algorithm::from_name(a).unwrap()));
            let a = Algo {
                name: algo.unwrap_or("auto"),
                shape: |_| vec![2, 2],
            };
            if let Err(e) = run_case(&comm, a, Fabric::Shm, c, case, d) {
                return Err(format!("call {i}: {e}"));
            }
            counts[ALGOS.iter().position(|x| *x == algo).unwrap()] += 1;
        }
        Ok(counts)
    });
    for r in &res {
        let counts = r.as_ref().unwrap_or_else(|e| panic!("soak failed: {e}"));
        assert_eq!(counts.iter().sum::<usize>(), CALLS);
        assert!(
            counts.iter().all(|c| *c > CALLS / 10),
            "every algorithm ran: {counts:?}"
        );
    }
}
