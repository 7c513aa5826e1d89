//! # acspeed-transports
//!
//! Implementations of `acspeed_core::Transport`. A transport only moves byte ranges between
//! ranks in FIFO order per pair and checks frame headers; it knows nothing of algorithms
//! (this crate must never depend on `acspeed-algorithms`).
//!
//! * [`shm`]: shared-memory slot rings between ranks on one host, moved by polling, with
//!   receive-side reduction straight out of the slots.
//! * [`tcp`]: one connection per peer, writer and reader threads that move bytes straight
//!   from and into the caller's memory; [`connect`] builds the authenticated mesh.

#[cfg(not(loom))]
pub mod connect;
#[cfg(not(loom))]
pub mod multi;
#[cfg(all(feature = "rdma", not(loom)))]
pub mod rdma;
pub mod shm;
#[cfg(not(loom))]
pub mod tcp;
#[cfg(not(loom))]
mod wire;

#[cfg(not(loom))]
pub use connect::{establish, listen};
#[cfg(not(loom))]
pub use multi::Multi;
#[cfg(not(loom))]
pub use shm::{ShmParams, ShmTransport};
#[cfg(not(loom))]
pub use tcp::TcpTransport;
