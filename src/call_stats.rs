//! Per-collective timing statistics for the debug log (`ACSPEED_DEBUG=INFO` or `TRACE`): for
//! each collective, algorithm and power-of-two size class, how many calls ran and their
//! min / median / max time and bus bandwidth, logged when the communicator ends (or a torch
//! backend shuts down). Off at the default level, where nothing is recorded.

use crate::log::Logger;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Recent call times kept per class for the median (the min and max cover every call).
const RECENT: usize = 1024;

#[derive(Default)]
struct Entry {
    calls: u64,
    min_s: f64,
    max_s: f64,
    /// Recent (time, bus bandwidth GB/s) of calls, each at its own size.
    recent: VecDeque<(f64, f64)>,
    max_bytes: usize,
}

/// (collective, algorithm, size class as log2 of the bytes rounded up) -> times.
type Key = (&'static str, String, u32);

pub struct CallStats {
    log: Logger,
    nranks: u32,
    /// `None` once logged: later calls are not recorded.
    table: Mutex<Option<BTreeMap<Key, Entry>>>,
}

impl CallStats {
    pub fn new(log: Logger, nranks: u32) -> Self {
        CallStats {
            log,
            nranks,
            table: Mutex::new(Some(BTreeMap::new())),
        }
    }

    /// One finished call of `bytes` that took `secs`.
    pub fn record(&self, coll: &'static str, algo: &str, bytes: usize, secs: f64) {
        let class = bytes.max(1).next_power_of_two().trailing_zeros();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = t.as_mut() else { return };
        let e = t.entry((coll, algo.to_string(), class)).or_default();
        if e.calls == 0 || secs < e.min_s {
            e.min_s = secs;
        }
        e.max_s = e.max_s.max(secs);
        e.calls += 1;
        e.max_bytes = e.max_bytes.max(bytes);
        if e.recent.len() == RECENT {
            e.recent.pop_front();
        }
        // Bus bandwidth as acspeed-bench reports it.
        let n = self.nranks.max(1) as f64;
        let busbw = bytes as f64 / secs.max(1e-9) / 1e9 * 2.0 * (n - 1.0) / n;
        e.recent.push_back((secs, busbw));
    }

    /// One line per (collective, algorithm, size class), in that order.
    pub fn lines(&self) -> Vec<String> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = t.as_ref() else {
            return Vec::new();
        };
        t.iter()
            .map(|((coll, algo, class), e)| {
                let spread = |f: fn(&(f64, f64)) -> f64| {
                    let mut v: Vec<f64> = e.recent.iter().map(f).collect();
                    v.sort_by(f64::total_cmp);
                    (v[0], v[v.len() / 2], v[v.len() - 1])
                };
                let (_, med, _) = spread(|x| x.0);
                // Bandwidth says nothing about barriers and tiny messages.
                let bw = if e.max_bytes >= 1 << 10 {
                    let (lo, mid, hi) = spread(|x| x.1);
                    format!(", busbw min/median/max {lo:.2}/{mid:.2}/{hi:.2} GB/s")
                } else {
                    String::new()
                };
                format!(
                    "stats: {coll} {algo} <= {}: {} calls, time min/median/max {:.1}/{:.1}/{:.1} us{bw}",
                    human(1u64 << class),
                    e.calls,
                    e.min_s * 1e6,
                    med * 1e6,
                    e.max_s * 1e6,
                )
            })
            .collect()
    }

    /// Logs the table (at INFO) once; later calls and records do nothing.
    pub fn finish(&self) {
        let lines = self.lines();
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for l in lines {
            self.log.info(&l);
        }
    }
}

impl Drop for CallStats {
    fn drop(&mut self) {
        self.finish();
    }
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acspeed_core::config::LogLevel;

    #[test]
    fn classes_count_every_call_and_report_min_median_max() {
        let s = CallStats::new(Logger::new(LogLevel::Warn, 0), 4);
        for us in [30.0, 10.0, 20.0] {
            s.record("allreduce", "ring", 3000, us * 1e-6);
        }
        s.record("allreduce", "ring", 1 << 20, 1e-3);
        s.record("broadcast", "tree", 1, 5e-6);
        let l = s.lines();
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(
            l[0].starts_with(
                "stats: allreduce ring <= 4 KiB: 3 calls, time min/median/max 10.0/20.0/30.0 us"
            ),
            "{}",
            l[0]
        );
        // 3000 bytes in 10-30 us on 4 ranks: 0.1-0.3 GB/s x 1.5.
        assert!(
            l[0].ends_with("busbw min/median/max 0.15/0.22/0.45 GB/s"),
            "{}",
            l[0]
        );
        assert!(!l[2].contains("busbw"), "{}", l[2]);
        // 1 MiB in 1 ms on 4 ranks: 1.049 GB/s x 1.5.
        assert!(
            l[1].contains("<= 1 MiB: 1 calls") && l[1].contains("1.57/1.57/1.57 GB/s"),
            "{}",
            l[1]
        );
        assert!(
            l[2].starts_with("stats: broadcast tree <= 1 B: 1 calls"),
            "{}",
            l[2]
        );
        s.finish();
        s.record("allreduce", "ring", 8, 1e-6);
        assert!(s.lines().is_empty(), "nothing after finish");
    }
}
