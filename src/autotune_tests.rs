use super::*;
use acspeed_algorithms::Algorithm::{CpuReduce, Ring, Tree};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("acspeed-autotune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&d);
    d
}

fn tuner(path: &Path, key: &str) -> (Tuner, Vec<String>) {
    let mut w = Vec::new();
    let t = Tuner::new(key.into(), Some(path.to_str().unwrap()), None, &mut w);
    (t, w)
}

#[test]
fn classes_are_powers_of_two_per_collective() {
    let ar = Collective::AllReduce;
    assert_eq!(Class::of(ar, 1 << 20), Class::of(ar, (1 << 19) + 1));
    assert_ne!(Class::of(ar, 1 << 20), Class::of(ar, (1 << 20) + 1));
    assert_eq!(Class::of(ar, 25 << 20).unwrap().name(), "allreduce/32M");
    assert_eq!(Class::of(ar, 0).unwrap().name(), "allreduce/1");
    let b = Class::of(
        Collective::Broadcast {
            root: acspeed_core::Rank(1),
        },
        4096,
    )
    .unwrap();
    assert_eq!(b.name(), "broadcast/4K");
    assert_eq!(parse_class(&b.name()), Some(b));
    assert_eq!(Class::of(Collective::AllGather, 4096), None);
    assert_eq!(parse_class("allgather/4K"), None);
    assert_eq!(parse_class("allreduce/3K"), None);
}

#[test]
fn trials_cycle_through_candidates_and_the_lowest_median_wins() {
    let p = tmp("cycle");
    let (t, w) = tuner(&p, "k");
    assert!(w.is_empty(), "{w:?}");
    let class = Class::of(Collective::AllReduce, 1 << 20).unwrap();
    let cands = [Ring, Tree, CpuReduce];
    assert_eq!(
        t.next(class, &[Ring]),
        None,
        "one candidate: nothing to measure"
    );
    let mut ran = Vec::new();
    let mut done = None;
    for i in 0..cands.len() * TRIALS {
        let Some(Next::Run {
            algo, trial: true, ..
        }) = t.next(class, &cands)
        else {
            panic!("call {i} is a trial")
        };
        ran.push(algo);
        done = t.record(class, 1.0);
        assert_eq!(done.is_some(), i + 1 == cands.len() * TRIALS);
    }
    let blocks: Vec<_> = cands.iter().flat_map(|a| [*a; TRIALS]).collect();
    assert_eq!(ran, blocks);
    assert_eq!(done.unwrap().len(), 9);
    // Slowest-rank times, call by call: ring 5,5,5 us; tree 4,9,4 (median 4); cpu_reduce
    // one fast outlier 1 and 6,6 (median 6): the median, not the best call, decides.
    let us = [5.0, 5.0, 5.0, 4.0, 9.0, 4.0, 1.0, 6.0, 6.0].map(|x| x * 1e-6);
    let d = t.decide(class, &us).unwrap();
    assert_eq!(d.algo, Tree);
    d.saved.unwrap();
    assert!(
        d.summary.contains("tree 4 us") && d.summary.contains("ring 5 us"),
        "{}",
        d.summary
    );
    assert_eq!(t.decided(class), Some(Tree));
    let Some(Next::Run {
        algo: Tree,
        trial: false,
        why,
    }) = t.next(class, &cands)
    else {
        panic!("decided")
    };
    assert!(why.contains("measured"), "{why}");
    // The wrong number of times is refused.
    let c2 = Class::of(Collective::AllReduce, 64).unwrap();
    t.next(c2, &cands);
    assert!(t.decide(c2, &[1.0]).is_err());
    let _ = std::fs::remove_file(&p);
}

#[test]
fn ties_keep_the_earlier_candidate() {
    let p = tmp("ties");
    let (t, _) = tuner(&p, "k");
    let class = Class::of(
        Collective::Reduce {
            root: acspeed_core::Rank(0),
        },
        4096,
    )
    .unwrap();
    t.next(class, &[Tree, Ring]);
    for _ in 0..2 * TRIALS {
        t.record(class, 1.0);
    }
    assert_eq!(t.decide(class, &[2e-6; 2 * TRIALS]).unwrap().algo, Tree);
    let _ = std::fs::remove_file(&p);
}

#[test]
fn the_cache_is_read_back_confirmed_or_measured_again() {
    let p = tmp("cache");
    let class = Class::of(Collective::AllReduce, 1 << 20).unwrap();
    let cands = [Ring, CpuReduce];
    {
        let (t, _) = tuner(&p, "job A");
        t.next(class, &cands);
        for _ in 0..2 * TRIALS {
            t.record(class, 1.0);
        }
        let us = [3e-6, 3e-6, 3e-6, 1e-6, 1e-6, 1e-6];
        t.decide(class, &us).unwrap().saved.unwrap();
    }
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("allreduce/1M") && text.contains("cpu_reduce"),
        "{text}"
    );

    // Same job: the cached choice waits for every rank's confirmation.
    let (t, w) = tuner(&p, "job A");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(t.next(class, &cands), Some(Next::Confirm(CpuReduce)));
    t.confirm(class, &cands, true);
    assert_eq!(t.decided(class), Some(CpuReduce));
    // Not confirmed (another rank read something else): measured again.
    let (t, _) = tuner(&p, "job A");
    t.confirm(class, &cands, false);
    assert!(matches!(
        t.next(class, &cands),
        Some(Next::Run {
            algo: Ring,
            trial: true,
            ..
        })
    ));

    // Another job's file, and a file that is not a cache: ignored, with a reason.
    let (t, w) = tuner(&p, "job B");
    assert!(w[0].contains("another job shape"), "{w:?}");
    assert!(matches!(
        t.next(class, &cands),
        Some(Next::Run { trial: true, .. })
    ));
    std::fs::write(&p, "{ not json").unwrap();
    let (_, w) = tuner(&p, "job A");
    assert!(w[0].contains("not an autotune cache"), "{w:?}");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn default_file_names_hash_the_key() {
    let mut w = Vec::new();
    let a = Tuner::new("a".into(), None, Some("/nonexistent/dir"), &mut w);
    let b = Tuner::new("b".into(), None, Some("/nonexistent/dir"), &mut w);
    assert_ne!(a.path(), b.path());
    assert!(a.path().starts_with("/nonexistent/dir"));
    assert_eq!(crate::facts::fnv64("a"), crate::facts::fnv64("a"));
    assert!(w.is_empty(), "{w:?}");
}
