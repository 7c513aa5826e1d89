//! `ACSPEED_TIMELINE=path.json`: every collective as a Chrome-trace event, so Perfetto,
//! chrome://tracing and trace analysers that only know GPU kernels can see CPU and TCP
//! collectives next to them.
//!
//! One file per rank (`path.json` for a one-rank job, else `path-r<rank>.json`), in the
//! trace-event JSON array format: "[" then one event per line. Timestamps are microseconds
//! since the Unix epoch, so the files of ranks on one machine line up when loaded together.
//! A second communicator of the same rank in one process (a torch subgroup) writes
//! `path-r<rank>-<k>.json`, k = 1, 2, ... in creation order, instead of truncating the first.
//!
//! The closing "]" is written by [`Timeline::finish`] (the communicator's shutdown, or its drop).
//! Events are flushed at least every half second, so a rank that is killed, or a process that
//! exits without running destructors (Python's multiprocessing children do), loses at most that
//! much; the trace viewers accept a file without the "]".

use acspeed_core::{Error, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Paths this process has open, so a second communicator does not truncate a first's file.
static OPEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Longest an event waits in the buffer before it reaches the file.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

struct Out {
    file: BufWriter<File>,
    flushed: Instant,
}

/// An open trace file.
pub struct Timeline {
    /// `None` once finished: later events are dropped.
    out: Mutex<Option<Out>>,
    path: String,
    /// Epoch microseconds at `t0`.
    epoch_us: f64,
    t0: Instant,
    rank: u32,
}

/// The file a rank writes for `template`.
pub fn rank_path(template: &str, rank: u32, nranks: u32) -> String {
    if nranks <= 1 {
        return template.to_string();
    }
    match template.strip_suffix(".json") {
        Some(stem) => format!("{stem}-r{rank}.json"),
        None => format!("{template}-r{rank}"),
    }
}

/// `path` itself if no communicator of this process has it open, else `path` with `-<k>`
/// before its `.json` for the smallest free k; reserved until [`Timeline::finish`].
fn reserve(path: &str) -> String {
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = open.get_or_insert_with(HashSet::new);
    let mut k = 0;
    loop {
        let p = match (k, path.strip_suffix(".json")) {
            (0, _) => path.to_string(),
            (_, Some(stem)) => format!("{stem}-{k}.json"),
            (_, None) => format!("{path}-{k}"),
        };
        if set.insert(p.clone()) {
            return p;
        }
        k += 1;
    }
}

fn release(path: &str) {
    if let Some(set) = OPEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(path);
    }
}

impl Timeline {
    pub fn open(template: &str, rank: u32, nranks: u32) -> Result<Timeline> {
        let path = reserve(&rank_path(template, rank, nranks));
        let opened = File::create(&path).and_then(|f| {
            let mut file = BufWriter::new(f);
            let meta = serde_json::json!({
                "name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                "args": {"name": format!("acspeed rank {rank}")}
            });
            writeln!(file, "[\n{meta},")?;
            file.flush()?;
            Ok(file)
        });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                release(&path);
                return Err(Error::io(format!("ACSPEED_TIMELINE: writing {path}"), e));
            }
        };
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0);
        Ok(Timeline {
            out: Mutex::new(Some(Out {
                file,
                flushed: Instant::now(),
            })),
            path,
            epoch_us,
            t0: Instant::now(),
            rank,
        })
    }

    /// The file this timeline writes.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Closes the array and flushes the file; later events are dropped. Idempotent.
    pub fn finish(&self) {
        let Some(mut out) = self.out.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // A last instant event absorbs the trailing comma, so the file is strict JSON.
        let end = serde_json::json!({"name": "acspeed_end", "ph": "i", "s": "p", "pid": self.rank, "tid": 0, "ts": self.us(Instant::now())});
        let _ = writeln!(out.file, "{end}\n]");
        let _ = out.file.flush();
        release(&self.path);
    }

    fn us(&self, t: Instant) -> f64 {
        self.epoch_us + t.saturating_duration_since(self.t0).as_secs_f64() * 1e6
    }

    /// A complete event ("X") from `start` to `end` with `args`. Write errors are ignored:
    /// a full disk must not fail the training step (the file then ends early).
    pub fn complete(&self, name: &str, start: Instant, end: Instant, args: serde_json::Value) {
        self.complete_on(0, name, start, end, args)
    }

    /// The same on thread row `tid` (a collective's phases: one row per lane, from 1).
    pub fn complete_on(
        &self,
        tid: u32,
        name: &str,
        start: Instant,
        end: Instant,
        args: serde_json::Value,
    ) {
        let ev = serde_json::json!({
            "name": name, "cat": "acspeed", "ph": "X", "pid": self.rank, "tid": tid,
            "ts": self.us(start), "dur": end.saturating_duration_since(start).as_secs_f64() * 1e6,
            "args": args,
        });
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(out) = out.as_mut() {
            let _ = writeln!(out.file, "{ev},");
            if out.flushed.elapsed() >= FLUSH_EVERY {
                let _ = out.file.flush();
                out.flushed = Instant::now();
            }
        }
    }
}

/// The peers a collective exchanged data with: rank, bytes sent and received, and the
/// milliseconds this rank waited on that peer (where a slow peer or link shows).
pub fn peer_rows(st: &acspeed_core::executor::PeerStats) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = (0..st.sent.len())
        .filter(|&q| st.sent[q] > 0 || st.recv[q] > 0)
        .map(|q| {
            serde_json::json!({
                "rank": q, "sent": st.sent[q], "recv": st.recv[q],
                "wait_ms": (st.wait[q].as_secs_f64() * 1e6).round() / 1e3,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_per_rank_are_strict_json_with_complete_events() {
        assert_eq!(rank_path("t.json", 0, 1), "t.json");
        assert_eq!(rank_path("t.json", 3, 4), "t-r3.json");
        assert_eq!(rank_path("trace", 1, 2), "trace-r1");
        let dir = std::env::temp_dir().join(format!("acspeed-tl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.json");
        {
            let t = Timeline::open(p.to_str().unwrap(), 0, 1).unwrap();
            let a = Instant::now();
            t.complete(
                "allreduce",
                a,
                a + std::time::Duration::from_micros(250),
                serde_json::json!({"bytes": 4}),
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let evs = v.as_array().unwrap();
        let x = evs.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!(x["name"], "allreduce");
        assert!((x["dur"].as_f64().unwrap() - 250.0).abs() < 1.0);
        assert!(x["ts"].as_f64().unwrap() > 1.6e15, "epoch microseconds");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_timeline_of_the_same_rank_gets_its_own_file_and_finish_closes_it() {
        let dir = std::env::temp_dir().join(format!("acspeed-tl2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tpl = dir.join("t.json");
        let tpl = tpl.to_str().unwrap();
        let a = Timeline::open(tpl, 1, 2).unwrap();
        let b = Timeline::open(tpl, 1, 2).unwrap();
        assert!(a.path().ends_with("t-r1.json"), "{}", a.path());
        assert!(b.path().ends_with("t-r1-1.json"), "{}", b.path());
        let t = Instant::now();
        a.complete("allreduce", t, t, serde_json::json!({}));
        // Finished while still alive (a torch backend's shutdown): strict JSON on disk now,
        // and later events are dropped rather than written after the "]".
        a.finish();
        a.complete("late", t, t, serde_json::json!({}));
        let text = std::fs::read_to_string(a.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v.as_array().unwrap().iter().all(|e| e["name"] != "late"));
        // Its name is free again once finished.
        let c = Timeline::open(tpl, 1, 2).unwrap();
        assert_eq!(c.path(), a.path());
        drop((b, c));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
