//! The integration-test binary of the `acspeed` crate (one binary, modules by theme).

mod util;

mod autotune;
mod cli;
mod control;
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
