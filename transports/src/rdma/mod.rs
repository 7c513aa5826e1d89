//! RDMA through libfabric (feature `rdma`): one reliable-datagram endpoint (`FI_EP_RDM`) per
//! rank, tagged messages, completions polled by [`Transport::progress`]. Runs on verbs and EFA
//! providers on real hardware and, for tests on machines without RDMA NICs, on libfabric's
//! `tcp;ofi_rxm` provider, so the same code path runs in CI.
//!
//! Matching: each message is tagged `sender rank << 40 | per-pair counter`, so messages
//! between a pair match in posting order (the FIFO contract) without directed receives.
//! The frame header does not travel as bytes: a 64-bit fingerprint of it goes as remote CQ
//! data and a receiver whose call differs gets a `Mismatch` error naming the sender; a
//! message longer than the posted buffer (truncation) is a mismatch too.

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
        Ok(RdmaEndpoint { ep })
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
}

/// RDMA transport to the peers whose addresses were inserted.
pub struct RdmaTransport {
    rank: Rank,
    nranks: u32,
    ep: RdmaEndpoint,
    addr: Vec<Option<u64>>,
    state: Mutex<State>,
}

/// Remote CQ data of an abort notice (a fingerprint never has the top bit set).
const ABORT_MARK: u64 = 1 << 63;

/// FNV-1a over the header fields: what must agree between sender and receiver.
fn fingerprint(h: &FrameHeader) -> u64 {
    let mut x: u64 = 0xcbf29ce484222325;
    for v in [
        h.seq,
        h.coll as u64,
        h.dtype as u64,
        h.op as u64,
        h.algo as u64,
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
        Ok(RdmaTransport {
            rank,
            nranks: n as u32,
            ep,
            addr,
            state: Mutex::new(State {
                ops: HashMap::new(),
                next_id: 1,
                send_seq: vec![0; n],
                recv_seq: vec![0; n],
                aborted: false,
                broken: None,
            }),
        })
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
        let mut st = self.lock();
        if st.aborted {
            return Err(Error::Aborted("RDMA transport aborted".into()));
        }
        if let Some(b) = &st.broken {
            return Err(Error::Aborted(b.clone()));
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
        }
        let handle = OpHandle::new(peer);
        st.ops.insert(
            id,
            Pending {
                handle: handle.clone(),
                ctx,
                peer,
                expect,
            },
        );
        Ok(handle)
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
                    Some(p) => {
                        let e = if -n == FI_ETRUNC {
                            Error::Mismatch { peer: p.peer.0, detail: format!("rank {} sent a longer message than this rank's call expects ({msg})", p.peer) }
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
                let r = match p.expect {
                    Some(_) if datas[i] == ABORT_MARK => Err(Error::Remote { rank: p.peer.0, detail: "aborted (it hit an error; see its log)".into() }),
                    Some((fp, len, hdr)) if datas[i] != fp || lens[i] != len => Err(Error::Mismatch {
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
        format!("rdma/{}", self.ep.provider())
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
            (self.rank.0 as u64) << 40 | (t & ((1 << 40) - 1))
        };
        let fp = fingerprint(&hdr);
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
            (from.0 as u64) << 40 | (t & ((1 << 40) - 1))
        };
        let expect = Some((fingerprint(&hdr), hdr.len, hdr));
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
        // Tell every peer: an empty message with the abort mark completes (and fails) the
        // receive it has posted from us next, so it does not wait for its timeout.
        let mut notices = Vec::new();
        for (q, a) in self.addr.iter().enumerate() {
            let Some(dest) = a else { continue };
            let t = st.send_seq[q];
            st.send_seq[q] += 1;
            let tag = (self.rank.0 as u64) << 40 | (t & ((1 << 40) - 1));
            let id = st.next_id;
            st.next_id += 1;
            let mut ctx = Box::new(AcsCtx {
                fi: [std::ptr::null_mut(); 8],
                mr: std::ptr::null_mut(),
                id,
            });
            // SAFETY: an empty send; the context stays alive in `notices` until completion.
            if unsafe {
                acs_send(
                    self.ep.ep,
                    std::ptr::null(),
                    0,
                    *dest,
                    tag,
                    ABORT_MARK,
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
