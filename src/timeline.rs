//! `ACSPEED_TIMELINE=path.json`: every collective as a Chrome-trace event, so Perfetto,
//! chrome://tracing and trace analysers that only know GPU kernels can see CPU and TCP
//! collectives next to them.
//!
//! One file per rank (`path.json` for a one-rank job, else `path-r<rank>.json`), in the
//! trace-event JSON array format: "[" then one event per line. Timestamps are microseconds
//! since the Unix epoch, so the files of ranks on one machine line up when loaded together.
//! The closing "]" is written when the communicator is dropped; a rank that crashes leaves a
//! file without it, which the trace viewers accept.

use acspeed_core::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// An open trace file.
pub struct Timeline {
    out: Mutex<BufWriter<File>>,
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

impl Timeline {
    pub fn open(template: &str, rank: u32, nranks: u32) -> Result<Timeline> {
        let path = rank_path(template, rank, nranks);
        let f = File::create(&path)
            .map_err(|e| Error::io(format!("ACSPEED_TIMELINE: creating {path}"), e))?;
        let mut out = BufWriter::new(f);
        let meta = serde_json::json!({
            "name": "process_name", "ph": "M", "pid": rank, "tid": 0,
            "args": {"name": format!("acspeed rank {rank}")}
        });
        writeln!(out, "[\n{meta},")
            .map_err(|e| Error::io(format!("ACSPEED_TIMELINE: writing {path}"), e))?;
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0);
        Ok(Timeline {
            out: Mutex::new(out),
            epoch_us,
            t0: Instant::now(),
            rank,
        })
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
        let _ = writeln!(out, "{ev},");
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
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A last metadata event absorbs the trailing comma, so the file is strict JSON.
        let end = serde_json::json!({"name": "acspeed_end", "ph": "i", "s": "p", "pid": self.rank, "tid": 0, "ts": self.us(Instant::now())});
        let _ = writeln!(out, "{end}\n]");
        let _ = out.flush();
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
}
