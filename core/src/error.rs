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

/// This process's open-file limits (soft, hard). From getrlimit, which needs no descriptor
/// (reading /proc/self/limits fails once they have run out).
fn nofile_limits() -> (String, String) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return ("?".into(), "?".into());
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    (show(r.rlim_cur), show(r.rlim_max))
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// An OS error while doing `context`. Running out of file descriptors says which limit
    /// was hit and how to raise it (a rank holds sockets for its peers and streams).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let mut context = context.into();
        match source.raw_os_error() {
            // EMFILE: this process's limit.
            Some(24) => {
                let (soft, hard) = nofile_limits();
                let how = if soft != hard {
                    format!("raise it with `ulimit -n {hard}` in the shell that starts the job")
                } else {
                    "that is also the hard limit: raise both (as root `ulimit -Hn`, \
                     /etc/security/limits.conf; LimitNOFILE= or --ulimit nofile= for services \
                     and containers)"
                        .to_string()
                };
                context.push_str(&format!(
                    " (out of file descriptors: this process may hold {soft} (RLIMIT_NOFILE; \
                     hard limit {hard}); {how})"
                ));
            }
            // ENFILE: the whole system's.
            Some(23) => context
                .push_str(" (out of file descriptors system-wide: raise /proc/sys/fs/file-max)"),
            _ => {}
        }
        Error::Io { context, source }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors, the error names the limit, its value and how to raise it; other
    /// I/O errors keep their context as given.
    #[test]
    fn running_out_of_descriptors_names_the_limit() {
        let (soft, hard) = nofile_limits();
        assert!(soft != "?" && hard != "?", "getrlimit failed");
        let e = Error::io(
            "accepting connections",
            std::io::Error::from_raw_os_error(24),
        );
        let m = e.to_string();
        assert!(
            m.starts_with("accepting connections (out of file descriptors")
                && m.contains(&format!(
                    "may hold {soft} (RLIMIT_NOFILE; hard limit {hard})"
                ))
                && m.contains("ulimit -"),
            "{m}"
        );
        let m = Error::io("opening", std::io::Error::from_raw_os_error(23)).to_string();
        assert!(m.contains("/proc/sys/fs/file-max"), "{m}");
        let m = Error::io("reading x", std::io::Error::from_raw_os_error(2)).to_string();
        assert!(
            m.starts_with("reading x: ") && !m.contains("descriptors"),
            "{m}"
        );
    }
}
