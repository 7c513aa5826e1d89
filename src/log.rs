//! Minimal leveled logging to stderr (`ACSPEED_DEBUG`), prefixed with the rank like NCCL_DEBUG.

use acspeed_core::config::LogLevel;

#[derive(Clone, Copy, Debug)]
pub struct Logger {
    level: LogLevel,
    rank: u32,
}

impl Logger {
    pub fn new(level: LogLevel, rank: u32) -> Self {
        Logger { level, rank }
    }
    fn emit(&self, at: LogLevel, tag: &str, msg: &str) {
        if self.level >= at {
            // One write per line: eprintln! may issue several, and ranks sharing a terminal
            // then interleave character by character.
            use std::io::Write;
            let line = format!("acspeed[{}] {tag} {msg}\n", self.rank);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
    pub fn warn(&self, msg: &str) {
        self.emit(LogLevel::Warn, "WARN", msg)
    }
    pub fn info(&self, msg: &str) {
        self.emit(LogLevel::Info, "INFO", msg)
    }
    pub fn trace(&self, msg: &str) {
        self.emit(LogLevel::Trace, "TRACE", msg)
    }
}

pub fn log_enabled(l: &Logger, at: LogLevel) -> bool {
    l.level >= at
}
