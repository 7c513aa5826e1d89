//! `acspeed simulate` and `acspeed-bench --algo/--hosts` as a user runs them.

use std::process::Command;

/// `acspeed explain` with `args` and extra environment.
fn explain(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed"));
    c.arg("explain").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    crate::util::outcome(&mut c)
}

fn simulate(args: &[&str]) -> (bool, String, String) {
    crate::util::outcome(
        Command::new(env!("CARGO_BIN_EXE_acspeed"))
            .arg("simulate")
            .args(args),
    )
}

#[test]
fn simulate_json_rows_mark_one_pick_per_size() {
    let (ok, out, err) = simulate(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/06-a100-8gpu-nv12-17nic.txt"),
        "--hosts",
        "2",
        "--net-gbps",
        "32",
        "--sizes",
        "4K,4M,128M",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // Ring, tree, four hybrids, n-trees (NVLinks) and CPU-Reduce (several GPUs per host).
    assert_eq!(rows.len(), 3 * 8, "{out}");
    for r in rows {
        for k in ["algo", "bytes", "time_us", "busbw_gbps", "selected"] {
            assert!(r.get(k).is_some(), "row without {k}: {r}");
        }
        assert!(r["time_us"].as_f64().unwrap() > 0.0);
    }
    for size in [4096u64, 4 << 20, 128 << 20] {
        let picked: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["bytes"].as_u64() == Some(size) && r["selected"] == true)
            .collect();
        assert_eq!(picked.len(), 1, "size {size}: {out}");
        // The pick is the fastest prediction at that size.
        let best = rows
            .iter()
            .filter(|r| r["bytes"].as_u64() == Some(size))
            .map(|r| r["time_us"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(picked[0]["time_us"].as_f64().unwrap(), best);
    }
    let names: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["algo"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cpu_reduce",
            "hybrid:butterfly",
            "hybrid:ps",
            "hybrid:ring",
            "hybrid:tree",
            "ntree",
            "ring",
            "tree"
        ]
        .into_iter()
        .collect()
    );
}

/// `--here` measures shared memory with two real ranks forked from the tool itself (no other
/// binary runs): every rate of the host model it prints is a positive measurement.
#[test]
fn simulate_here_measures_with_forked_ranks() {
    let (ok, out, err) = simulate(&["--here", "--json", "--sizes", "4K"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "latency_us",
        "shm_gbps",
        "shm_cma_gbps",
        "stage_gbps",
        "stage_stream_gbps",
    ] {
        let x = v["host"][k].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{k} = {x}: {out}");
    }
}

/// Forked ranks that outlive their time limit are killed and named; nothing is left behind.
#[test]
fn forked_ranks_past_their_limit_are_killed_and_named() {
    let p = acspeed_tools::bench::BenchParams {
        min_bytes: 64 << 20,
        max_bytes: 64 << 20,
        factor: 2,
        dtype: acspeed::DType::F32,
        op: acspeed::ReduceOp::Sum,
        warmup: 50,
        iters: 50,
        check: false,
        corrupt_rank: None,
        per_call: false,
    };
    let t0 = std::time::Instant::now();
    let e = acspeed_tools::local_ranks::sweep_on_forked_ranks(
        2,
        &acspeed::Config::default(),
        &p,
        std::time::Duration::from_millis(300),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("local ranks 0, 1 did not finish within"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn simulate_bad_input_is_named() {
    let (ok, _, err) = simulate(&["--sizes", "4K"]);
    assert!(!ok && err.contains("--here"), "{err}");
    let (ok, _, err) = simulate(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt"),
        "--ranks-per-host",
        "4",
    ]);
    assert!(!ok && err.contains("2 GPUs but 4 ranks"), "{err}");
    let (ok, _, err) = simulate(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt"),
        "--sizes",
        "4Q",
    ]);
    assert!(!ok && err.contains("'4Q' is not a size"), "{err}");
    let (ok, _, err) = simulate(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt"),
        "--collective",
        "broadcast",
        "--algo",
        "hybrid",
    ]);
    assert!(!ok && err.contains("does not serve broadcast"), "{err}");
}

#[test]
fn bench_runs_every_algorithm_on_emulated_hosts_and_checks_it() {
    for algo in ["ring", "tree", "hybrid", "hybrid:tree", "auto"] {
        let o = Command::new(env!("CARGO_BIN_EXE_acspeed-bench"))
            .args(["-n", "4", "--hosts", "3,1", "--algo", algo, "--check"])
            .args([
                "-b", "4K", "-e", "4M", "-f", "32", "--iters", "2", "-w", "1",
            ])
            .args(["--time-limit", "120"])
            .env_remove("RANK")
            .env_remove("WORLD_SIZE")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{algo}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("Out of bounds values : 0 OK"), "{algo}: {out}");
        if algo != "auto" {
            let name = if algo == "hybrid" { "hybrid" } else { algo };
            assert!(out.contains(&format!(" {name} ")), "{algo}: {out}");
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_acspeed-bench"))
        .args(["-n", "3", "--hosts", "2,2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("places 4 ranks but -n is 3"));
}

#[test]
fn explain_names_the_layer_that_decided_and_the_predictions() {
    let run = explain;
    let (ok, out, err) = run(
        &["--host-shape", "4", "--bytes", "4K"],
        &[("ACSPEED_ALLREDUCE", "tree:0-1M")],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(": tree (ACSPEED_ALLREDUCE range 0-1M)"),
        "{out}"
    );
    let (ok, out, err) = run(
        &[
            "--host-shape",
            "8,8",
            "--bytes",
            "64M",
            "--nvidia-smi-topo",
            fixture!("nvsmi/06-a100-8gpu-nv12-17nic.txt"),
        ],
        &[],
    );
    assert!(ok, "{err}");
    // A machine given to explain is the job's topology, so the selector decides, as it would
    // in a job with that ACSPEED_TOPO_FILE; the row marked as running is its pick.
    let first = out.lines().next().unwrap_or_default();
    assert!(first.contains("(selector: predicted "), "{out}");
    assert_eq!(out.matches("<- runs").count(), 1, "{out}");
    let runs = out.lines().find(|l| l.contains("<- runs")).unwrap();
    let name = runs.split_whitespace().next().unwrap();
    let name = if name == "hybrid:ring" {
        "hybrid"
    } else {
        name
    };
    assert!(first.contains(&format!("): {name} (selector")), "{out}");
    // Without a machine and ACSPEED_TOPO_FILE, the fixed rule: hybrid across hosts.
    let (ok, out, err) = run(&["--host-shape", "8,8", "--bytes", "64M"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("hybrid (auto: ranks span 2 hosts"), "{out}");
    let (ok, _, err) = run(&["--host-shape", "2,0", "--bytes", "4K"], &[]);
    assert!(
        !ok && err.contains("every host needs at least one rank"),
        "{err}"
    );
}

/// Uneven emulated hosts (3+1+2): the host of one rank runs its six stripes on four lanes and
/// channels, which wait on the intra-host phases over shared memory. A lane waiting on
/// another must keep the shared memory moving (its own sends leave only when polled): without
/// that, these runs hung within a few dozen calls.
#[test]
fn stripe_lanes_on_uneven_hosts_keep_shared_memory_moving() {
    for algo in [
        "hybrid",
        "hybrid:tree",
        "hybrid:butterfly",
        "hybrid:ps",
        "cpu_reduce",
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed-bench"));
        let o = crate::util::without_launch_env(&mut c)
            .args(["-n", "6", "--hosts", "3,1,2", "--algo", algo, "--check"])
            .args([
                "-b", "1M", "-e", "16M", "-f", "4", "--iters", "8", "-w", "1",
            ])
            .args(["--time-limit", "120"])
            .env("ACSPEED_TIMEOUT_SECS", "20")
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{algo}: {out}{err}");
        assert!(out.contains("Out of bounds values : 0 OK"), "{algo}: {out}");
    }
}

/// On a machine type with published NCCL figures, `explain` names them beside its pick; a GPU
/// the model does not know, or a GPU selection the topology does not have, is refused by name.
#[test]
fn explain_names_nccls_published_figure_and_refuses_unknown_gpus() {
    let cube = fixture!("topo/v100-cube-mesh/nvidia-smi.txt");
    let base = [
        "--host-shape",
        "8",
        "--bytes",
        "128M",
        "--nvidia-smi-topo",
        cube,
    ];
    let run = |args: &[&str]| explain(&[&base[..], args].concat(), &[]);
    let (ok, out, err) = run(&["--gpu", "Tesla V100-SXM2-16GB"]);
    assert!(ok, "{err}");
    assert!(out.contains("): ring (selector"), "{out}");
    assert!(
        out.contains("NCCL published on this machine type (8x V100-SXM2, DGX-1V cube-mesh)")
            && out.contains("118.3 at 64 MiB"),
        "{out}"
    );
    // An A100 name on a cube-mesh is no published machine type: no figure is claimed.
    let (ok, out, _) = run(&["--gpu", "A100-SXM4"]);
    assert!(ok && !out.contains("NCCL published"), "{out}");
    let (ok, _, err) = run(&["--gpu", "Radeon VII"]);
    assert!(
        !ok && err.contains("--gpu 'Radeon VII'") && err.contains("V100"),
        "{err}"
    );
    let (ok, _, err) = simulate(&[
        "--nvidia-smi-topo",
        fixture!("topo/v100-cube-mesh/nvidia-smi.txt"),
        "--gpus",
        "0,9",
    ]);
    assert!(!ok && err.contains("GPU 9 is not there"), "{err}");
}
