//! The repository's integration-test binary (one binary, modules by theme), built by acspeed-tools.

/// A file under tests/fixtures, by absolute path: the tests run from the tools package's
/// directory (they belong to acspeed-tools, which builds the binaries they drive).
macro_rules! fixture {
    ($p:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/", $p)
    };
}

mod util;

mod autotune;
mod cli;
mod control;
mod device_exec;
mod errors;
mod exec_props;
mod linearity;
mod matrix;
mod p2p;
mod policy;
mod schedule_stream;
mod simulate;
mod staging;
mod topology;
