//! RDMA through libfabric (feature `rdma`): one reliable-datagram endpoint (`FI_EP_RDM`) per
//! rank, tagged messages, completions polled by [`Transport::progress`]. Runs on verbs and EFA
//! providers on real hardware and, for tests on machines without RDMA NICs, on libfabric's
//! `tcp;ofi_rxm` provider, so the same code path runs in CI.
//!
//! Matching: each message is tagged `sender rank << 40 | per-pair counter`, so messages
//! between a pair match in posting order (the FIFO contract) without directed receives.
//! The frame header does not travel as bytes: a fingerprint of it goes as remote CQ data and
//! a receiver whose call differs gets a `Mismatch` error naming the sender; a message longer
//! than the posted buffer (truncation) is a mismatch too. The fingerprint is as wide as the
//! provider's CQ data (`cq_data_size`: 8 bytes on tcp;ofi_rxm, 4 on verbs and EFA), less one
//! bit that marks abort notices; a provider without CQ data is refused at open (so
//! `ACSPEED_RDMA=auto` falls back to TCP).

use acspeed_core::{Error, FrameHeader, OpHandle, Rank, Result, Transport};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[repr(C)]
struct AcsEp {
    _opaque: [u8; 0],
}

/// Must match `struct acs_ctx` in shim.c (fi_context2 = 8 pointers).
#[repr(C)]
struct AcsCtx {
    fi: [*mut c_void; 8],
    mr: *mut c_void,
    id: u64,
}

// SAFETY: the context is plain memory handed to the provider; the shim only touches it from
// calls made under the transport lock.
unsafe impl Send for AcsCtx {}

extern "C" {
    fn acs_open(
        prov: *const c_char,
        out: *mut *mut AcsEp,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn acs_close(e: *mut AcsEp);
    fn acs_provider(e: *mut AcsEp) -> *const c_char;
    fn acs_cq_data_size(e: *mut AcsEp) -> usize;
    fn acs_name(e: *mut AcsEp, buf: *mut c_void, len: *mut usize) -> c_int;
    fn acs_insert(e: *mut AcsEp, addr: *const c_void, fi_addr: *mut u64) -> c_int;
    fn acs_send(
        e: *mut AcsEp,
        buf: *const c_void,
        len: usize,
        dest: u64,
        tag: u64,
        data: u64,
        c: *mut AcsCtx,
    ) -> c_int;
    fn acs_recv(
        e: *mut AcsEp,
        buf: *mut c_void,
        len: usize,
        src: u64,
        tag: u64,
        c: *mut AcsCtx,
    ) -> c_int;
    fn acs_poll(
        e: *mut AcsEp,
        ids: *mut u64,
        lens: *mut u64,
        datas: *mut u64,
        max: c_int,
        err_id: *mut u64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn acs_cancel(e: *mut AcsEp, c: *mut AcsCtx) -> c_int;
}

const FI_EAGAIN: c_int = 11;
const FI_ETRUNC: c_int = 265;

fn cstr(buf: &[c_char]) -> String {
    // SAFETY: the shim always NUL-terminates (snprintf).
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// An opened endpoint, before the peers are known.
pub struct RdmaEndpoint {
    ep: *mut AcsEp,
    /// Bytes of remote CQ data the fingerprint uses (1..=8).
    cq_bytes: usize,
}

// SAFETY: the endpoint is opened FI_THREAD_SAFE; all calls are serialised by the transport lock.
unsafe impl Send for RdmaEndpoint {}
unsafe impl Sync for RdmaEndpoint {}

impl RdmaEndpoint {
    /// Opens an RDM endpoint on `provider` (e.g. "verbs;ofi_rxm", "efa", "tcp;ofi_rxm"), or
    /// on whatever libfabric picks.
    pub fn open(provider: Option<&str>) -> Result<RdmaEndpoint> {
        let p = provider
            .map(|s| CString::new(s).map_err(|_| Error::invalid("bad provider name")))
            .transpose()?;
        let mut ep = std::ptr::null_mut();
        let mut err = [0 as c_char; 256];
        // SAFETY: out-pointer and buffer are valid; the shim cleans up on failure.
        let rc = unsafe {
            acs_open(
                p.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                &mut ep,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            return Err(Error::invalid(format!(
                "libfabric endpoint on provider {}: {}",
                provider.unwrap_or("(any)"),
                cstr(&err)
            )));
        }
        // SAFETY: the endpoint is open.
        let offered = unsafe { acs_cq_data_size(ep) };
        let e = RdmaEndpoint {
            ep,
            cq_bytes: offered.min(8),
        };
        if offered == 0 {
            return Err(Error::invalid(format!(
                "libfabric provider {} offers no remote CQ data, which acspeed's RDMA path carries each message's header fingerprint in (ACSPEED_RDMA=auto falls back to TCP)",
                e.provider()
            )));
        }
        Ok(e)
    }

    /// Uses at most `bytes` (1..=8) of the provider's CQ data (`ACSPEED_RDMA_CQ_DATA_BYTES`):
    /// every rank of a job must use the same width.
    pub fn limit_cq_data(mut self, bytes: Option<usize>) -> Self {
        if let Some(b) = bytes {
            self.cq_bytes = self.cq_bytes.min(b.clamp(1, 8));
        }
        self
    }

    /// The provider libfabric chose ("tcp;ofi_rxm", "verbs;ofi_rxm", "efa", ...).
    pub fn provider(&self) -> String {
        // SAFETY: the endpoint is open; the string lives as long as it.
        unsafe { CStr::from_ptr(acs_provider(self.ep)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Providers that are emulations over sockets rather than RDMA hardware.
    pub fn is_emulated(&self) -> bool {
        let p = self.provider();
        ["tcp", "sockets", "udp", "shm", "net"]
            .iter()
            .any(|e| p.split(';').next() == Some(e))
    }

    /// The endpoint's address, to publish through the rendezvous.
    pub fn name(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: buffer and length are valid.
        let rc = unsafe { acs_name(self.ep, buf.as_mut_ptr() as *mut c_void, &mut len) };
        if rc != 0 {
            return Err(Error::invalid(format!("fi_getname failed ({rc})")));
        }
        buf.truncate(len);
        Ok(buf)
    }
}

impl Drop for RdmaEndpoint {
    fn drop(&mut self) {
        // SAFETY: opened by acs_open, closed once.
        unsafe { acs_close(self.ep) }
    }
}

struct Pending {
    handle: OpHandle,
    ctx: Box<AcsCtx>,
    peer: Rank,
    /// The abort channel: a receive of the peer's abort reason (into `buf`), or a send of
    /// ours (from `buf`).
    watch: bool,
    buf: Option<Box<[u8]>>,
    /// For receives: (header fingerprint, expected length, header for messages).
    expect: Option<(u64, u64, FrameHeader)>,
}

struct State {
    ops: HashMap<u64, Pending>,
    next_id: u64,
    send_seq: Vec<u64>,
    recv_seq: Vec<u64>,
    aborted: bool,
    broken: Option<String>,
    /// Peers that aborted or closed, with their reason (from the abort channel).
    gone: Vec<Option<String>>,
}

/// RDMA transport to the peers whose addresses were inserted.
pub struct RdmaTransport {
    rank: Rank,
    nranks: u32,
    ep: RdmaEndpoint,
    addr: Vec<Option<u64>>,
    state: Mutex<State>,
    /// Bits of a fingerprint: the CQ data width less the abort bit above them.
    fp_bits: u32,
}

/// Message counters per pair use the low 39 bits of a tag; bit 39 is the abort channel: each
/// rank keeps one receive posted per peer on it, so a peer's abort reaches it at once, whatever
/// it is doing (also while a send to that peer is refused with EAGAIN: tcp;ofi_rxm did that
/// for 30 s after the peer left).
const SEQ_MASK: u64 = (1 << 39) - 1;
const ABORT_TAG: u64 = 1 << 39;
/// Longest abort reason carried.
const MAX_REASON: usize = 256;

/// Remote CQ data of an abort notice in `fp_bits`-bit fingerprints: the bit above them.
fn abort_mark(fp_bits: u32) -> u64 {
    1 << fp_bits
}

/// The fingerprint folded into `bits` bits (xor of the 64-bit hash's slices, so every field
/// still moves it).
fn fold(fp: u64, bits: u32) -> u64 {
    if bits >= 64 {
        return fp;
    }
    let mask = (1u64 << bits) - 1;
    let (mut x, mut out) = (fp, 0);
    while x != 0 {
        out ^= x & mask;
        x >>= bits;
    }
    out
}

/// FNV-1a over the header fields: what must agree between sender and receiver.
fn fingerprint(h: &FrameHeader) -> u64 {
    let mut x: u64 = 0xcbf29ce484222325;
    for v in [
        h.seq,
        h.coll as u64,
        h.dtype as u64,
        h.op as u64,
        h.algo as u64,
        h.channel as u64,
        h.root as u64,
        h.count,
        h.len,
    ] {
        for b in v.to_le_bytes() {
            x ^= b as u64;
            x = x.wrapping_mul(0x100000001b3);
        }
    }
    x >> 1 // never ~0 (the "no data" marker)
}

impl RdmaTransport {
    /// `peers[q]` is rank q's published address (`None`: no RDMA path to q).
    pub fn connect(
        rank: Rank,
        ep: RdmaEndpoint,
        peers: &[Option<Vec<u8>>],
    ) -> Result<RdmaTransport> {
        let mut addr = Vec::with_capacity(peers.len());
        for (q, p) in peers.iter().enumerate() {
            match p {
                Some(name) if q != rank.idx() => {
                    let mut a = 0u64;
                    // SAFETY: name holds a provider address as published by fi_getname.
                    let rc = unsafe { acs_insert(ep.ep, name.as_ptr() as *const c_void, &mut a) };
                    if rc != 0 {
                        return Err(Error::Remote {
                            rank: q as u32,
                            detail: format!("its RDMA address was rejected by fi_av_insert ({rc})"),
                        });
                    }
                    addr.push(Some(a));
                }
                _ => addr.push(None),
            }
        }
        let n = peers.len();
        let fp_bits = (ep.cq_bytes * 8 - 1) as u32;
        let t = RdmaTransport {
            rank,
            nranks: n as u32,
            fp_bits,
            ep,
            addr,
            state: Mutex::new(State {
                ops: HashMap::new(),
                next_id: 1,
                send_seq: vec![0; n],
                recv_seq: vec![0; n],
                aborted: false,
                broken: None,
                gone: vec![None; n],
            }),
        };
        for q in 0..t.nranks {
            if let Some(src) = t.addr[q as usize] {
                t.watch(Rank(q), src)?;
            }
        }
        t.handshake(Duration::from_secs(60))?;
        Ok(t)
    }

    /// Posts the receive of `peer`'s abort reason on the abort channel.
    fn watch(&self, peer: Rank, src: u64) -> Result<()> {
        let mut buf = vec![0u8; MAX_REASON].into_boxed_slice();
        let ptr = buf.as_mut_ptr();
        let tag = (peer.0 as u64) << 40 | ABORT_TAG;
        // SAFETY: the buffer is kept in the pending entry (a Box: it does not move) until the
        // receive completes or the endpoint is closed.
        self.post_with(peer, None, Some(buf), |c| unsafe {
            acs_recv(self.ep.ep, ptr as *mut c_void, MAX_REASON, src, tag, c)
        })?;
        Ok(())
    }

    /// An empty message each way with every peer, so connections are made now. Providers
    /// like tcp;ofi_rxm connect lazily on the first send, synchronously; a ring rank that
    /// first sends to a peer in an abort notice, while that peer tears down, then blocked in
    /// connect() for 30 s (found in the RDMA tests). Every rank does this at the same point,
    /// so the pairs' message counters stay in step.
    fn handshake(&self, within: Duration) -> Result<()> {
        let hello = FrameHeader::default();
        let mut hs = Vec::new();
        for q in 0..self.nranks {
            if self.addr[q as usize].is_none() {
                continue;
            }
            // SAFETY: empty messages: no memory is read or written.
            unsafe {
                hs.push(self.post_recv(Rank(q), hello, std::ptr::null_mut())?);
                hs.push(self.post_send(Rank(q), hello, std::ptr::null(), 0)?);
            }
        }
        let deadline = Instant::now() + within;
        let what = || "the RDMA connection handshake".to_string();
        for h in &hs {
            h.wait_driven(deadline, within, &what, &|| self.progress())?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer_addr(&self, q: Rank) -> Result<u64> {
        self.addr.get(q.idx()).copied().flatten().ok_or_else(|| {
            Error::invalid(format!("rank {q} has no RDMA path from rank {}", self.rank))
        })
    }

    /// Posts with `f`, retrying while the provider asks to (polling completions meanwhile).
    fn post(
        &self,
        peer: Rank,
        expect: Option<(u64, u64, FrameHeader)>,
        f: impl Fn(*mut AcsCtx) -> c_int,
    ) -> Result<OpHandle> {
        self.post_with(peer, expect, None, f)
    }

    /// The error for a peer that left through the abort channel.
    fn gone_err(peer: Rank, why: &str) -> Error {
        Error::Remote {
            rank: peer.0,
            detail: format!("aborted: {why}"),
        }
    }

    /// As `post`; `watch_buf` makes it an abort-channel receive into that buffer.
    fn post_with(
        &self,
        peer: Rank,
        expect: Option<(u64, u64, FrameHeader)>,
        watch_buf: Option<Box<[u8]>>,
        f: impl Fn(*mut AcsCtx) -> c_int,
    ) -> Result<OpHandle> {
        let mut st = self.lock();
        if st.aborted {
            return Err(Error::Aborted("RDMA transport aborted".into()));
        }
        if let Some(b) = &st.broken {
            return Err(Error::Aborted(b.clone()));
        }
        if let Some(why) = &st.gone[peer.idx()] {
            return Err(Self::gone_err(peer, why));
        }
        let id = st.next_id;
        st.next_id += 1;
        let mut ctx = Box::new(AcsCtx {
            fi: [std::ptr::null_mut(); 8],
            mr: std::ptr::null_mut(),
            id,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rc = f(&mut *ctx);
            if rc == 0 {
                break;
            }
            if rc != -FI_EAGAIN || Instant::now() > deadline {
                return Err(Error::Remote {
                    rank: peer.0,
                    detail: format!("posting an RDMA operation failed (fi_errno {})", -rc),
                });
            }
            self.poll_locked(&mut st);
            // While the provider refuses, any peer's abort ends the wait: the job is failing,
            // and the refusal may be the dead connection itself (tcp;ofi_rxm drops one on a
            // truncated receive, and the refusing peer's own notice is lost with it).
            if let Some((q, why)) = st
                .gone
                .iter()
                .enumerate()
                .find_map(|(q, g)| g.as_ref().map(|w| (q, w)))
            {
                return Err(Self::gone_err(Rank(q as u32), why));
            }
        }
        let handle = OpHandle::new(peer);
        st.ops.insert(
            id,
            Pending {
                handle: handle.clone(),
                ctx,
                peer,
                watch: watch_buf.is_some(),
                buf: watch_buf,
                expect,
            },
        );
        Ok(handle)
    }

    /// A peer's abort reason arrived: remember it (new posts to it fail, and so does a post
    /// the provider keeps refusing) and cancel the receives posted from it, which then
    /// complete with its reason. Sends already handed to the provider end as it decides.
    fn peer_gone(&self, st: &mut State, peer: Rank, why: String) {
        st.gone[peer.idx()] = Some(why);
        for p in st.ops.values_mut() {
            if p.peer == peer && !p.watch && p.expect.is_some() {
                // SAFETY: the context is one we posted and still own.
                unsafe { acs_cancel(self.ep.ep, &mut *p.ctx) };
            }
        }
    }

    fn poll_locked(&self, st: &mut State) -> bool {
        let mut moved = false;
        loop {
            let (mut ids, mut lens, mut datas) = ([0u64; 64], [0u64; 64], [0u64; 64]);
            let mut err_id = 0u64;
            let mut err = [0 as c_char; 256];
            // SAFETY: arrays of 64 entries and an error buffer, as the shim expects.
            let n = unsafe {
                acs_poll(
                    self.ep.ep,
                    ids.as_mut_ptr(),
                    lens.as_mut_ptr(),
                    datas.as_mut_ptr(),
                    64,
                    &mut err_id,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            if n == 0 {
                return moved;
            }
            moved = true;
            if n < 0 {
                let msg = cstr(&err);
                match st.ops.remove(&err_id) {
                    // An abort-channel operation cancelled at close (or failed): not news.
                    Some(p) if p.watch => {}
                    Some(p) => {
                        let e = if let Some(why) = &st.gone[p.peer.idx()] {
                            Self::gone_err(p.peer, why)
                        } else if -n == FI_ETRUNC {
                            Error::Mismatch { peer: p.peer.0, detail: format!("rank {}'s message does not match this rank's call: it is longer than the {} bytes expected (different collective, count or dtype; {msg})", p.peer, p.expect.map_or(0, |e| e.1)) }
                        } else {
                            Error::Remote {
                                rank: p.peer.0,
                                detail: format!("RDMA operation failed: {msg}"),
                            }
                        };
                        p.handle.complete(Err(e));
                    }
                    None => st.broken = Some(format!("RDMA completion queue error: {msg}")),
                }
                continue;
            }
            for i in 0..n as usize {
                let Some(p) = st.ops.remove(&ids[i]) else {
                    continue;
                };
                if p.watch {
                    let b = p.buf.as_deref().unwrap_or(&[]);
                    let n = (lens[i] as usize).min(b.len());
                    let why = String::from_utf8_lossy(&b[..n]).into_owned();
                    self.peer_gone(st, p.peer, why);
                    continue;
                }
                // Only the CQ data's width is defined; "no data" (~0) stays a mismatch.
                let data = datas[i] & ((abort_mark(self.fp_bits) << 1).wrapping_sub(1));
                let r = match p.expect {
                    Some(_) if data == abort_mark(self.fp_bits) => Err(Error::Remote { rank: p.peer.0, detail: "aborted (it hit an error; see its log)".into() }),
                    Some((fp, len, hdr)) if data != fp || lens[i] != len => Err(Error::Mismatch {
                        peer: p.peer.0,
                        detail: format!(
                            "rank {}'s message ({} bytes) does not match this rank's {} #{} of {} elements ({} bytes): different collective, count or dtype",
                            p.peer,
                            lens[i],
                            acspeed_core::Collective::name_of_code(hdr.coll),
                            hdr.seq,
                            hdr.count,
                            len
                        ),
                    }),
                    _ => Ok(()),
                };
                p.handle.complete(r);
            }
        }
    }
}

impl Transport for RdmaTransport {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn nranks(&self) -> u32 {
        self.nranks
    }
    fn name(&self, _peer: Rank) -> String {
        match self.ep.cq_bytes {
            8 => format!("rdma/{}", self.ep.provider()),
            b => format!("rdma/{} (cq data {b} B)", self.ep.provider()),
        }
    }

    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<OpHandle> {
        let dest = self.peer_addr(to)?;
        let hdr = FrameHeader {
            len: len as u64,
            ..hdr
        };
        let tag = {
            let mut st = self.lock();
            let t = st.send_seq[to.idx()];
            st.send_seq[to.idx()] += 1;
            (self.rank.0 as u64) << 40 | (t & SEQ_MASK)
        };
        let fp = fold(fingerprint(&hdr), self.fp_bits);
        // SAFETY: post_send's contract keeps data valid until the completion.
        self.post(to, None, |c| unsafe {
            acs_send(self.ep.ep, data as *const c_void, len, dest, tag, fp, c)
        })
    }

    unsafe fn post_recv(&self, from: Rank, hdr: FrameHeader, data: *mut u8) -> Result<OpHandle> {
        let src = self.peer_addr(from)?;
        let tag = {
            let mut st = self.lock();
            let t = st.recv_seq[from.idx()];
            st.recv_seq[from.idx()] += 1;
            (from.0 as u64) << 40 | (t & SEQ_MASK)
        };
        let expect = Some((fold(fingerprint(&hdr), self.fp_bits), hdr.len, hdr));
        // SAFETY: post_recv's contract keeps data valid until the completion.
        self.post(from, expect, |c| unsafe {
            acs_recv(
                self.ep.ep,
                data as *mut c_void,
                hdr.len as usize,
                src,
                tag,
                c,
            )
        })
    }

    fn needs_progress(&self) -> bool {
        true
    }

    fn progress(&self) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        self.poll_locked(&mut st)
    }

    fn abort(&self, reason: &str) {
        let mut st = self.lock();
        if st.aborted {
            return;
        }
        st.aborted = true;
        // Tell every peer why, on the abort channel: the receive each keeps posted there
        // completes at once, whatever that peer is doing.
        let why: Box<[u8]> = reason.as_bytes()[..reason.len().min(MAX_REASON)].into();
        let mut notices = Vec::new();
        for (q, a) in self.addr.iter().enumerate() {
            let Some(dest) = a else { continue };
            let tag = (self.rank.0 as u64) << 40 | ABORT_TAG;
            let id = st.next_id;
            st.next_id += 1;
            let mut ctx = Box::new(AcsCtx {
                fi: [std::ptr::null_mut(); 8],
                mr: std::ptr::null_mut(),
                id,
            });
            let buf = why.clone();
            // SAFETY: the reason and the context stay alive in the pending entry (Boxes do not
            // move) until the send completes or the endpoint closes.
            if unsafe {
                acs_send(
                    self.ep.ep,
                    buf.as_ptr() as *const c_void,
                    buf.len(),
                    *dest,
                    tag,
                    abort_mark(self.fp_bits),
                    &mut *ctx,
                )
            } == 0
            {
                st.ops.insert(
                    id,
                    Pending {
                        handle: OpHandle::new(Rank(q as u32)),
                        ctx,
                        peer: Rank(q as u32),
                        watch: false,
                        buf: Some(buf),
                        expect: None,
                    },
                );
                notices.push(id);
            }
        }
        let until = Instant::now() + Duration::from_millis(300);
        while notices.iter().any(|id| st.ops.contains_key(id)) && Instant::now() < until {
            if !self.poll_locked(&mut st) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Cancel everything posted, then wait (bounded) until the provider has let go of the
        // caller's buffers.
        for p in st.ops.values_mut() {
            // SAFETY: the context is one we posted and is still owned by us.
            unsafe { acs_cancel(self.ep.ep, &mut *p.ctx) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !st.ops.is_empty() && Instant::now() < deadline {
            if !self.poll_locked(&mut st) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for (_, p) in st.ops.drain() {
            p.handle.complete(Err(Error::Aborted(reason.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_fold_into_the_cq_data_width() {
        let h = |count| FrameHeader {
            seq: 7,
            coll: 1,
            dtype: 0,
            op: 0,
            algo: 0,
            channel: 0,
            root: 0,
            count,
            len: count * 4,
        };
        let (a, b) = (fingerprint(&h(100)), fingerprint(&h(200)));
        // 8 bytes: the 63-bit fingerprint itself, below the abort bit.
        assert_eq!(fold(a, 63), a);
        assert!(a < abort_mark(63));
        for bits in [7, 15, 31] {
            let (fa, fb) = (fold(a, bits), fold(b, bits));
            assert!(fa < abort_mark(bits) && fb < abort_mark(bits), "{bits}");
            assert_ne!(fa, fb, "{bits} bits: counts 100 and 200 must still differ");
        }
        assert_eq!(fold(a, 64), a);
    }
}
