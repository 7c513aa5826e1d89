//! `acspeed linearity` as a user runs it: from numbers, predicted, and measured with real
//! local ranks.

use std::process::Command;

fn lin(args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed"));
    c.arg("linearity").args(args);
    for k in [
        "RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
    ] {
        c.env_remove(k);
    }
    let o = c.output().expect("running acspeed linearity");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
        "tests/fixtures/nvsmi/06-a100-8gpu-nv12-17nic.txt",
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
}
