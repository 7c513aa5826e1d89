//! The benchmark binary as a user runs it: real processes over TCP on loopback.

use std::process::{Command, Output};
use std::time::Duration;

fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed-bench"));
    crate::util::without_launch_env(&mut c)
        .args(args)
        .args(["--time-limit", "120"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running acspeed-bench")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn local_job_prints_a_correct_nccl_tests_table() {
    let o = bench(
        &[
            "-n", "3", "-b", "4K", "-e", "1M", "-f", "4", "--check", "--iters", "3", "-w", "1",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for col in [
        "size", "count", "type", "redop", "time", "algbw", "busbw", "#wrong",
    ] {
        assert!(out.contains(col), "missing column {col}:\n{out}");
    }
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 5, "{out}");
    for r in &rows {
        let f: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(f.last(), Some(&"0"), "wrong results: {r}");
        let (algbw, busbw): (f64, f64) = (f[6].parse().unwrap(), f[7].parse().unwrap());
        assert!(
            (busbw - algbw * 4.0 / 3.0).abs() <= 0.002 + algbw * 0.01,
            "busbw formula: {r}"
        );
    }
}

#[test]
fn json_rows_have_the_documented_keys() {
    let o = bench(
        &[
            "-n", "2", "-b", "1K", "-e", "4K", "-d", "bf16", "-o", "avg", "--check", "--iters",
            "2", "-w", "1", "--json",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout is one JSON array");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for k in [
        "bytes",
        "count",
        "dtype",
        "op",
        "algo",
        "time_us",
        "algbw_gbps",
        "busbw_gbps",
        "wrong",
    ] {
        assert!(rows[0].get(k).is_some(), "missing key {k}");
    }
    assert_eq!(rows[0]["dtype"], "bfloat16");
    assert!(rows.iter().all(|r| r["wrong"] == 0));
}

#[test]
fn integer_dtypes_and_ops_check_exactly() {
    for (d, op) in [
        ("i8", "prod"),
        ("u8", "max"),
        ("i64", "bxor"),
        ("f16", "sum"),
        ("f64", "min"),
    ] {
        let o = bench(
            &[
                "-n", "3", "-b", "64", "-e", "70K", "-f", "32", "-d", d, "-o", op, "--check",
                "--iters", "2", "-w", "1",
            ],
            &[],
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{d} {op}: {out}\n{err}");
        assert!(out.contains("Out of bounds values : 0 OK"), "{out}");
    }
}

#[test]
fn missing_launch_variables_are_named() {
    let o = bench(&["-b", "4K", "-e", "4K"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("RANK") || err.contains("WORLD_SIZE"), "{err}");
    let o = bench(
        &["-b", "4K", "-e", "4K"],
        &[
            ("RANK", "0"),
            ("WORLD_SIZE", "two"),
            ("MASTER_PORT", "1234"),
        ],
    );
    assert!(text(&o).1.contains("WORLD_SIZE='two'"), "{}", text(&o).1);
}

#[test]
fn bad_arguments_are_named() {
    for (args, needle) in [
        (vec!["-n", "2", "-b", "0"], "minbytes"),
        (vec!["-n", "2", "-b", "4K", "-e", "1K"], "maxbytes"),
        (vec!["-n", "2", "-o", "bxor"], "bitwise"),
        (vec!["-n", "2", "-d", "f33"], "f33"),
        (vec!["-n", "2", "--algo", "bogus"], "bogus"),
        (vec!["-n", "2", "-b", "4Q"], "4Q"),
    ] {
        let o = bench(&args, &[]);
        let (_, err) = text(&o);
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn port_in_use_and_unreachable_master_fail_fast_and_clearly() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let env = [
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", port.as_str()),
        ("ACSPEED_TIMEOUT_SECS", "2"),
    ];
    let o = bench(&["-b", "4K", "-e", "4K"], &env);
    let (_, err) = text(&o);
    assert!(
        err.contains("MASTER_PORT") && err.contains("in use"),
        "{err}"
    );

    // Nobody listens on this port: rank 1 gives up after the timeout and says where it looked.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let env = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", free.as_str()),
        ("ACSPEED_TIMEOUT_SECS", "1"),
    ];
    let t0 = std::time::Instant::now();
    let o = bench(&["-b", "4K", "-e", "4K"], &env);
    let (_, err) = text(&o);
    assert!(
        err.contains("cannot reach the store") && err.contains(&free),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn every_configuration_variable_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for (name, _, _) in acspeed_core::config::VARS {
        for v in name.split(" / ") {
            assert!(
                readme.contains(&format!("`{v}`")),
                "README does not document {v}"
            );
        }
    }
}

fn dev_shm_entries() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn shared_memory_leaves_nothing_in_dev_shm_even_when_a_rank_is_killed() {
    let before = dev_shm_entries();
    // A clean run.
    let o = bench(
        &[
            "-n", "3", "-b", "1M", "-e", "1M", "--iters", "2", "-w", "1", "--check",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    // A run whose rank 1 is killed mid-job (SIGKILL: no destructor runs).
    let port = crate::util::free_port();
    let spawn = |r: u32| {
        crate::util::spawn_bench_rank(
            r,
            2,
            &port,
            &["-b", "64M", "-e", "64M", "--iters", "500", "-w", "0"],
            &[("ACSPEED_TIMEOUT_SECS", "10")],
        )
    };
    let r0 = spawn(0);
    let mut r1 = spawn(1);
    std::thread::sleep(Duration::from_millis(1500));
    r1.kill().unwrap();
    let _ = r1.wait();
    let out = r0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rank 1"), "{err}");
    let after = dev_shm_entries();
    let new: Vec<&String> = after
        .difference(&before)
        .filter(|n| n.contains("acspeed"))
        .collect();
    assert!(new.is_empty(), "left in /dev/shm: {new:?}");
}

#[test]
fn socket_interface_choice() {
    let o = bench(
        &[
            "-n", "2", "-b", "4K", "-e", "4K", "--iters", "2", "-w", "1", "--check",
        ],
        &[("ACSPEED_SOCKET_IFNAME", "=lo"), ("ACSPEED_SHM", "0")],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let o = bench(
        &["-n", "2", "-b", "4K", "-e", "4K", "--iters", "1"],
        &[
            ("ACSPEED_SOCKET_IFNAME", "=nosuchif9"),
            ("ACSPEED_TIMEOUT_SECS", "5"),
        ],
    );
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("ACSPEED_SOCKET_IFNAME") && err.contains("nosuchif9"),
        "{err}"
    );
}

/// `--algo ntree` with a topology file of fake NVLinks runs the packed trees for real over
/// shared memory (two trees sharing links, so two channels), with every element checked.
#[test]
fn bench_runs_ntree_from_a_topology_file() {
    let dir = std::env::temp_dir().join(format!("acspeed-bench-ntree-{}", std::process::id()));
    let topo = crate::util::topo_json(&dir, "topo.json", fixture!("fake-nvlink-4gpu.txt"), |_| {});
    let o = bench(
        &[
            "-n", "4", "--algo", "ntree", "-b", "4K", "-e", "1M", "-f", "16", "--check", "--iters",
            "3", "-w", "1",
        ],
        &[
            ("ACSPEED_TOPO_FILE", topo.as_str()),
            ("ACSPEED_DEBUG", "INFO"),
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("ntree: 2 trees") && err.contains("2 channel(s)"),
        "{err}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for r in rows {
        let f: Vec<&str> = r.split_whitespace().collect();
        assert_eq!((f[4], f[f.len() - 1]), ("ntree", "0"), "{r}");
    }
}

/// A forced `ntree` without NVLinks warns that it runs the double binary tree, and is right.
#[test]
fn forced_ntree_without_nvlinks_warns_and_runs_the_tree() {
    let o = bench(
        &[
            "-n", "3", "--algo", "ntree", "-b", "4K", "-e", "64K", "-f", "16", "--check",
            "--iters", "2", "-w", "1",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("WARN ACSPEED_ALGO=ntree") && err.contains("runs the double binary tree"),
        "{err}"
    );
    assert!(out.contains("Out of bounds values : 0 OK"), "{out}");
}

/// `--per-call` keeps every call of a size in order, warm-up first (JSON `calls_us`, a line
/// per size in the table); without it the rows carry no such field.
#[test]
fn per_call_times_cover_every_call_in_order() {
    let args = [
        "-n", "2", "-b", "4K", "-e", "64K", "-f", "16", "--iters", "3", "-w", "2", "--json",
    ];
    let o = bench(&[&args[..], &["--per-call"]].concat(), &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        let calls = r["calls_us"].as_array().unwrap();
        assert_eq!(calls.len(), 5, "2 warm-up + 3 timed calls: {r}");
        assert!(calls.iter().all(|t| t.as_f64().unwrap() > 0.0), "{r}");
    }
    let o = bench(&args, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(!out.contains("calls_us"), "{out}");
    let o = bench(&["-n", "2", "-b", "4K", "-e", "4K", "--per-call"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("# calls of 4096 B in order (us): "), "{out}");
}

/// Out of file descriptors at init (a limit of 12 for 4 ranks), the job fails within its
/// bounds and the error names the limit and how to raise it, instead of only "Too many open
/// files".
#[test]
fn running_out_of_file_descriptors_names_the_limit() {
    let mut c = Command::new("bash");
    let o = crate::util::without_launch_env(&mut c)
        .arg("-c")
        .arg(format!(
            "ulimit -n 12 && exec {} -n 4 -b 4K -e 4K --iters 2 -w 1 --time-limit 60",
            env!("CARGO_BIN_EXE_acspeed-bench")
        ))
        .env("ACSPEED_TIMEOUT_SECS", "10")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("out of file descriptors: this process may hold 12 (RLIMIT_NOFILE"),
        "{err}"
    );
}
