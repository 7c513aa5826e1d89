//! The one error type of acspeed, classified by what the caller can do about it.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure acspeed reports. Variants name the rank and operation involved so the user
/// can find the stuck or faulty process without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call was wrong (bad size, dtype/op pair, rank out of range, bad env var). Fix the call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Ranks disagree about the collective they are running (different op, count or dtype).
    /// The job is inconsistent; the communicator is poisoned.
    #[error("mismatch with rank {peer}: {detail}")]
    Mismatch { peer: u32, detail: String },

    /// A peer failed or went away. `rank` is the peer.
    #[error("rank {rank} failed: {detail}")]
    Remote { rank: u32, detail: String },

    /// Nothing arrived from `rank` within the configured timeout.
    #[error("timed out after {}s waiting for rank {rank} during {what} (raise ACSPEED_TIMEOUT_SECS if the job is just slow)", .after.as_secs_f64())]
    Timeout {
        rank: u32,
        what: String,
        after: Duration,
    },

    /// The communicator was poisoned by an earlier error or shut down; create a new one.
    #[error("communicator aborted: {0}")]
    Aborted(String),

    /// An operating-system I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A plan failed verification (a bug in an algorithm or a bad plan file).
    #[error("invalid plan: {0}")]
    Plan(String),

    /// The GPU (its driver, a copy or an allocation on it) failed on this rank. The
    /// communicator is aborted, so the peers fail at once naming this rank.
    #[error("device error: {0}")]
    Device(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy suitable for fanning one failure out to many waiters (io::Error is not Clone).
    pub fn duplicate(&self) -> Self {
        match self {
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
            Error::Mismatch { peer, detail } => Error::Mismatch {
                peer: *peer,
                detail: detail.clone(),
            },
            Error::Remote { rank, detail } => Error::Remote {
                rank: *rank,
                detail: detail.clone(),
            },
            Error::Timeout { rank, what, after } => Error::Timeout {
                rank: *rank,
                what: what.clone(),
                after: *after,
            },
            Error::Aborted(s) => Error::Aborted(s.clone()),
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Plan(s) => Error::Plan(s.clone()),
            Error::Device(s) => Error::Device(s.clone()),
        }
    }

    /// Short machine-readable class name (used in frames and by the Python exception mapping).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Mismatch { .. } => "mismatch",
            Error::Remote { .. } => "remote",
            Error::Timeout { .. } => "timeout",
            Error::Aborted(_) => "aborted",
            Error::Io { .. } => "io",
            Error::Plan(_) => "plan",
            Error::Device(_) => "device",
        }
    }
}
