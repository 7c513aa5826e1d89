//! Test doubles, kept out of the runtime crates: they are dev-dependencies only, so nothing a
//! training job links carries them.
//!
//! - [`MemoryTransport`]: ranks as threads of one process, messages copied through per-pair
//!   mailboxes under the real transports' contract (algorithm, executor and schedule tests).
//! - [`HostStandIn`]: a staging device whose memory is host memory and whose copy queues are
//!   threads (the CUDA staging pipeline's tests on machines without a GPU).
//! - [`HostDevice`]: a device engine over host memory with threads as queues (the device
//!   executor's programs, run without a GPU).

mod device;
mod memory;
mod standin;

pub use device::HostDevice;
pub use memory::MemoryTransport;
pub use standin::{HostStandIn, StandInEvent};
