//! `ACSPEED_AUTOTUNE`: trials on real calls, agreement across ranks, the cache file.

use crate::util::{run_group, test_config, Fabric};
use acspeed::{Config, ReduceOp};
use acspeed_core::plan::Collective;

const COUNT: usize = 64 << 10;

/// `calls` allreduces of COUNT floats on 4 ranks, each result checked; returns every rank's
/// explanation before the first call and after each call.
fn job(cfg: &Config, calls: usize) -> Vec<Vec<String>> {
    run_group(Fabric::Memory, 4, cfg.clone(), |comm| {
        let r = comm.rank() as f32;
        let mut seen = vec![comm.explain(Collective::AllReduce, COUNT * 4)];
        for call in 0..calls {
            let mut v: Vec<f32> = (0..COUNT)
                .map(|i| r + (i % 5) as f32 + call as f32)
                .collect();
            comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
            for (i, x) in v.iter().enumerate() {
                let want = 6.0 + 4.0 * ((i % 5) as f32 + call as f32);
                assert_eq!(*x, want, "rank {r} call {call} element {i}");
            }
            seen.push(comm.explain(Collective::AllReduce, COUNT * 4));
        }
        seen
    })
}

#[test]
fn ranks_measure_agree_and_reuse_the_cached_choice() {
    let dir = std::env::temp_dir().join(format!("acspeed-autotune-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("cache.json");
    let cfg = {
        let mut base = test_config(1 << 16, 4, 30);
        base.policy.autotune = true;
        base.policy.autotune_file = Some(file.to_str().unwrap().into());
        base
    };
    // 4 ranks on one host: ring, tree and cpu_reduce, 3 trials each, then decided.
    let seen = job(&cfg, 10);
    for (r, s) in seen.iter().enumerate() {
        assert!(
            s[0].contains("measuring allreduce/256K (call 1 of 9"),
            "rank {r}: {}",
            s[0]
        );
        assert!(s[9].contains("measured ring"), "rank {r}: {}", s[9]);
        assert_eq!(s[9..], seen[0][9..], "rank {r} decided differently");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("allreduce/256K"), "{text}");
    let winner = seen[0][10]
        .split("allreduce of")
        .next()
        .unwrap()
        .to_string();

    // A second job of the same shape: confirmed at its first call, no trials.
    let again = job(&cfg, 2);
    for s in &again {
        assert!(s[0].contains("cached in"), "{}", s[0]);
        assert!(s[1].contains("confirmed from the cache"), "{}", s[1]);
        assert_eq!(s[1], s[2]);
    }
    // Same algorithm as the first job decided.
    let algo = |s: &str| {
        s.split(": ")
            .nth(1)
            .map(|x| x.split(' ').next().unwrap().to_string())
    };
    assert_eq!(algo(&again[0][1]), algo(&seen[0][10]), "{winner}");

    // Off: auto's rule, no file touched.
    let off = job(
        &Config {
            policy: acspeed_core::config::PolicySettings {
                autotune: false,
                ..cfg.policy.clone()
            },
            ..cfg.clone()
        },
        1,
    );
    assert!(off[0][0].contains("auto:"), "{}", off[0][0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hosts where one rank is alone (no staging area of its own): every rank must try the same
/// candidates, CPU-Reduce included, or the ranks issue different calls. 2 + 1 ranks, every
/// result checked, the same decision everywhere.
#[test]
fn autotune_agrees_when_a_rank_is_alone_on_its_host() {
    let dir = std::env::temp_dir().join(format!("acspeed-autotune-alone-{}", std::process::id()));
    let cfg = {
        let mut base = test_config(1 << 16, 4, 20);
        base.policy.autotune = true;
        base.policy.autotune_file = Some(dir.join("cache.json").to_str().unwrap().into());
        base
    };
    let seen = crate::util::run_group_on_hosts(Fabric::Memory, &[2, 1], cfg, |comm| {
        let r = comm.rank() as f32;
        for call in 0..30 {
            let mut v: Vec<f32> = (0..COUNT).map(|i| r + (i % 5) as f32).collect();
            comm.allreduce(&mut v, ReduceOp::Sum)
                .unwrap_or_else(|e| panic!("rank {r} call {call}: {e}"));
            assert!(v
                .iter()
                .enumerate()
                .all(|(i, x)| *x == 3.0 + 3.0 * (i % 5) as f32));
        }
        comm.explain(Collective::AllReduce, COUNT * 4)
    });
    for s in &seen {
        assert!(s.contains("measured "), "{s}");
        assert_eq!(s, &seen[0], "every rank decided alike");
    }
    assert!(
        seen[0].contains("cpu_reduce"),
        "CPU-Reduce was a candidate: {}",
        seen[0]
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// With a GPU topology file, `auto` runs the selector's prediction: on the V100 cube-mesh at
/// 128 MiB that is `ring`, NCCL's six rings over every NVLink (the grounded model puts
/// n-trees 20% behind them: docs/GPU_MODEL.md), the same choice and reasons on every rank;
/// calls run the six-channel plan correctly. Without a file, the fixed rule.
#[test]
fn auto_follows_the_selector_on_a_gpu_topology() {
    let dir = std::env::temp_dir().join(format!("acspeed-selector-{}", std::process::id()));
    let v100 = crate::util::topo_json(
        &dir,
        "v100.json",
        fixture!("nvsmi/02-v100-8gpu-vm-phb-likejazz.txt"),
        |_| {},
    );
    let cfg = {
        let mut base = test_config(1 << 16, 4, 30);
        base.model.topo_file = Some(v100);
        base
    };
    let seen = run_group(Fabric::Memory, 8, cfg, |comm| {
        let big = comm.explain(Collective::AllReduce, 128 << 20);
        let mut v: Vec<f32> = (0..COUNT)
            .map(|i| (i % 3) as f32 + comm.rank() as f32)
            .collect();
        comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, 8.0 * (i % 3) as f32 + 28.0, "element {i}");
        }
        (big, comm.explain(Collective::AllReduce, COUNT * 4))
    });
    for s in &seen {
        assert_eq!(s, &seen[0], "every rank chooses alike");
    }
    assert!(
        seen[0].0.contains("): ring (selector: predicted ring"),
        "{}",
        seen[0].0
    );
    assert!(
        seen[0].0.contains("v100.json x 1 host(s) [8]"),
        "{}",
        seen[0].0
    );
    assert!(seen[0].1.contains("(selector: predicted "), "{}", seen[0].1);
    let plain = run_group(Fabric::Memory, 2, test_config(1 << 16, 4, 30), |comm| {
        comm.explain(Collective::AllReduce, 128 << 20)
    });
    assert!(plain[0].contains("(auto: ring"), "{}", plain[0]);
    let none = run_group(Fabric::Memory, 2, test_config(1 << 16, 4, 30), |c| {
        c.selector_table()
    });
    assert_eq!(none, vec![0, 0], "no model, no table");
    std::fs::remove_dir_all(&dir).ok();
}

/// Topology files that differ only in what the selector models (PCIe paths, not NVLinks or
/// sockets) would give ranks different tables: init fails on both, naming the other rank.
#[test]
fn topology_files_with_different_pcie_paths_fail_init() {
    let dir = std::env::temp_dir().join(format!("acspeed-topo-fp-{}", std::process::id()));
    let fixture = fixture!("nvsmi/02-v100-8gpu-vm-phb-likejazz.txt");
    let a = crate::util::topo_json(&dir, "a.json", fixture, |_| {});
    let b = crate::util::topo_json(&dir, "b.json", fixture, |d| {
        let n = d.paths.len();
        // The last device pair (a NIC's path, or two GPUs): one class further.
        let p = &mut d.paths[n - 1][n - 2];
        *p = if *p == acspeed_core::topology::PathClass::SYS {
            acspeed_core::topology::PathClass::NODE
        } else {
            acspeed_core::topology::PathClass::SYS
        };
        d.paths[n - 2][n - 1] = d.paths[n - 1][n - 2];
    });
    let errs = crate::util::init_errors_of_two("topofp", |r| {
        let mut base = test_config(1 << 16, 4, 10);
        base.model.topo_file = Some(if r == 0 { a.clone() } else { b.clone() });
        base
    });
    std::fs::remove_dir_all(&dir).ok();
    for (r, e) in errs.iter().enumerate() {
        assert!(e.contains(&format!("rank {}", 1 - r)), "{e}");
        let fps: Vec<&str> = e
            .split("fingerprint=")
            .skip(1)
            .map(|x| x.split(|c: char| !c.is_ascii_hexdigit()).next().unwrap())
            .collect();
        assert!(fps.len() == 2 && fps[0] != fps[1], "{e}");
    }
}

/// A CPU host model file (`ACSPEED_HOST_MODEL`) in `dir`, as `acspeed simulate --here --json`
/// writes it, with `stage_gbps` for CPU-Reduce below its streaming size.
fn cpu_model(dir: &std::path::Path, name: &str, stage_gbps: f64) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let m = acspeed_core::sim::HostModel::cpu(2.0, 10.0, 11.0, 6.0)
        .with_shm(9.0, 5.0, 16 << 20)
        .with_stage(stage_gbps, 5.5, 4 << 20);
    let p = dir.join(name);
    std::fs::write(&p, serde_json::json!({ "host": m, "rows": [] }).to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

/// With a CPU host model and the network's rates, `auto` runs the selector's prediction on
/// CPU hosts too: hybrid for a large allreduce across 2 x 2 hosts behind a per-flow cap, the
/// same choice and reasons on every rank, results right.
#[test]
fn auto_follows_the_selector_with_a_cpu_host_model() {
    let dir = std::env::temp_dir().join(format!("acspeed-hostmodel-{}", std::process::id()));
    let cfg = {
        let mut base = test_config(1 << 16, 4, 30);
        base.model.host_model = Some(cpu_model(&dir, "here.json", 1.9));
        base.model.net_gbps = Some(2.0);
        base.model.flow_gbps = Some(0.5);
        base
    };
    let seen = crate::util::run_group_on_hosts(Fabric::Memory, &[2, 2], cfg, |comm| {
        let big = comm.explain(Collective::AllReduce, 64 << 20);
        let mut v: Vec<f32> = (0..COUNT).map(|i| (i % 3) as f32).collect();
        comm.allreduce(&mut v, ReduceOp::Sum).unwrap();
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, x)| *x == 4.0 * (i % 3) as f32));
        let small = comm.explain(Collective::AllReduce, 4 << 10);
        // The table was filled at init in the background: whole once the fill ends, and the
        // classes the calls above predicted on the spot read the same from it.
        let filled = comm.selector_table();
        assert_eq!(comm.explain(Collective::AllReduce, 64 << 20), big);
        assert_eq!(comm.explain(Collective::AllReduce, 4 << 10), small);
        (big, small, filled)
    });
    for s in &seen {
        assert_eq!(s, &seen[0], "every rank chooses alike");
    }
    let (big, small, filled) = &seen[0];
    // Classes 1 B ..= 1 GiB, those from 16 B in quarters (4 + 27 x 4 = 112 entries), of each
    // collective with two candidates or more.
    assert!(*filled >= 112 && filled % 112 == 0, "{filled}");
    assert!(
        big.contains("): hybrid (selector: predicted hybrid"),
        "{big}"
    );
    assert!(
        big.contains(
            "here.json x 2 hosts [2, 2], network 2 Gbit/s (ACSPEED_NET_GBPS), 0.5 Gbit/s per flow"
        ),
        "{big}"
    );
    assert!(small.contains("(selector: predicted "), "{small}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The init-time fill stops at its budget or when told to: the entries it did not reach are
/// left to their first call. Unbounded, it covers every quarter of every class to 1 GiB.
#[test]
fn table_fill_ends_at_its_budget_or_stop() {
    use acspeed::selector::Selector;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    let dir = std::env::temp_dir().join(format!("acspeed-fill-{}", std::process::id()));
    let cfg = {
        let mut base = test_config(1 << 16, 4, 30);
        base.model.host_model = Some(cpu_model(&dir, "here.json", 1.9));
        base
    };
    let model = acspeed::model::discover(&cfg)
        .unwrap()
        .agree_shape(&cfg, &[2, 2])
        .unwrap();
    let ctx = model.context;
    let sel = Selector::new(model.cluster.as_ref().unwrap(), cfg.exec.segment_bytes);
    let cands = acspeed_algorithms::select::candidates(Collective::AllReduce, &ctx);
    let work = vec![(Collective::AllReduce, cands)];
    let go = AtomicBool::new(false);
    let (n, _, whole) = sel.fill(&work, &go, Duration::ZERO).unwrap();
    assert_eq!(
        (n, whole, sel.filled()),
        (0, false, 0),
        "a zero budget fills nothing"
    );
    let (n, _, whole) = sel
        .fill(&work, &AtomicBool::new(true), Duration::MAX)
        .unwrap();
    assert_eq!((n, whole), (0, false), "a stopped fill fills nothing");
    let (n, _, whole) = sel.fill(&work, &go, Duration::MAX).unwrap();
    assert_eq!((n, whole, sel.filled()), (112, true, 112));
    std::fs::remove_dir_all(&dir).ok();
}

/// A host model that cannot be used is an error naming the variable and the file; one that
/// differs between ranks fails init on both, naming the other rank.
#[test]
fn host_models_that_are_bad_or_differ_fail_clearly() {
    let dir = std::env::temp_dir().join(format!("acspeed-hostmodel-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, why) in [
        ("missing.json", None, "cannot read it"),
        ("junk.json", Some("not json"), "not JSON"),
        (
            "wrong.json",
            Some(r#"{"host": {"cores": 2}}"#),
            "not a host model",
        ),
        // A GPU host model (what a topology file gives): refused. Serialized, its infinite
        // rates come back as null, so it is refused as not a host model before its kind is seen.
        ("gpu.json", None, "not a host model"),
        (
            "zero.json",
            Some(r#"{"kind":"Cpu","cores":0,"copy_gbps":1,"reduce_gbps":1,"latency_us":1}"#),
            "must be positive",
        ),
    ] {
        let p = dir.join(name);
        if let Some(t) = text {
            std::fs::write(&p, t).unwrap();
        }
        if name == "gpu.json" {
            let d = acspeed_core::topology::nvsmi::parse(include_str!(
                "fixtures/nvsmi/02-v100-8gpu-vm-phb-likejazz.txt"
            ))
            .unwrap();
            let m = acspeed_core::sim::HostModel::gpu(&d).unwrap();
            std::fs::write(&p, serde_json::to_string(&m).unwrap()).unwrap();
        }
        let cfg = Config {
            model: acspeed_core::config::ModelSettings {
                host_model: Some(p.to_str().unwrap().into()),
                ..Default::default()
            },
            ..Config::default()
        };
        let e = match acspeed::model::discover(&cfg) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{name}: accepted"),
        };
        assert!(
            e.contains("ACSPEED_HOST_MODEL") && e.contains(name) && e.contains(why),
            "{name}: {e}"
        );
    }
    let a = cpu_model(&dir, "a.json", 1.9);
    let b = cpu_model(&dir, "b.json", 2.5);
    let errs = crate::util::init_errors_of_two("hostfp", |r| {
        let mut base = test_config(1 << 16, 4, 10);
        base.model.host_model = Some(if r == 0 { a.clone() } else { b.clone() });
        base
    });
    std::fs::remove_dir_all(&dir).ok();
    for (r, e) in errs.iter().enumerate() {
        assert!(
            e.contains(&format!("rank {}", 1 - r)) && e.contains("host-model="),
            "{e}"
        );
    }
}
