//! `acspeed linearity` as a user runs it: from numbers, predicted, and measured with real
//! local ranks.

use std::process::Command;

fn lin(args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed"));
    crate::util::without_launch_env(&mut c)
        .arg("linearity")
        .args(args);
    crate::util::outcome(&mut c)
}

#[test]
fn from_numbers_and_bad_input() {
    let (ok, out, err) = lin(&[
        "--single",
        "100",
        "--multi",
        "700",
        "--workers",
        "8",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((v["linearity"].as_f64().unwrap() - 0.875).abs() < 1e-12);
    for k in [
        "linearity",
        "workers",
        "throughput",
        "exposed_comm_frac",
        "overlap_frac",
        "algo",
        "verdict",
    ] {
        assert!(v.get(k).is_some(), "no {k}: {out}");
    }
    let (ok, _, err) = lin(&["--single", "100", "--multi", "700"]);
    assert!(!ok && err.contains("--workers"), "{err}");
    let (ok, _, err) = lin(&["--workers", "2", "--model", "alexnet"]);
    assert!(!ok && err.contains("presets"), "{err}");
}

#[test]
fn measured_verdict_follows_the_compute_to_communication_ratio() {
    // Tiny compute, 64 MB of gradients: communication-bound.
    let (ok, out, err) = lin(&[
        "--workers",
        "2",
        "--params",
        "16000000",
        "--compute-ms",
        "1",
        "--steps",
        "3",
        "--algo",
        "ring",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["linearity"].as_f64().unwrap() < 0.8, "{out}");
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("communication-bound"),
        "{out}"
    );
    assert!(v["exposed_comm_frac"].as_f64().unwrap() > 0.15, "{out}");
    // Long compute, 4 MB of gradients: scales.
    let (ok, out, err) = lin(&[
        "--workers",
        "2",
        "--params",
        "1000000",
        "--compute-ms",
        "150",
        "--steps",
        "3",
        "--bucket-mb",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["linearity"].as_f64().unwrap() > 0.8, "{out}");
    assert!(
        v["verdict"].as_str().unwrap().starts_with("scales well"),
        "{out}"
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "auto and ring by default: {out}");
    assert!(
        rows[0]["algo"].as_str().unwrap().starts_with("auto("),
        "{out}"
    );
}

#[test]
fn predicted_on_a_fixture_recommends_settings() {
    let (ok, out, err) = lin(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/06-a100-8gpu-nv12-17nic.txt"),
        "--hosts",
        "4",
        "--net-gbps",
        "25",
        "--model",
        "gpt2-medium",
        "--compute-ms",
        "100",
    ]);
    assert!(ok, "{err}");
    // Hosts 1, 2, 4 with every candidate, then verdicts and the recommendation.
    for h in [" 1 ", " 2 ", " 4 "] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(h.trim())),
            "{h}: {out}"
        );
    }
    assert!(
        out.contains("recommended at 4 host(s): ACSPEED_ALGO="),
        "{out}"
    );
    assert!(out.contains("hybrid:ring"), "{out}");
    // The pipeline too: segments in flight and their size, as the variables take them.
    let rec = out.lines().find(|l| l.starts_with("recommended")).unwrap();
    let depth = rec.split("ACSPEED_PIPELINE_DEPTH=").nth(1).unwrap();
    assert!(depth.starts_with(['2', '4', '8']), "{rec}");
    let seg = rec.split("ACSPEED_SEGMENT_BYTES=").nth(1).unwrap();
    let seg = seg.split_whitespace().next().unwrap();
    assert!(["64K", "256K", "1M", "4M"].contains(&seg), "{rec}");
}

#[test]
fn charts_are_written_as_png() {
    let dir = std::env::temp_dir().join(format!("acspeed-charts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("lin.png");
    let (ok, _, err) = lin(&[
        "--nvidia-smi-topo",
        fixture!("nvsmi/03-p100-dgx1-8gpu-sheffield.txt"),
        "--hosts",
        "2",
        "--net-gbps",
        "32",
        "--compute-ms",
        "100",
        "--plot",
        png.to_str().unwrap(),
    ]);
    if ok {
        let b = std::fs::read(&png).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            b.len() > 20_000,
            "a chart of {} bytes is too small",
            b.len()
        );
    } else {
        // Without a font the error says which package to install.
        assert!(err.contains("fonts-dejavu-core"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn timeline_writes_one_chrome_trace_per_rank() {
    let dir = std::env::temp_dir().join(format!("acspeed-tl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tl = dir.join("trace.json");
    let o = Command::new(env!("CARGO_BIN_EXE_acspeed-bench"))
        .args([
            "-n", "2", "-b", "4K", "-e", "64K", "-f", "4", "--iters", "3", "-w", "1", "--algo",
            "ring",
        ])
        .env("ACSPEED_TIMELINE", &tl)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Per rank: seq -> (bytes, what it sent to and received from the other rank).
    let mut traffic: Vec<std::collections::HashMap<u64, (u64, u64, u64)>> = Vec::new();
    for r in 0..2 {
        let f = dir.join(format!("trace-r{r}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let mut mine = std::collections::HashMap::new();
        for e in v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "allreduce")
        {
            let peers = e["args"]["peers"].as_array().unwrap();
            assert_eq!(peers.len(), 1, "{e}");
            let p = &peers[0];
            assert_eq!(p["rank"], 1 - r, "{e}");
            assert!(p["wait_ms"].as_f64().unwrap() >= 0.0, "{e}");
            let get = |k: &str| p[k].as_u64().unwrap();
            let bytes = e["args"]["bytes"].as_u64().unwrap();
            mine.insert(
                e["args"]["seq"].as_u64().unwrap(),
                (bytes, get("sent"), get("recv")),
            );
        }
        traffic.push(mine);
        // Phases: a ring allreduce reduces, then distributes (its all-gather), on lane 1's
        // row, inside its collective's time.
        let events = v.as_array().unwrap();
        for e in events.iter().filter(|e| e["name"] == "allreduce") {
            let seq = &e["args"]["seq"];
            let phases: Vec<&serde_json::Value> = events
                .iter()
                .filter(|p| p["tid"] == 1 && &p["args"]["seq"] == seq)
                .collect();
            let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(
                names,
                ["allreduce reduce", "allreduce distribute"],
                "rank {r}: {e}"
            );
            let (t0, t1) = (
                e["ts"].as_f64().unwrap(),
                e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap(),
            );
            for p in phases {
                let ts = p["ts"].as_f64().unwrap();
                assert!(
                    ts >= t0 - 1.0 && ts + p["dur"].as_f64().unwrap() <= t1 + 1.0,
                    "{p} outside {e}"
                );
            }
        }
        let x: Vec<&serde_json::Value> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect();
        // 3 sizes x (1 warm-up + 3 timed) allreduces, plus barriers and --check-free calls.
        let allreduces = x.iter().filter(|e| e["name"] == "allreduce").count();
        assert!(allreduces >= 12, "rank {r}: {allreduces} allreduce events");
        assert!(x
            .iter()
            .all(|e| e["pid"] == r && e["dur"].as_f64().unwrap() >= 0.0));
        assert!(x
            .iter()
            .any(|e| e["args"]["bytes"] == 65536 && e["args"]["algo"] == "ring"));
    }
    // What one rank sent the other received, call by call; a 2-rank ring sends half the
    // buffer in each of its two phases.
    for (seq, (bytes, sent, recv)) in &traffic[0] {
        let (b1, sent1, recv1) = traffic[1][seq];
        assert_eq!(
            (*bytes, *sent, *recv),
            (b1, recv1, sent1),
            "allreduce #{seq}"
        );
        assert_eq!(*sent, *bytes, "allreduce #{seq}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_measured_run_prints_the_prediction_next_to_it() {
    let (ok, out, err) = lin(&[
        "--workers",
        "2",
        "--params",
        "1000000",
        "--compute-ms",
        "20",
        "--steps",
        "3",
        "--algo",
        "ring",
        "--with-prediction",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("predicted by the simulator"), "{out}");
    // One row per measured algorithm with "measured / predicted" step and linearity.
    let row = out
        .lines()
        .find(|l| l.starts_with("ring ") && l.matches(" / ").count() == 2)
        .unwrap_or_else(|| panic!("no measured/predicted row: {out}"));
    let nums: Vec<f64> = row
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "{row}");
    assert!(nums.iter().all(|x| *x > 0.0), "{row}");
}
