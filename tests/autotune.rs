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
    let cfg = Config {
        autotune: true,
        autotune_file: Some(file.to_str().unwrap().into()),
        ..test_config(1 << 16, 4, 30)
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
            autotune: false,
            ..cfg.clone()
        },
        1,
    );
    assert!(off[0][0].contains("auto:"), "{}", off[0][0]);
    let _ = std::fs::remove_dir_all(&dir);
}
