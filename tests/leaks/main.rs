//! Nothing is left behind: after communicators end, by a clean drop, a rank that left
//! mid-collective, an abort or a timeout, this process has the threads, file descriptors
//! (sockets, memfds) and `/dev/shm` entries it had before.
//!
//! A binary of its own with a single test: the counts are per process, and other tests running
//! beside it would change them.

#[allow(dead_code)]
#[path = "../util.rs"]
mod util;

use acspeed::ReduceOp;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use util::{run_group, test_config, Fabric};

#[derive(Debug, PartialEq, Eq)]
struct Held {
    threads: usize,
    fds: BTreeSet<String>,
    shm: BTreeSet<String>,
}

fn held() -> Held {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Each descriptor as what it points at ("socket:[123]", "/memfd:acspeed (deleted)"), so a
    // failure says what leaked, not only how many.
    let fds = names("/proc/self/fd")
        .into_iter()
        .filter_map(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .map(|t| format!("{fd} -> {}", t.display()))
        })
        .collect();
    Held {
        threads: names("/proc/self/task").len(),
        fds,
        shm: names("/dev/shm").into_iter().collect(),
    }
}

/// Waits (bounded) for the process to come back to `base`: threads that were told to stop may
/// need a moment to notice and exit.
fn back_to(base: &Held, what: &str) {
    let t0 = Instant::now();
    loop {
        let now = held();
        // The read_dir of /proc/self/fd holds a descriptor of its own while it runs, and its
        // number may differ between calls; compare the targets that are not that directory.
        let clean = |h: &Held| -> BTreeSet<String> {
            h.fds
                .iter()
                .filter(|f| !f.contains("/proc/"))
                .map(|f| f.split(" -> ").nth(1).unwrap_or("").to_string())
                .collect()
        };
        let (fb, fnow) = (clean(base), clean(&now));
        if now.threads <= base.threads && fnow.len() <= fb.len() && now.shm == base.shm {
            return;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let new_fds: Vec<_> = now.fds.iter().filter(|f| !base.fds.contains(*f)).collect();
            let new_shm: Vec<_> = now.shm.difference(&base.shm).collect();
            panic!(
                "{what}: leaked {} thread(s), descriptors {new_fds:?}, /dev/shm {new_shm:?}",
                now.threads as i64 - base.threads as i64
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn clean_run(f: Fabric) {
    let res = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
        let mut v = vec![1.0f32; 1 << 18];
        comm.allreduce(&mut v, ReduceOp::Sum).map(|_| v[0])
    });
    assert!(
        res.iter().all(|r| matches!(r, Ok(x) if *x == 3.0)),
        "{res:?}"
    );
}

fn rank_leaves(f: Fabric) {
    // The in-memory fabric has no connection to close, so there rank 2 is found at the timeout.
    let res = run_group(f, 3, test_config(1 << 16, 4, 3), |comm| {
        if comm.rank() == 2 {
            std::thread::sleep(Duration::from_millis(100));
            drop(comm);
            return None;
        }
        let mut v = vec![1.0f32; 1 << 20];
        Some(comm.allreduce(&mut v, ReduceOp::Sum).is_err())
    });
    assert_eq!(res, vec![Some(true), Some(true), None]);
}

fn aborted(f: Fabric) {
    let res = run_group(f, 2, test_config(1 << 16, 4, 20), |comm| {
        if comm.rank() == 0 {
            std::thread::sleep(Duration::from_millis(100));
            comm.abort("leak test");
            return comm.allreduce(&mut [1.0f32; 16], ReduceOp::Sum).is_err();
        }
        comm.allreduce(&mut [1.0f32; 16], ReduceOp::Sum).is_err()
    });
    assert_eq!(res, vec![true, true]);
}

fn timed_out(f: Fabric) {
    let res = run_group(f, 2, test_config(1 << 16, 4, 1), |comm| {
        if comm.rank() == 1 {
            std::thread::sleep(Duration::from_millis(1500));
            return true;
        }
        comm.allreduce(&mut [1.0f32; 16], ReduceOp::Sum).is_err()
    });
    assert_eq!(res, vec![true, true]);
}

#[test]
fn failures_leave_no_threads_descriptors_or_shared_memory_behind() {
    // One clean run first: process-wide pools (rayon's, the logger) start once and stay.
    clean_run(Fabric::Tcp);
    clean_run(Fabric::Shm);
    let base = held();
    for f in [Fabric::Tcp, Fabric::TcpMulti, Fabric::Shm, Fabric::Memory] {
        for (what, run) in [
            ("clean run", clean_run as fn(Fabric)),
            ("a rank that left mid-collective", rank_leaves),
            ("abort", aborted),
            ("timeout", timed_out),
        ] {
            run(f);
            back_to(&base, &format!("{f:?}, {what}"));
        }
    }
}
