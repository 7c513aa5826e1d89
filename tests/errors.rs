//! Bad input and failing peers: every case ends in an error that names what is wrong (the
//! variable, the rank, the op), never a hang or a panic.

use crate::util::{run_group, test_config, Fabric};
use acspeed::{DType, Error, ReduceOp};
use std::time::{Duration, Instant};

#[test]
fn counts_that_differ_across_ranks_are_a_mismatch_naming_the_peer() {
    for f in [
        Fabric::Memory,
        Fabric::Tcp,
        Fabric::TcpMulti,
        Fabric::Shm,
        #[cfg(feature = "rdma")]
        Fabric::Rdma,
    ] {
        let res = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
            let mut v = vec![1.0f32; if comm.rank() == 1 { 100 } else { 200 }];
            comm.allreduce(&mut v, ReduceOp::Sum)
                .err()
                .map(|e| e.to_string())
        });
        let msgs: Vec<String> = res.into_iter().flatten().collect();
        assert!(!msgs.is_empty(), "{f:?}: nobody noticed");
        assert!(
            msgs.iter().any(|m| m.contains("count 100")
                || m.contains("but 100")
                || m.contains("100 on rank 1")
                // RDMA carries a fingerprint of the call, not the count itself.
                || m.contains("does not match")),
            "{f:?}: {msgs:?}"
        );
    }
}

#[test]
fn different_collectives_or_dtypes_are_a_mismatch() {
    let res = run_group(Fabric::Tcp, 2, test_config(1 << 16, 4, 20), |comm| {
        let r = if comm.rank() == 0 {
            comm.allreduce(&mut [1.0f32; 8], ReduceOp::Sum)
        } else {
            comm.allreduce(&mut [1.0f64; 8], ReduceOp::Sum)
        };
        let e = r.unwrap_err();
        // Later calls say the communicator is poisoned instead of hanging.
        let again = comm.barrier().unwrap_err().to_string();
        (e.to_string(), again)
    });
    assert!(res.iter().any(|(e, _)| e.contains("dtype")), "{res:?}");
    assert!(
        res.iter().all(|(_, a)| a.contains("earlier error")),
        "{res:?}"
    );
}

#[test]
fn op_that_makes_no_sense_for_the_dtype_is_rejected_before_any_traffic() {
    let res = run_group(Fabric::Memory, 2, test_config(1 << 16, 4, 5), |comm| {
        let e = comm
            .allreduce(&mut [1.0f32; 4], ReduceOp::BXor)
            .unwrap_err();
        // The communicator is still usable: the mistake was caught locally.
        comm.allreduce(&mut [1i32; 4], ReduceOp::BXor).unwrap();
        e
    });
    for e in res {
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(
            e.to_string().contains("bxor") && e.to_string().contains("float"),
            "{e}"
        );
    }
}

#[test]
fn wrong_buffer_sizes_name_the_buffer() {
    run_group(Fabric::Memory, 2, test_config(1 << 16, 4, 5), |comm| {
        let e = comm
            .allgather(&[1.0f32; 3], &mut [0.0f32; 5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("allgather") && e.contains("output"), "{e}");
        let e = comm
            .allreduce_bytes(&mut [0u8; 7], DType::F32, ReduceOp::Sum)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 bytes") && e.contains("float"), "{e}");
        let e = comm.broadcast(&mut [0u8; 4], 9).unwrap_err().to_string();
        assert!(e.contains("root 9"), "{e}");
        // Zero elements are a valid (synchronising) no-op.
        comm.allreduce::<f32>(&mut [], ReduceOp::Sum).unwrap();
    });
}

#[test]
fn a_rank_that_leaves_mid_collective_is_named_by_the_others() {
    for f in [Fabric::Tcp, Fabric::Shm] {
        a_rank_leaves(f);
    }
}

fn a_rank_leaves(f: Fabric) {
    let t0 = Instant::now();
    let res = run_group(f, 3, test_config(1 << 12, 2, 30), |comm| {
        if comm.rank() == 2 {
            // Dies after joining: its sockets close while the others are in an allreduce.
            std::thread::sleep(Duration::from_millis(200));
            drop(comm);
            return None;
        }
        let mut v = vec![1.0f32; 1 << 20];
        Some(
            comm.allreduce(&mut v, ReduceOp::Sum)
                .unwrap_err()
                .to_string(),
        )
    });
    let msgs: Vec<String> = res.into_iter().flatten().collect();
    assert!(msgs.iter().any(|m| m.contains("rank 2")), "{msgs:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_silent_rank_times_out_with_its_name() {
    for f in [Fabric::Tcp, Fabric::Shm] {
        silent_rank(f);
    }
}

fn silent_rank(f: Fabric) {
    let t0 = Instant::now();
    let res = run_group(f, 2, test_config(1 << 16, 4, 1), |comm| {
        if comm.rank() == 1 {
            std::thread::sleep(Duration::from_millis(2500));
            return None;
        }
        Some(
            comm.allreduce(&mut [1.0f32; 16], ReduceOp::Sum)
                .unwrap_err(),
        )
    });
    let e = res[0].as_ref().unwrap();
    assert!(matches!(e, Error::Timeout { rank: 1, .. }), "{e}");
    assert!(
        e.to_string().contains("rank 1") && e.to_string().contains("allreduce"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn abort_reason_reaches_the_peers() {
    for f in [Fabric::Tcp, Fabric::TcpMulti, Fabric::Shm] {
        abort_reason(f);
    }
}

fn abort_reason(f: Fabric) {
    let res = run_group(f, 2, test_config(1 << 16, 4, 20), |comm| {
        if comm.rank() == 0 {
            std::thread::sleep(Duration::from_millis(100));
            comm.abort("out of memory in the training loop");
            return None;
        }
        Some(
            comm.allreduce(&mut [1.0f32; 16], ReduceOp::Sum)
                .unwrap_err()
                .to_string(),
        )
    });
    let m = res[1].as_ref().unwrap();
    assert!(m.contains("rank 0") && m.contains("out of memory"), "{m}");
}

#[test]
fn strangers_on_the_listening_port_do_not_disturb_the_job() {
    use std::io::Write;
    let store = acspeed::store::MemStore::new();
    std::thread::scope(|s| {
        let st = store.clone();
        // A "port scanner": connects to rank 0's listener as soon as it is published, sends
        // garbage, and another connection that says nothing.
        s.spawn(move || {
            use acspeed::store::Store;
            // Rank 0's rendezvous record (src/book.rs) holds its listening address.
            let rec = st.get("j/book/rec/0", Duration::from_secs(10)).unwrap();
            let rec: serde_json::Value = serde_json::from_slice(&rec).unwrap();
            let a: std::net::SocketAddr = rec["addr"].as_str().unwrap().parse().unwrap();
            let mut g = std::net::TcpStream::connect(a).unwrap();
            let _ = g.write_all(&[0xde; 64]);
            let _idle = std::net::TcpStream::connect(a).unwrap();
            // The control port too: garbage, a length of 2 GiB, a hello with a wrong secret
            // that claims rank 0, and silence.
            let c = st.get("j/ctl", Duration::from_secs(10)).unwrap();
            let c: std::net::SocketAddr = String::from_utf8(c).unwrap().parse().unwrap();
            let mut g = std::net::TcpStream::connect(c).unwrap();
            let _ = g.write_all(&[0xde; 64]);
            let mut big = std::net::TcpStream::connect(c).unwrap();
            let _ = big.write_all(&[0, 0, 0, 0x80, 1]);
            let mut fake = std::net::TcpStream::connect(c).unwrap();
            let mut hello = vec![21, 0, 0, 0, 1];
            hello.extend([0u8; 16]);
            hello.extend(0u32.to_le_bytes());
            let _ = fake.write_all(&hello);
            let _idle_ctl = std::net::TcpStream::connect(c).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let st = store.clone();
                s.spawn(move || {
                    // TCP only: the stranger targets the TCP listener.
                    let cfg = {
                        let mut base = test_config(1 << 16, 4, 20);
                        base.transport.shm = false;
                        base.job.stall_warn = Duration::from_millis(300);
                        base
                    };
                    let c = acspeed::init_with_store(
                        &*st,
                        "j",
                        r,
                        2,
                        "127.0.0.1".parse().unwrap(),
                        cfg,
                    )
                    .unwrap();
                    // Rank 1 comes late: the coordinator must still report to rank 0.
                    if r == 1 {
                        std::thread::sleep(Duration::from_millis(1000));
                    }
                    let mut v = [r as f32 + 1.0; 8];
                    c.allreduce(&mut v, ReduceOp::Sum).unwrap();
                    (v[0], c.stall_reports())
                })
            })
            .collect();
        for (r, h) in hs.into_iter().enumerate() {
            let (sum, reports) = h.join().unwrap();
            assert_eq!(sum, 3.0);
            if r == 0 {
                assert!(
                    reports.iter().any(|t| t.contains("missing rank(s) 1")),
                    "{reports:?}"
                );
            }
        }
    });
}

#[test]
fn world_size_disagreement_and_duplicate_ranks_are_named() {
    let store = acspeed::store::MemStore::new();
    let cfg = test_config(1 << 16, 4, 2);
    std::thread::scope(|s| {
        let (a, b) = (store.clone(), store.clone());
        let c0 = cfg.clone();
        let h0 = s.spawn(move || {
            acspeed::init_with_store(&*a, "w", 0, 2, "127.0.0.1".parse().unwrap(), c0)
                .err()
                .map(|e| e.to_string())
        });
        let h1 = s.spawn(move || {
            acspeed::init_with_store(&*b, "w", 1, 3, "127.0.0.1".parse().unwrap(), cfg)
                .err()
                .map(|e| e.to_string())
        });
        let e1 = h1.join().unwrap().unwrap();
        assert!(
            e1.contains("WORLD_SIZE mismatch") && e1.contains("3") && e1.contains("2"),
            "{e1}"
        );
        let e0 = h0.join().unwrap().unwrap();
        assert!(e0.contains("rank 1"), "{e0}");
    });
    let e = acspeed::init_with_store(
        &*store,
        "w",
        0,
        2,
        "127.0.0.1".parse().unwrap(),
        test_config(1 << 16, 4, 1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("claimed by 2"), "{e}");
}

/// Ranks whose algorithm settings differ fail at init with an error naming the other rank,
/// instead of exchanging data under different plans.
#[test]
fn algorithm_settings_that_differ_across_ranks_fail_init_naming_the_rank() {
    let errs = crate::util::init_errors_of_two("alg", |r| {
        let mut base = test_config(1 << 16, 4, 10);
        base.policy.algo = if r == 1 {
            acspeed_core::config::AlgoChoice::Named("tree".into())
        } else {
            acspeed_core::config::AlgoChoice::Auto
        };
        base
    });
    assert!(
        errs[0].contains("rank 1") && errs[0].contains("ACSPEED_ALGO=tree"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("rank 0") && errs[1].contains("ACSPEED_ALGO=auto"),
        "{}",
        errs[1]
    );
}

/// Per-size strings pick the algorithm by size; bad strings and algorithms that cannot serve
/// the collective are refused with the variable's name; `explain` says which layer decided.
#[test]
fn per_size_algorithm_strings_and_explain() {
    let vars = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let cfg = acspeed::Config::from_vars(&vars(&[
        ("ACSPEED_ALLREDUCE", "tree:0-64K;ring:64K-max"),
        ("ACSPEED_ALGO", "hybrid"),
    ]))
    .unwrap();
    let out = run_group(Fabric::Memory, 4, cfg, |comm| {
        let ar = acspeed_core::Collective::AllReduce;
        let bc = acspeed_core::Collective::Broadcast {
            root: acspeed_core::Rank(0),
        };
        let mut small = vec![1.0f32; 1000];
        comm.allreduce(&mut small, ReduceOp::Sum).unwrap();
        assert!(small.iter().all(|x| *x == 4.0));
        (
            comm.algorithm_for(ar, 4096).name(),
            comm.algorithm_for(ar, 1 << 20).name(),
            comm.algorithm_for(bc, 4096).name(),
            comm.explain(ar, 4096),
            comm.explain(bc, 4096),
        )
    });
    let (a, b, c, e1, e2) = &out[0];
    assert_eq!((*a, *b, *c), ("tree", "ring", "ring"));
    assert!(
        e1.contains("tree") && e1.contains("ACSPEED_ALLREDUCE range 0-64K"),
        "{e1}"
    );
    assert!(
        e2.contains("ACSPEED_ALGO=hybrid does not serve broadcast"),
        "{e2}"
    );
    let bad = acspeed::Config::from_vars(&vars(&[("ACSPEED_BROADCAST", "hybrid:0-max")])).unwrap();
    let t = acspeed_testkit::MemoryTransport::fabric(1).pop().unwrap();
    let e = acspeed::Communicator::from_transport(std::sync::Arc::new(t), bad, vec!["h".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ACSPEED_BROADCAST") && e.contains("cannot run broadcast"),
        "{e}"
    );
    let e = acspeed::Config::from_vars(&vars(&[("ACSPEED_ALLREDUCE", "tree:1M-4K")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ACSPEED_ALLREDUCE") && e.contains("empty range"),
        "{e}"
    );
}

/// Ranks that disagree about the root of a broadcast or reduce, or about the algorithm, get
/// an error (never a hang or a wrong result). A rank whose part ended before the disagreement
/// reached it gets the error on its next call (the failing rank's abort notice).
#[test]
fn different_roots_or_algorithms_are_a_mismatch_on_every_rank() {
    for f in [Fabric::Memory, Fabric::Tcp, Fabric::Shm] {
        let res = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
            let root = if comm.rank() == 2 { 1 } else { 0 };
            let mut v = vec![comm.rank() as f32; 1000];
            let first = comm.broadcast(&mut v, root);
            // What the rank holds is either an error or the data of the root it asked for.
            if first.is_ok() {
                assert!(v.iter().all(|x| *x == root as f32));
            }
            first
                .and_then(|_| comm.barrier())
                .map_err(|e| e.to_string())
        });
        assert!(res.iter().all(|r| r.is_err()), "{f:?}: {res:?}");
        assert!(
            res.iter().all(|r| r.as_ref().unwrap_err().contains("root")),
            "{f:?}: {res:?}"
        );
        let res = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
            comm.set_algorithm(Some(if comm.rank() == 1 {
                acspeed_algorithms::Algorithm::Tree
            } else {
                acspeed_algorithms::Algorithm::Ring
            }));
            let mut v = vec![1.0f32; 1000];
            comm.allreduce(&mut v, ReduceOp::Sum)
                .and_then(|_| comm.barrier())
                .map_err(|e| e.to_string())
        });
        assert!(res.iter().all(|r| r.is_err()), "{f:?}: {res:?}");
        assert!(
            res.iter()
                .any(|r| r.as_ref().unwrap_err().contains("algorithm")),
            "{f:?}: {res:?}"
        );
    }
}

/// Two communicators per rank (two process groups), each driven by its own thread at the same
/// time, over shared memory and TCP: neither sees the other's traffic.
#[test]
fn several_communicators_used_concurrently_from_several_threads() {
    let store = acspeed::store::MemStore::new();
    let n = 3u32;
    std::thread::scope(|s| {
        for r in 0..n {
            let store = store.clone();
            s.spawn(move || {
                let make = |prefix: &str, shm: bool| {
                    let cfg = {
                        let mut base = test_config(1 << 14, 2, 30);
                        base.transport.shm = shm;
                        base
                    };
                    acspeed::init_with_store(
                        &*store,
                        prefix,
                        r,
                        n,
                        "127.0.0.1".parse().unwrap(),
                        cfg,
                    )
                    .unwrap()
                };
                let a = make("group-a", true);
                let b = make("group-b", false);
                std::thread::scope(|t| {
                    for (c, scale) in [(&a, 1.0f32), (&b, 100.0f32)] {
                        t.spawn(move || {
                            for i in 0..200usize {
                                let len = 1 + (i * 37) % 5000;
                                let mut v = vec![scale * (r + 1) as f32; len];
                                c.allreduce(&mut v, ReduceOp::Sum).unwrap();
                                let want = scale * (n * (n + 1) / 2) as f32;
                                assert!(v.iter().all(|x| *x == want), "call {i}");
                                let mut w = vec![r as f32; 8];
                                c.broadcast(&mut w, (i % n as usize) as u32).unwrap();
                                assert!(w.iter().all(|x| *x == (i % n as usize) as f32));
                            }
                        });
                    }
                });
            });
        }
    });
}

/// Ranks whose `ACSPEED_TOPO_FILE`s give different NVLinks would pack different n-trees:
/// init fails on both, naming the other rank, instead of running mismatched plans.
#[test]
fn topology_files_that_differ_across_ranks_fail_init_naming_the_rank() {
    let dir = std::env::temp_dir().join(format!("acspeed-topo-agree-{}", std::process::id()));
    let fixture = fixture!("fake-nvlink-4gpu.txt");
    let a = crate::util::topo_json(&dir, "a.json", fixture, |_| {});
    let b = crate::util::topo_json(&dir, "b.json", fixture, |d| {
        d.paths[0][1] = acspeed_core::topology::PathClass::NV(1);
        d.paths[1][0] = acspeed_core::topology::PathClass::NV(1);
    });
    let errs = crate::util::init_errors_of_two("topo", |r| {
        let mut base = test_config(1 << 16, 4, 10);
        base.model.topo_file = Some(if r == 0 { a.clone() } else { b.clone() });
        base
    });
    std::fs::remove_dir_all(&dir).ok();
    for (r, e) in errs.iter().enumerate() {
        assert!(
            e.contains(&format!("rank {}", 1 - r)) && e.contains("NVLinks(ACSPEED_TOPO_FILE)"),
            "{e}"
        );
    }
}

/// CPU-Reduce: ranks whose counts differ meet in the staging area with different call tags
/// and fail with a mismatch naming the other rank, never a wrong result.
#[test]
fn cpu_reduce_mismatches_are_named() {
    for f in [Fabric::Memory, Fabric::Shm] {
        let cfg = {
            let mut base = test_config(1 << 16, 4, 20);
            base.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
            base
        };
        let res = run_group(f, 3, cfg, |comm| {
            let mut v = vec![1.0f32; if comm.rank() == 1 { 100_000 } else { 200_000 }];
            comm.allreduce(&mut v, ReduceOp::Sum)
                .err()
                .map(|e| e.to_string())
        });
        let msgs: Vec<String> = res.into_iter().flatten().collect();
        assert_eq!(msgs.len(), 3, "{f:?}: every rank must fail: {msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("rank 1") && m.contains("cpu_reduce")),
            "{f:?}: {msgs:?}"
        );
    }
}

/// CPU-Reduce: a rank SIGKILLed while the others wait for it in the staging area is named by
/// every survivor within about two seconds, long before the timeout.
#[test]
fn cpu_reduce_names_a_killed_rank_quickly() {
    let port = crate::util::free_port();
    let spawn = |r: u32| {
        crate::util::spawn_bench_rank(
            r,
            3,
            &port,
            &["-b", "64M", "-e", "64M", "--iters", "2000", "-w", "0"],
            &[
                ("ACSPEED_TIMEOUT_SECS", "60"),
                ("ACSPEED_ALGO", "cpu_reduce"),
            ],
        )
    };
    let (r0, mut r1, r2) = (spawn(0), spawn(1), spawn(2));
    std::thread::sleep(Duration::from_millis(2500));
    let t = Instant::now();
    r1.kill().unwrap();
    let _ = r1.wait();
    for r in [r0, r2] {
        let out = r.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("rank 1"), "{err}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "survivors took {:?} to name the dead rank",
        t.elapsed()
    );
}

/// A forced `cpu_reduce` without shared memory (`ACSPEED_SHM=0`, here TCP between ranks of one
/// host) runs the ring on every rank and says why, instead of failing.
#[test]
fn cpu_reduce_without_shared_memory_falls_back_and_says_so() {
    let cfg = {
        let mut base = test_config(1 << 16, 4, 20);
        base.policy.algo = acspeed_core::config::AlgoChoice::Named("cpu_reduce".into());
        base
    };
    let res = run_group(Fabric::Tcp, 3, cfg, |comm| {
        let mut v = vec![comm.rank() as f32; 10_000];
        comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
        let why = comm.explain(acspeed_core::plan::Collective::AllReduce, 40_000);
        (v.iter().all(|x| *x == 3.0), why)
    });
    for (ok, why) in res {
        assert!(ok);
        assert!(
            why.contains("cpu_reduce needs shared memory") && why.contains(": ring"),
            "{why}"
        );
    }
}

/// A plan that needs more channels than the communicator connected (here: n-trees sharing
/// links, on communicators wrapped without their extra channels) is refused with an error that
/// says so, on every rank, before any byte moves — not a hang.
#[test]
fn a_plan_needing_missing_channels_is_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("acspeed-channels-{}", std::process::id()));
    let topo = crate::util::topo_json(&dir, "fake4.json", fixture!("fake-nvlink-4gpu.txt"), |_| {});
    let cfg = {
        let mut base = test_config(1 << 16, 4, 10);
        base.policy.algo = acspeed_core::config::AlgoChoice::Named("ntree".into());
        base.model.topo_file = Some(topo);
        base
    };
    let ts = acspeed_testkit::MemoryTransport::fabric(4);
    let hosts = vec!["h".to_string(); 4];
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ts
            .into_iter()
            .map(|t| {
                let (cfg, hosts) = (cfg.clone(), hosts.clone());
                s.spawn(move || {
                    let comm =
                        acspeed::Communicator::from_transport(std::sync::Arc::new(t), cfg, hosts)
                            .unwrap();
                    let mut v = vec![1.0f32; 1000];
                    comm.allreduce(&mut v, ReduceOp::Sum)
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::fs::remove_dir_all(&dir).ok();
    for e in errs {
        assert!(
            e.contains("uses 2 channels but the communicator has 1"),
            "{e}"
        );
    }
}

/// verbs and EFA offer 4 bytes of remote CQ data: with the fingerprint folded into 31 bits,
/// results are right and a call that differs is still caught (tcp;ofi_rxm told to use 4).
#[cfg(feature = "rdma")]
#[test]
fn rdma_with_4_bytes_of_cq_data_still_catches_mismatches() {
    let cfg = {
        let mut base = test_config(1 << 16, 4, 20);
        base.transport.rdma_cq_data = Some(4);
        base
    };
    let res = run_group(Fabric::Rdma, 3, cfg, |comm| {
        let peer = (comm.rank() + 1) % 3;
        assert!(comm.transport_name(peer).ends_with("(cq data 4 B)"));
        let mut v = vec![comm.rank() as f32 + 1.0; 50_000];
        comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
        assert!(v.iter().all(|x| *x == 6.0));
        let mut w = vec![1.0f32; if comm.rank() == 1 { 100 } else { 200 }];
        comm.allreduce(&mut w, ReduceOp::Sum)
            .err()
            .map(|e| e.to_string())
    });
    let msgs: Vec<String> = res.into_iter().flatten().collect();
    assert!(
        msgs.iter().any(|m| m.contains("does not match")),
        "{msgs:?}"
    );
}

/// A rendezvous record that is not what acspeed writes (another program on the store, a
/// corrupted key) fails init on every rank naming the rank whose record it is, at once.
#[test]
fn a_garbage_rendezvous_record_is_named_by_every_rank() {
    use acspeed::store::{MemStore, Store};
    /// Replaces what rank 1 publishes as its record with bytes that are not a record.
    struct Garbling(std::sync::Arc<MemStore>);
    impl Store for Garbling {
        fn set(&self, key: &str, value: &[u8]) -> acspeed::Result<()> {
            let garbage: &[u8] = b"\xde\xad not a record";
            self.0.set(
                key,
                if key.ends_with("/book/rec/1") {
                    garbage
                } else {
                    value
                },
            )
        }
        fn get(&self, key: &str, timeout: Duration) -> acspeed::Result<Vec<u8>> {
            self.0.get(key, timeout)
        }
        fn add(&self, key: &str, delta: i64) -> acspeed::Result<i64> {
            self.0.add(key, delta)
        }
    }
    let store = Garbling(MemStore::new());
    let t0 = Instant::now();
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let store = &store;
                s.spawn(move || {
                    let cfg = test_config(1 << 16, 4, 20);
                    acspeed::init_with_store(store, "g", r, 2, "127.0.0.1".parse().unwrap(), cfg)
                        .err()
                        .map(|e| e.to_string())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    for e in errs {
        assert!(
            e.contains("rank 1") && e.contains("malformed rendezvous record"),
            "{e}"
        );
    }
}
