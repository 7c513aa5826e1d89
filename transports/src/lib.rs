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
pub use shm::{HostStaging, ShmParams, ShmTransport, StagingParams};
#[cfg(not(loom))]
pub use tcp::TcpTransport;

#[cfg(not(loom))]
/// Fuzzing entry, not API: decodes `data` as a received frame header and checks it against a
/// posted receive as the TCP reader does. Must return (never panic) for any input.
#[doc(hidden)]
pub fn fuzz_frame(data: &[u8]) -> bool {
    let Ok(b) = <&[u8; wire::FRAME_LEN]>::try_from(data.get(..wire::FRAME_LEN).unwrap_or(&[]))
    else {
        return false;
    };
    let Some((_, got, stripe)) = wire::decode(b) else {
        return false;
    };
    let want = acspeed_core::FrameHeader {
        len: stripe.len.min(got.len),
        ..got
    };
    want.check(&got, acspeed_core::Rank(1)).is_ok()
}
