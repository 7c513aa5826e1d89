//! Shared-memory transport between ranks on the same host.
//!
//! Each rank owns one region (an anonymous memfd, see [`segment`]) holding one incoming slot
//! ring per local peer (see [`ring`]). A send copies the caller's bytes into free slots of
//! the receiver's ring; a receive copies (or, for `post_recv_reduce`, *reduces*) straight out
//! of the slots into the caller's memory, so a reducing step touches the data once on each
//! side and never goes through scratch memory. No thread and no syscall sits on the data
//! path: bytes move when a waiter calls [`Transport::progress`] (the executor does while it
//! waits), the way NCCL's proxy polls step counters.
//!
//! Failure: an abort pushes a frame with the reason into every peer's ring; a peer process
//! that exits is noticed (its pid disappears) and named; anything else ends in the
//! executor's timeout naming the rank.

pub(crate) mod ring;
#[cfg(not(loom))]
mod segment;

#[cfg(not(loom))]
pub use engine::{ShmParams, ShmTransport};

#[cfg(not(loom))]
mod engine;
#[cfg(not(loom))]
mod staging;
#[cfg(not(loom))]
pub use staging::{HostStaging, StagingParams, STREAM_FROM as STAGE_STREAM_FROM};
