//! One policy: `acspeed explain` builds the policy a communicator builds, so on every topology
//! fixture (and on CPU hosts with and without shared memory) the line it prints is the line a
//! communicator of that job gives, and the algorithm the communicator then runs is that one.

use crate::util::{run_group_on_hosts, Fabric};
use acspeed::{Communicator, Config};
use acspeed_core::plan::Collective;
use std::process::Command;

const SIZES: [usize; 4] = [4 << 10, 1 << 20, 16 << 20, 64 << 20];

/// `acspeed explain`'s first line for a job of `shape` under the environment plus `vars`.
fn explain_cli(vars: &[(String, String)], shape: &[u32], coll: &str, bytes: usize) -> String {
    let shape: Vec<String> = shape.iter().map(|m| m.to_string()).collect();
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed"));
    c.args(["explain", "--host-shape", &shape.join(",")]).args([
        "--bytes",
        &bytes.to_string(),
        "--collective",
        coll,
    ]);
    crate::util::without_launch_env(&mut c);
    for (k, v) in vars {
        c.env(k, v);
    }
    let (ok, out, err) = crate::util::outcome(&mut c);
    assert!(ok, "explain failed: {err}");
    out.lines().next().unwrap_or_default().to_string()
}

/// The communicator's explanation and decided algorithm for every size, from rank 0 of a
/// group of `shape` under the environment plus `vars`.
fn explain_comm(
    vars: &[(String, String)],
    shape: &[u32],
    coll: Collective,
) -> Vec<(String, acspeed::Algorithm)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ACSPEED_"))
        .collect();
    env.extend(vars.iter().cloned());
    let cfg = Config::from_vars(&env).unwrap();
    let fabric = if cfg.transport.shm {
        Fabric::Memory
    } else {
        Fabric::Tcp
    };
    run_group_on_hosts(fabric, shape, cfg, |comm: Communicator| {
        SIZES
            .iter()
            .map(|b| (comm.explain(coll, *b), comm.decide(coll, *b).algorithm))
            .collect::<Vec<_>>()
    })
    .swap_remove(0)
}

fn agree(vars: &[(String, String)], shape: &[u32]) {
    for (coll, name) in [
        (Collective::AllReduce, "allreduce"),
        (
            Collective::Broadcast {
                root: acspeed_core::Rank(0),
            },
            "broadcast",
        ),
    ] {
        let comm = explain_comm(vars, shape, coll);
        for (b, (line, algo)) in SIZES.iter().zip(comm) {
            let cli = explain_cli(vars, shape, name, *b);
            assert_eq!(cli, line, "{vars:?} on {shape:?}, {name} of {b} bytes");
            assert!(
                line.contains(&format!("): {} (", algo.name())),
                "the line names what runs: {line}"
            );
        }
    }
}

#[test]
fn explain_agrees_with_what_runs_on_every_fixture() {
    let dir = std::env::temp_dir().join(format!("acspeed-policy-{}", std::process::id()));
    let mut fixtures: Vec<_> = std::fs::read_dir(fixture!("nvsmi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 7, "{fixtures:?}");
    for f in &fixtures {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let topo =
            crate::util::topo_json(&dir, &format!("{name}.json"), f.to_str().unwrap(), |_| {});
        let vars = vec![("ACSPEED_TOPO_FILE".to_string(), topo)];
        for shape in [&[2u32][..], &[2, 2]] {
            agree(&vars, shape);
        }
    }
    // CPU hosts: the fixed rule, CPU-Reduce on one host of 4 ranks, and its fallback without
    // shared memory; a forced algorithm and a size rule.
    let v = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    agree(&v(&[]), &[4]);
    agree(&v(&[]), &[2, 2]);
    agree(&v(&[("ACSPEED_SHM", "0")]), &[4]);
    agree(&v(&[("ACSPEED_ALGO", "ntree")]), &[2, 2]);
    agree(
        &v(&[("ACSPEED_ALLREDUCE", "tree:0-1M;cpu_reduce:1M-max")]),
        &[3, 1],
    );
    std::fs::remove_dir_all(&dir).ok();
}
