//! The control plane: heartbeats to rank 0's coordinator and its "missing ranks" reports.

use crate::util::test_config;
use acspeed::ReduceOp;
use std::time::Duration;

/// Ranks 0 and 1 enter an allreduce that rank 2 joins only 1.5 s later: with a 0.3 s stall
/// threshold both waiting ranks get reports that name the collective and rank 2 as missing,
/// with what rank 2 was doing. Rank 2, which never waited, gets none.
#[test]
fn a_late_rank_is_reported_missing_to_the_ranks_that_wait() {
    for shm in [false, true] {
        let store = acspeed::store::MemStore::new();
        let res: Vec<Vec<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let st = store.clone();
                    s.spawn(move || {
                        let cfg = {
                            let mut base = test_config(1 << 16, 4, 20);
                            base.transport.shm = shm;
                            base.job.stall_warn = Duration::from_millis(300);
                            base
                        };
                        let ip = "127.0.0.1".parse().unwrap();
                        let c = acspeed::init_with_store(&*st, "j", r, 3, ip, cfg).unwrap();
                        if r == 2 {
                            std::thread::sleep(Duration::from_millis(1500));
                        }
                        let mut v = [1.0f32; 1024];
                        c.allreduce(&mut v, ReduceOp::Sum).unwrap();
                        assert_eq!(v[0], 3.0);
                        c.stall_reports()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, reports) in res.iter().enumerate().take(2) {
            let hit = reports.iter().find(|t| {
                t.contains("allreduce #1 (4096 bytes")
                    && t.contains("on rank(s) 0-1")
                    && t.contains("missing rank(s) 2: rank 2 (has run no collective yet")
            });
            assert!(hit.is_some(), "shm={shm} rank {r}: {reports:?}");
            // Once past the threshold, then once per threshold, not on every heartbeat.
            assert!(reports.len() <= 6, "shm={shm} rank {r}: {reports:?}");
        }
        assert!(res[2].is_empty(), "{:?}", res[2]);
    }
}

/// With the stall threshold at zero there is no control plane and no report.
#[test]
fn no_stall_threshold_no_control_plane() {
    let store = acspeed::store::MemStore::new();
    std::thread::scope(|s| {
        for r in 0..2 {
            let st = store.clone();
            s.spawn(move || {
                let cfg = {
                    let mut base = test_config(1 << 16, 4, 20);
                    base.job.stall_warn = Duration::ZERO;
                    base
                };
                let c =
                    acspeed::init_with_store(&*st, "z", r, 2, "127.0.0.1".parse().unwrap(), cfg)
                        .unwrap();
                if r == 1 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                c.allreduce(&mut [1.0f32; 4], ReduceOp::Sum).unwrap();
                assert!(c.stall_reports().is_empty());
            });
        }
    });
    use acspeed::store::Store;
    assert!(store.get("z/ctl", Duration::ZERO).is_err());
}

/// At `ACSPEED_DEBUG=INFO` every collective's time is counted per collective, algorithm and
/// size class (logged when the communicator ends); at the default level nothing is kept.
#[test]
fn call_statistics_per_collective_at_info() {
    use acspeed_core::config::LogLevel;
    let cfg = {
        let mut base = crate::util::test_config(1 << 16, 4, 20);
        base.job.log = LogLevel::Info;
        base
    };
    let res = crate::util::run_group(crate::util::Fabric::Memory, 2, cfg, |comm| {
        for _ in 0..3 {
            comm.allreduce(&mut [1.0f32; 1000], acspeed::ReduceOp::Sum)
                .unwrap();
        }
        comm.broadcast(&mut [0u8; 100], 0).unwrap();
        comm.call_stats()
    });
    for lines in &res {
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0]
                .starts_with("stats: allreduce cpu_reduce <= 4 KiB: 3 calls, time min/median/max"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("stats: broadcast "), "{lines:?}");
    }
    let quiet = crate::util::run_group(
        crate::util::Fabric::Memory,
        2,
        crate::util::test_config(1 << 16, 4, 20),
        |comm| {
            comm.allreduce(&mut [1.0f32; 10], acspeed::ReduceOp::Sum)
                .unwrap();
            comm.call_stats()
        },
    );
    assert!(quiet.iter().all(|l| l.is_empty()), "{quiet:?}");
}
