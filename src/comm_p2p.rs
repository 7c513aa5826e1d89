//! Point-to-point traffic of a communicator: sends, receives from a given rank or from any
//! rank, and waits.

use super::Communicator;
use acspeed_core::{DType, Error, FrameHeader, OpHandle, Rank, Result};

/// Frame code of point-to-point messages (`Collective::name_of_code` knows it).
const P2P_CODE: u8 = 8;

impl Communicator {
    fn p2p_header(tag: u64, len: usize) -> FrameHeader {
        FrameHeader {
            seq: tag,
            coll: P2P_CODE,
            dtype: DType::U8 as u8,
            op: u8::MAX,
            algo: 0,
            channel: 0,
            root: 0,
            count: len as u64,
            len: len as u64,
        }
    }

    /// Point-to-point send of `len` bytes to `peer`, matched in order with the peer's
    /// `post_recv` from us (the tag must match too, or both sides get a mismatch error).
    /// Returns at once; wait with [`Communicator::wait`].
    ///
    /// Run point-to-point traffic on a communicator of its own: messages between two ranks
    /// form one ordered stream, so interleaving them differently with collectives on the two
    /// ranks is a mismatch.
    ///
    /// # Safety
    /// `data..data+len` must stay valid and unmodified until the handle completes.
    pub unsafe fn post_send(
        &self,
        peer: u32,
        tag: u64,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        self.check_usable()?;
        self.check_peer("send", peer)?;
        // SAFETY: forwarded under the caller's contract.
        unsafe {
            self.transport
                .post_send(Rank(peer), Self::p2p_header(tag, len), data, len)
        }
    }

    /// Point-to-point receive of exactly `len` bytes from `peer`; see [`Communicator::post_send`].
    ///
    /// # Safety
    /// `data..data+len` must stay valid and untouched until the handle completes.
    pub unsafe fn post_recv(
        &self,
        peer: u32,
        tag: u64,
        data: *mut u8,
        len: usize,
    ) -> Result<OpHandle> {
        self.check_usable()?;
        self.check_peer("recv", peer)?;
        // SAFETY: forwarded under the caller's contract.
        unsafe {
            self.transport
                .post_recv(Rank(peer), Self::p2p_header(tag, len), data)
        }
    }

    /// Waits for a point-to-point operation (driving transports that need polling). A failure
    /// poisons the communicator: the stream to that peer is in an unknown state.
    pub fn wait(&self, h: &OpHandle) -> Result<()> {
        let timeout = self.cfg.job.timeout;
        let deadline = std::time::Instant::now() + timeout;
        let what = || format!("send/recv with rank {}", h.peer());
        let r = if self.transport.needs_progress() {
            h.wait_driven(deadline, timeout, &what, &|| self.transport.progress())
        } else {
            h.wait(deadline, timeout, &what)
        };
        if let Err(e) = &r {
            *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            self.transport.abort(&e.to_string());
        }
        r
    }

    fn check_peer(&self, what: &str, peer: u32) -> Result<()> {
        if peer >= self.nranks || peer == self.rank {
            return Err(Error::invalid(format!("{what}: peer {peer} is not another rank of this {}-rank communicator (this is rank {})", self.nranks, self.rank)));
        }
        Ok(())
    }
}

impl Communicator {
    /// Receive of exactly `len` bytes with `tag` from whichever rank's point-to-point message
    /// arrives first: waits (up to the timeout) until some rank's next unclaimed message is a
    /// point-to-point message of this tag and length, then posts the receive from that rank.
    /// Returns the rank and the receive's handle. Ranks are tried in turn from the one after
    /// the last any-source sender, so no rank is starved.
    ///
    /// A message of another tag or length is left for a receive that names its rank.
    ///
    /// A rank that closed its communicator or died stops being a possible sender (messages it
    /// sent before are still delivered); the receive fails, naming them, once no other rank
    /// is left, and a timeout names them too.
    ///
    /// # Safety
    /// As [`Communicator::post_recv`].
    pub unsafe fn post_recv_any(
        &self,
        tag: u64,
        data: *mut u8,
        len: usize,
    ) -> Result<(u32, OpHandle)> {
        self.check_usable()?;
        if self.nranks < 2 {
            return Err(Error::invalid(
                "recv from any source: this communicator has no other rank",
            ));
        }
        let want = Self::p2p_header(tag, len);
        let deadline = std::time::Instant::now() + self.cfg.job.timeout;
        let first = self.next_any.load(std::sync::atomic::Ordering::Relaxed);
        let mut idle = 0u32;
        // Ranks that can send nothing more, with why.
        let mut gone: Vec<(u32, Error)> = Vec::new();
        loop {
            // An abort (or an earlier failure) ends the wait at once.
            self.check_usable()?;
            for k in 0..self.nranks {
                let q = (first + k) % self.nranks;
                if q == self.rank || gone.iter().any(|(r, _)| *r == q) {
                    continue;
                }
                let h = match self.transport.peek(Rank(q)) {
                    Ok(Some(h)) => h,
                    Ok(None) => continue,
                    // Another rank leaving (or crashing) does not stop the others sending.
                    Err(e @ Error::Remote { .. }) => {
                        gone.push((q, e));
                        if gone.len() + 1 == self.nranks as usize {
                            return Err(Self::all_gone(gone));
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if h.coll == P2P_CODE && h.seq == want.seq && h.len == want.len {
                    self.next_any
                        .store((q + 1) % self.nranks, std::sync::atomic::Ordering::Relaxed);
                    // SAFETY: forwarded under the caller's contract.
                    let handle = unsafe { self.post_recv(q, tag, data, len)? };
                    return Ok((q, handle));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    rank: self.rank,
                    what: format!(
                        "recv of {len} bytes with tag {tag} from any source: no rank sent one{}",
                        Self::gone_list(&gone)
                    ),
                    after: self.cfg.job.timeout,
                });
            }
            // Shared memory moves bytes only when polled: keep senders' slots draining.
            if self.transport.needs_progress() && self.transport.progress() {
                idle = 0;
            }
            idle = idle.saturating_add(1);
            if idle < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }

    /// The error of a receive from any source when no other rank can send any more: the one
    /// rank's own error, or every rank with its reason.
    fn all_gone(mut gone: Vec<(u32, Error)>) -> Error {
        if gone.len() == 1 {
            return gone.pop().expect("one").1;
        }
        let rank = gone.iter().map(|(r, _)| *r).max().unwrap_or(0);
        Error::Remote {
            rank,
            detail: format!(
                "recv from any source: no other rank can send any more ({})",
                gone.iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    /// ` (ranks gone: ...)` for a timeout message, or nothing.
    fn gone_list(gone: &[(u32, Error)]) -> String {
        if gone.is_empty() {
            return String::new();
        }
        let each: Vec<String> = gone.iter().map(|(_, e)| e.to_string()).collect();
        format!(
            " (and these ranks can send nothing more: {})",
            each.join("; ")
        )
    }
}
