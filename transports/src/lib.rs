//! # acspeed-transports
//!
//! Implementations of `acspeed_core::Transport`. A transport only moves byte ranges between
//! ranks in FIFO order per pair and checks frame headers; it knows nothing of algorithms
//! (this crate must never depend on `acspeed-algorithms`).
//!
//! * [`tcp`]: one connection per peer, writer and reader threads that move bytes straight
//!   from and into the caller's memory; [`connect`] builds the authenticated mesh.

pub mod connect;
pub mod tcp;
mod wire;

pub use connect::{establish, listen};
pub use tcp::TcpTransport;
