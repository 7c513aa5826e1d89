//! CPU-Reduce's host staging area: one shared region per host where the host's ranks meet for
//! `HostReduce` steps.
//!
//! A call's bytes are cut into segments dealt round-robin to `pipelines` independent slot
//! rings (one thread each). For each segment every member (1) copies its bytes into its input
//! area of the segment's slot, (2) once every member's input is in, reduces its own part of
//! the slot (a 1/L share of the elements, summing the inputs in member order, so the result
//! is bitwise the same whoever reduces it) into the slot's output, and (3) once every part is
//! reduced, copies the output back. Each pipeline thread runs the three stages software-
//! pipelined — copy in segment i, reduce i-1, copy out i-2 — over `slots` >= 3 slots, so the
//! stages of different segments overlap and no member waits for one it could skip ahead of.
//! `threads` > 1 splits a member's reduce part over a rayon pool.
//!
//! Synchronisation is by monotonic counters, one cache line per (pipeline, member): how many
//! of the pipeline's segments the member has copied in, reduced, and copied out. A slot is
//! reused only after every member copied its previous segment out. Every slot use carries the
//! call's sequence number and shape, so members on different calls fail with a `Mismatch`
//! naming the other rank instead of mixing data. A waiter that sees no progress checks that
//! the members it waits for are alive (a dead one is named within about 100 ms), and the
//! region's abort word carries the rank that aborted.

use super::engine::alive;
use super::segment::{self, Mapping};
use acspeed_core::{kernels, DType, Error, HostStage, Rank, ReduceOp, Result, StageCall, StageIo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: u64 = 0x6163_7370_6373_7467; // "acspcstg"
const PAGE: usize = 4096;
/// Header words: magic, abort word, then one pid per member.
const PIDS: usize = 8;
/// How long a member's abort reason may be: a length byte, then the text (in the reasons
/// area after the header page, one per member).
const REASON_LEN: usize = 256;

/// Shape of the staging area (the same on every member: it sizes the shared region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagingParams {
    /// Independent slot rings, each driven by its own thread per member.
    pub pipelines: usize,
    /// Slots per pipeline (at least 3: copy-in, reduce and copy-out in flight at once).
    pub slots: usize,
    /// Bytes per member per slot (one segment).
    pub seg_bytes: usize,
    /// Threads per member for its reduce part.
    pub threads: usize,
}

impl Default for StagingParams {
    fn default() -> Self {
        StagingParams {
            pipelines: 1,
            slots: 4,
            seg_bytes: 256 << 10,
            threads: 1,
        }
    }
}

/// Byte offsets of the region's parts for `l` members.
struct Layout {
    reasons: usize,
    counters: usize,
    tags: usize,
    data: usize,
    size: usize,
}

fn round_page(x: usize) -> usize {
    x.div_ceil(PAGE) * PAGE
}

impl StagingParams {
    fn layout(&self, l: usize) -> Layout {
        let reasons = PAGE;
        let counters = reasons + round_page(l * REASON_LEN);
        let tags = counters + round_page(self.pipelines * l * 64);
        let data = tags + round_page(self.pipelines * self.slots * l * 16);
        let size = data + self.pipelines * self.slots * (l + 1) * self.seg_bytes;
        Layout {
            reasons,
            counters,
            tags,
            data,
            size,
        }
    }
}

/// The host staging area as one member sees it.
pub struct HostStaging {
    group: Vec<Rank>,
    me: usize,
    p: StagingParams,
    lay: Layout,
    region: Mapping,
    /// Segments each pipeline has processed so far (the same on every member).
    done: Mutex<Vec<u64>>,
    pool: Option<rayon::ThreadPool>,
    _server: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Calls of at least this many bytes fill staging areas with streaming stores. Their lines
/// sit in the other members' caches from the last use, and taking them back with ordinary
/// stores made large calls bimodal (2 ranks, 2026-11-29 spot runs of acspeed-bench: 1.6 or
/// 7.5 GB/s at 64 MiB from run to run; streaming 4.3-4.7 in 4 of 4 runs). Smaller calls stay
/// in cache, where ordinary stores win.
pub const STREAM_FROM: usize = 4 << 20;

/// The copy that fills a staging area.
fn copier(stream: bool) -> unsafe fn(*const u8, *mut u8, usize) {
    if stream {
        kernels::copy::copy_nonoverlapping_stream
    } else {
        kernels::copy::copy_nonoverlapping
    }
}

/// Counter indices within a member's line.
const FILLED: usize = 0;
const REDUCED: usize = 1;
const DRAINED: usize = 2;
/// Members sleeping on any counter of this line.
const SLEEPERS: usize = 3;
const STAGE: [&str; 3] = [
    "copied its part in",
    "reduced its part",
    "copied the result out",
];

impl HostStaging {
    /// Sets up the area among `group` (global ranks of this host, ascending, this rank
    /// among them): the lowest rank creates the region and hands it to the others.
    pub fn connect(
        rank: Rank,
        group: &[u32],
        secret: &[u8; 16],
        mut p: StagingParams,
        timeout: Duration,
    ) -> Result<HostStaging> {
        let l = group.len();
        let me = group.iter().position(|g| *g == rank.0).ok_or_else(|| {
            Error::invalid(format!("staging: rank {rank} is not in group {group:?}"))
        })?;
        if !(2..=64).contains(&l) || p.pipelines == 0 || p.threads == 0 {
            return Err(Error::invalid(format!(
                "staging: {l} members, {} pipelines, {} threads (need 2..=64 members and at least one of each)",
                p.pipelines, p.threads
            )));
        }
        p.slots = p.slots.max(3);
        p.seg_bytes = round_page(p.seg_bytes.max(PAGE));
        let lay = p.layout(l);
        // The rendezvous socket is named after the secret: derive our own.
        let mut sec = *secret;
        sec[2] ^= 0x5c;
        sec[3] ^= 0xc5;
        let deadline = Instant::now() + timeout;
        let (region, server) = if me == 0 {
            let (fd, region) = segment::create(&format!("acspeed-stage-r{}", rank.0), lay.size)?;
            // SAFETY: the header is ours to initialise before the region is shared.
            unsafe { (region.ptr() as *mut u64).write(MAGIC) };
            let s = segment::serve(sec, rank.0, fd, l - 1, deadline)?;
            (region, Some(s))
        } else {
            let m = segment::fetch(&sec, rank.0, group[0], lay.size, deadline)?;
            // SAFETY: the creator wrote the header before serving the descriptor.
            if unsafe { (m.ptr() as *const u64).read() } != MAGIC {
                return Err(Error::Remote {
                    rank: group[0],
                    detail: "staging region has a bad header".into(),
                });
            }
            (m, None)
        };
        let pool = if p.threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(p.threads)
                    .thread_name(|i| format!("acspeed-reduce-{i}"))
                    .build()
                    .map_err(|e| Error::io("reducer threads", std::io::Error::other(e)))?,
            )
        } else {
            None
        };
        let s = HostStaging {
            group: group.iter().map(|g| Rank(*g)).collect(),
            me,
            p,
            lay,
            region,
            done: Mutex::new(vec![0; p.pipelines]),
            pool,
            _server: server,
        };
        s.word(PIDS + me)
            .store(std::process::id() as u64, Ordering::Release);
        Ok(s)
    }

    /// Records in the abort word (first writer wins) that `rank` aborted or died, so every
    /// member's waits end at once naming it.
    fn mark(&self, rank: u32, died: bool) {
        let v = (rank as u64 + 1) | (u64::from(died) << 32);
        let _ = self
            .word(1)
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks this member as aborted, with `why` for the others' errors. The reason is written
    /// before the abort word is set (release), so a member that sees the word reads it whole.
    fn mark_self(&self, why: &str) {
        if self.word(1).load(Ordering::Acquire) == 0 {
            let n = why.len().min(REASON_LEN - 1);
            let at = self
                .region
                .ptr()
                .wrapping_add(self.lay.reasons + self.me * REASON_LEN);
            // SAFETY: our own reason slot in the reasons area; only we write it, before the
            // abort word is set.
            unsafe {
                at.write(n as u8);
                std::ptr::copy_nonoverlapping(why.as_ptr(), at.add(1), n);
            }
        }
        self.mark(self.group[self.me].0, false);
    }

    /// The reason member `m` gave when it marked itself aborted ("" if none).
    fn reason(&self, m: usize) -> String {
        let at = self
            .region
            .ptr()
            .wrapping_add(self.lay.reasons + m * REASON_LEN);
        // SAFETY: member m's reason slot, complete once its abort word was seen (acquire).
        let b = unsafe {
            let n = (at.read() as usize).min(REASON_LEN - 1);
            std::slice::from_raw_parts(at.add(1), n)
        };
        String::from_utf8_lossy(b).into_owned()
    }

    pub fn params(&self) -> StagingParams {
        self.p
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: header words lie in the first page of the live mapping, 8-byte aligned.
        unsafe { &*(self.region.ptr().add(i * 8) as *const AtomicU64) }
    }

    fn counter(&self, pipe: usize, member: usize, which: usize) -> &AtomicU64 {
        let off = self.lay.counters + (pipe * self.group.len() + member) * 64 + which * 8;
        // SAFETY: within the counters area of the mapping, 8-byte aligned.
        unsafe { &*(self.region.ptr().add(off) as *const AtomicU64) }
    }

    fn tag(&self, pipe: usize, slot: usize, member: usize, i: usize) -> &AtomicU64 {
        let l = self.group.len();
        let off = self.lay.tags + ((pipe * self.p.slots + slot) * l + member) * 16 + i * 8;
        // SAFETY: within the tags area of the mapping, 8-byte aligned.
        unsafe { &*(self.region.ptr().add(off) as *const AtomicU64) }
    }

    /// Member `m`'s input area (`m` = L: the output) of a slot.
    fn area(&self, pipe: usize, slot: usize, m: usize) -> *mut u8 {
        let l = self.group.len();
        let off = self.lay.data + ((pipe * self.p.slots + slot) * (l + 1) + m) * self.p.seg_bytes;
        self.region.ptr().wrapping_add(off)
    }

    /// Sets our `which` counter of `pipe` and wakes members sleeping on it.
    fn publish(&self, pipe: usize, which: usize, v: u64) {
        let c = self.counter(pipe, self.me, which);
        c.store(v, Ordering::SeqCst);
        // Only a sleeper needs the syscall (it registers before it sleeps; SeqCst on both
        // sides means either it sees the new value or we see it registered).
        if self.counter(pipe, self.me, SLEEPERS).load(Ordering::SeqCst) > 0 {
            futex_wake(c);
        }
    }

    /// Waits until every member's `which` counter of `pipe` reaches `target`.
    fn wait_all(&self, pipe: usize, which: usize, target: u64, w: &Waiter) -> Result<()> {
        let start = Instant::now();
        let mut checked = start;
        let mut polls = 0u32;
        loop {
            let behind = (0..self.group.len())
                .find(|m| self.counter(pipe, *m, which).load(Ordering::Acquire) < target);
            let Some(m) = behind else {
                return Ok(());
            };
            let ab = self.word(1).load(Ordering::Acquire);
            if ab != 0 {
                let (rank, died) = ((ab & 0xffff_ffff) as u32 - 1, ab >> 32 == 1);
                let why = match self.group.iter().position(|r| r.0 == rank) {
                    Some(m) if !died => self.reason(m),
                    _ => String::new(),
                };
                return Err(Error::Remote {
                    rank,
                    detail: if died {
                        format!(
                            "exited during allreduce #{} (cpu_reduce host reduce)",
                            w.seq
                        )
                    } else if why.is_empty() {
                        format!(
                            "aborted during allreduce #{} (cpu_reduce host reduce)",
                            w.seq
                        )
                    } else {
                        format!(
                            "aborted during allreduce #{} (cpu_reduce host reduce): {why}",
                            w.seq
                        )
                    },
                });
            }
            polls += 1;
            // Poll, giving the core away every 32 polls, then sleep in the kernel until the
            // laggard publishes. No longer spin: a 2 ms spin while every member had a core
            // (by the machine's core count) made CPU-Reduce on netsim 2 x 2, where four ranks
            // share this VM's 2 cores, 2-4x slower in 4 runs of 10 (21-22 against 4.6-8.6 ms
            // at 1 MiB, 183-185 against 84-97 ms at 16 MiB); without it, 5 of 5 ran at 5.3-6.5
            // and 82-86 ms. On one host of 2 ranks
            // the spin gained nothing: 13-16 us at 64 KiB and 116-127 us at 1 MiB either way
            // (6 runs each, 2026-11-30). (Before the yields, a 50 us spin then a futex sleep
            // cost 2 ranks ~9x at 64 KiB through the wake-up latency.)
            if polls % 32 == 0 && polls < 32 * 64 {
                std::thread::yield_now();
            } else if polls >= 32 * 64 {
                let c = self.counter(pipe, m, which);
                let sleepers = self.counter(pipe, m, SLEEPERS);
                sleepers.fetch_add(1, Ordering::SeqCst);
                let seen = c.load(Ordering::SeqCst);
                if seen < target {
                    futex_wait(c, seen, Duration::from_millis(2));
                }
                sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            let now = Instant::now();
            let rank = self.group[m].0;
            if now.duration_since(checked) >= Duration::from_millis(100) {
                checked = now;
                let pid = self.word(PIDS + m).load(Ordering::Acquire) as i32;
                if pid > 0 && !alive(pid) {
                    return Err(Error::Remote {
                        rank,
                        detail: format!(
                            "exited (pid {pid} is gone) during allreduce #{} (cpu_reduce host reduce)",
                            w.seq
                        ),
                    });
                }
            }
            if now >= w.deadline {
                return Err(Error::Timeout {
                    rank,
                    what: format!(
                        "allreduce #{} (cpu_reduce host reduce, {} bytes): local rank {rank} has not {} for segment {target} of pipeline {pipe}",
                        w.seq, w.len, STAGE[which]
                    ),
                    after: w.timeout,
                });
            }
        }
    }

    /// One pipeline's share of a call: `segs` = (byte range in `data`) in order, numbered
    /// from `base` within the pipeline.
    #[allow(clippy::too_many_arguments)]
    fn run_pipeline(
        &self,
        pipe: usize,
        base: u64,
        segs: &[(usize, usize)],
        data: Io<'_>,
        dtype: DType,
        op: ReduceOp,
        w: &Waiter,
    ) -> Result<()> {
        let (l, slots) = (self.group.len(), self.p.slots as u64);
        let n = segs.len();
        let es = dtype.size();
        let meta = w.count << 16 | (dtype as u64) << 8 | op as u64;
        let copy_in = copier(w.len >= STREAM_FROM);
        for j in 0..n + 2 {
            if j < n {
                // Copy in segment j once every member copied out the slot's previous use.
                let idx = base + j as u64;
                let slot = (idx % slots) as usize;
                if idx >= slots {
                    self.wait_all(pipe, DRAINED, idx - slots + 1, w)?;
                }
                self.tag(pipe, slot, self.me, 0)
                    .store(w.seq, Ordering::Relaxed);
                self.tag(pipe, slot, self.me, 1)
                    .store(meta, Ordering::Relaxed);
                let (off, len) = segs[j];
                let area = self.area(pipe, slot, self.me);
                match data {
                    // SAFETY: the caller's range and our input area are valid and disjoint.
                    Io::Host(data) => unsafe { copy_in((data + off) as *const u8, area, len) },
                    // SAFETY: our input area is ours until FILLED is published.
                    Io::Dev(io) => unsafe { io.fill(area, off, len)? },
                }
                self.publish(pipe, FILLED, idx + 1);
            }
            if j >= 1 && j - 1 < n {
                // Reduce our part of segment j-1 once every input is in.
                let idx = base + j as u64 - 1;
                let slot = (idx % slots) as usize;
                self.wait_all(pipe, FILLED, idx + 1, w)?;
                for m in 0..l {
                    let (s, mt) = (
                        self.tag(pipe, slot, m, 0).load(Ordering::Relaxed),
                        self.tag(pipe, slot, m, 1).load(Ordering::Relaxed),
                    );
                    if s != w.seq || mt != meta {
                        let name = |d: Option<&'static str>| d.unwrap_or("unknown");
                        return Err(Error::Mismatch {
                            peer: self.group[m].0,
                            detail: format!(
                                "allreduce #{} (cpu_reduce host reduce): count {} of {} ({}) here, but rank {} is in call #{s} with count {} of {} ({})",
                                w.seq,
                                w.count,
                                dtype.name(),
                                op.name(),
                                self.group[m],
                                mt >> 16,
                                name(DType::from_code((mt >> 8) as u8).map(|d| d.name())),
                                name(ReduceOp::from_code(mt as u8).map(|o| o.name())),
                            ),
                        });
                    }
                }
                let len = segs[j - 1].1;
                let part = acspeed_core::plan::chunk_range(len / es, l as u32, self.me as u32);
                let (a, b) = (part.start * es, part.end * es);
                self.reduce_part(pipe, slot, a, b, dtype, op, w.len >= STREAM_FROM);
                self.publish(pipe, REDUCED, idx + 1);
            }
            if j >= 2 {
                // Copy segment j-2's result out once every part is reduced.
                let idx = base + j as u64 - 2;
                let slot = (idx % slots) as usize;
                self.wait_all(pipe, REDUCED, idx + 1, w)?;
                let (off, len) = segs[j - 2];
                if w.copy_out {
                    let out = self.area(pipe, slot, l);
                    match data {
                        // SAFETY: the output area and the caller's range are valid and
                        // disjoint.
                        Io::Host(data) => unsafe {
                            kernels::copy::copy_nonoverlapping(out, (data + off) as *mut u8, len)
                        },
                        // SAFETY: the output area is unchanged until we publish DRAINED.
                        Io::Dev(io) => unsafe { io.drain(out, off, len)? },
                    }
                }
                self.publish(pipe, DRAINED, idx + 1);
            }
        }
        Ok(())
    }

    /// output[a..b] = sum over members of input[m][a..b], members in order.
    #[allow(clippy::too_many_arguments)]
    fn reduce_part(
        &self,
        pipe: usize,
        slot: usize,
        a: usize,
        b: usize,
        dt: DType,
        op: ReduceOp,
        stream: bool,
    ) {
        let copy_in = copier(stream);
        let l = self.group.len();
        let addr = |m: usize| self.area(pipe, slot, m) as usize;
        let work = |lo: usize, hi: usize| {
            // SAFETY: [lo, hi) is this member's part: no other member writes it in the
            // output, and every input is complete (FILLED waited) and unchanged until drained.
            unsafe {
                // Streaming stores: the output lines sit in the other members' caches from
                // their last copy out; ordinary stores would first take them back.
                copy_in(
                    (addr(0) + lo) as *const u8,
                    (addr(l) + lo) as *mut u8,
                    hi - lo,
                );
                let out = std::slice::from_raw_parts_mut((addr(l) + lo) as *mut u8, hi - lo);
                for m in 1..l {
                    let src = std::slice::from_raw_parts((addr(m) + lo) as *const u8, hi - lo);
                    kernels::reduce(dt, op, out, src);
                }
            }
        };
        match &self.pool {
            Some(pool) if b - a >= 64 << 10 => {
                let es = dt.size();
                let t = pool.current_num_threads();
                let elems = (b - a) / es;
                pool.scope(|s| {
                    for i in 0..t as u32 {
                        let r = acspeed_core::plan::chunk_range(elems, t as u32, i);
                        let work = &work;
                        s.spawn(move |_| work(a + r.start * es, a + r.end * es));
                    }
                });
            }
            _ => work(a, b),
        }
    }
}

/// Where a member's input comes from and its result goes: host memory at an address, or a
/// device's copies (`host_reduce_io`).
#[derive(Clone, Copy)]
enum Io<'a> {
    Host(usize),
    Dev(&'a dyn StageIo),
}

/// What a waiter reports.
struct Waiter {
    seq: u64,
    count: u64,
    /// Whether this member copies the result out (else it only contributes).
    copy_out: bool,
    len: usize,
    deadline: Instant,
    timeout: Duration,
}

impl HostStage for HostStaging {
    fn area(&self) -> (*mut u8, usize) {
        (self.region.ptr(), self.region.len())
    }

    fn group(&self) -> &[Rank] {
        &self.group
    }

    unsafe fn host_reduce(&self, data: *mut u8, call: &StageCall) -> Result<()> {
        self.reduce_with(Io::Host(data as usize), call)
    }

    unsafe fn host_reduce_io(&self, io: &dyn StageIo, call: &StageCall) -> Result<()> {
        self.reduce_with(Io::Dev(io), call)
    }

    fn abort(&self, reason: &str) {
        self.mark_self(reason);
    }
}

impl HostStaging {
    /// The body of both `HostStage` calls: the segments dealt round-robin to the pipelines.
    fn reduce_with(&self, data: Io<'_>, call: &StageCall) -> Result<()> {
        let StageCall {
            len,
            dtype,
            op,
            seq,
            count,
            copy_out,
            timeout,
        } = *call;
        let es = dtype.size();
        let seg = (self.p.seg_bytes / es).max(1) * es;
        let w = Waiter {
            seq,
            count,
            copy_out,
            len,
            deadline: Instant::now() + timeout,
            timeout,
        };
        let pipes = self.p.pipelines;
        let mut per: Vec<Vec<(usize, usize)>> = vec![Vec::new(); pipes];
        for (k, off) in (0..len).step_by(seg).enumerate() {
            per[k % pipes].push((off, seg.min(len - off)));
        }
        let base: Vec<u64> = {
            let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
            let b = d.clone();
            for (i, v) in per.iter().enumerate() {
                d[i] += v.len() as u64;
            }
            b
        };
        let run = |p: usize| {
            let r = self.run_pipeline(p, base[p], &per[p], data, dtype, op, &w);
            if let Err(e) = &r {
                // Members (and our other pipelines) waiting on our counters must not wait
                // for the timeout: record who is to blame in the abort word.
                match e {
                    Error::Remote { rank, detail } if detail.contains("exited") => {
                        self.mark(*rank, true)
                    }
                    Error::Remote { .. } => {}
                    _ => self.mark_self(&e.to_string()),
                }
            }
            r
        };
        let r = if pipes == 1 || per.iter().skip(1).all(|v| v.is_empty()) {
            run(0)
        } else {
            std::thread::scope(|sc| {
                let hs: Vec<_> = (1..pipes).map(|p| sc.spawn(move || run(p))).collect();
                let mut first = run(0);
                for h in hs {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(Error::Aborted("staging pipeline panicked".into()))
                    });
                    if first.is_ok() {
                        first = r;
                    }
                }
                first
            })
        };
        r
    }
}

/// The low 32 bits of a counter (little-endian: the word at its address), as futexes see it.
fn futex_word(c: &AtomicU64) -> *const u32 {
    c as *const AtomicU64 as *const u32
}

/// Sleeps while the counter's low word still equals `seen`'s, at most `max` (shared, not
/// process-private: members are other processes). Spurious returns are fine: callers re-check.
fn futex_wait(c: &AtomicU64, seen: u64, max: Duration) {
    let ts = nix::libc::timespec {
        tv_sec: max.as_secs() as _,
        tv_nsec: max.subsec_nanos() as _,
    };
    // SAFETY: the address is a live, aligned word of the shared mapping; FUTEX_WAIT only
    // reads it and compares it with `seen`.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            futex_word(c),
            nix::libc::FUTEX_WAIT,
            seen as u32,
            &ts as *const nix::libc::timespec,
        );
    }
}

/// Wakes every member sleeping on the counter.
fn futex_wake(c: &AtomicU64) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE does not touch the word.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            futex_word(c),
            nix::libc::FUTEX_WAKE,
            i32::MAX,
        );
    }
}
