//! # acspeed
//!
//! Collective communication for data-parallel training. This crate is the runtime a training
//! job links: the [`Communicator`] (rendezvous, connection set-up, the policy that chooses each
//! call's algorithm, plan cache, execution), the control plane and device staging. The
//! command-line tools (`acspeed`, `acspeed-bench`) live in `acspeed-tools`. The pieces live in
//! their own crates:
//! `acspeed-core` (types, plan IR, verifier, executor, `Transport` trait),
//! `acspeed-algorithms` (pure plan generators) and `acspeed-transports` (TCP, ...).
//!
//! ```no_run
//! // Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set):
//! let comm = acspeed::init_from_env()?;
//! let mut grads = vec![1.0f32; 1 << 20];
//! comm.allreduce(&mut grads, acspeed::ReduceOp::Sum)?;
//! # Ok::<(), acspeed::Error>(())
//! ```

pub mod autotune;
mod book;
pub mod call_stats;
pub mod comm;
mod control;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_device;
pub mod element;
pub mod facts;
pub mod init;
pub mod linearity;
pub mod log;
pub mod model;
pub mod paths;
pub mod policy;
pub mod probe;
pub mod selector;
pub mod staging;
pub mod store;
pub mod timeline;

pub use acspeed_algorithms::Algorithm;
pub use acspeed_core::{Config, DType, Error, LaunchEnv, ReduceOp, Result};
pub use comm::{CommExchange, Communicator, DeviceRun};
pub use element::Element;
pub use init::{init, init_from_env, init_with_store};
