//! # acspeed-core
//!
//! The foundations every other acspeed crate builds on, with no I/O of its own:
//! element types and SIMD reduction kernels, the **plan IR** and its symbolic **verifier**, the
//! **`Transport` trait**, the **executor** that runs a plan over any transport, typed
//! configuration parsed from `ACSPEED_*` variables, and the error type.
//!
//! The key design decision: *an algorithm is a plan generator, not a loop over sockets.* An
//! algorithm returns, for one rank, lanes of steps over chunk indices ([`plan::RankPlan`]);
//! the [`executor`] decides segment size and pipeline depth and moves bytes through a
//! [`transport::Transport`]. Because plans are data, they can be verified
//! ([`verify::verify`]), cached, dumped to files and replayed by a simulator; because
//! transports only see ranks and byte ranges, a plan runs unchanged over TCP, shared memory,
//! RDMA or the in-memory transport of `acspeed-testkit` used by tests.

pub mod config;
pub mod context;
pub mod device;
pub mod dtype;
pub mod error;
pub mod exec_stats;
pub mod executor;
pub mod kernels;
pub mod plan;
pub mod schedule;
pub mod sim;
pub mod topology;
pub mod transport;
pub mod verify;

pub use config::{Config, LaunchEnv};
pub use context::PlanContext;
pub use dtype::{DType, ReduceOp};
pub use error::{Error, Result};
pub use plan::{Buf, ChunkRef, Collective, Op, Peers, Rank, RankPlan};
pub use transport::{FrameHeader, HostStage, OpHandle, PinGuard, StageCall, StageIo, Transport};
