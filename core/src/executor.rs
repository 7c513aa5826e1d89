//! Runs one rank's plan over a transport.
//!
//! The plan says *what* moves; its lowering ([`crate::schedule::lower`], shared with the
//! simulator and every executor) says in which segments: each chunk is cut into segments of
//! `segment_bytes`. The executor performs the lowered steps: up to `depth` receives are posted
//! ahead (into scratch slots for the reducing steps), and fused steps forward segment `i`
//! while segment `i+1` is still arriving. Sends are posted and left in flight; a later write to bytes that a
//! pending send still reads waits for that send first (the only hazard the plan leaves open).
//! Lanes run on their own threads and wait for cross-lane dependencies.
//!
//! Any failure aborts the transport before returning, so no transport thread touches the
//! caller's memory after `run` returns, whatever the outcome.

use crate::error::{Error, Result};
use crate::kernels;
use crate::plan::{Buf, Op, RankPlan, StepId};
use crate::schedule::{lower, Lowering, Schedule, SegOp, Segments};
use crate::transport::{FrameHeader, HostStage, OpHandle, StageIo, Transport};
use crate::{DType, ReduceOp};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Execution knobs (from `Config`); they never change a plan's meaning.
#[derive(Clone, Copy, Debug)]
pub struct ExecParams {
    pub segment_bytes: usize,
    pub depth: usize,
    pub timeout: Duration,
    /// A wait longer than this reports itself to the executor's stall sink, then again
    /// every as long (zero: never).
    pub stall_warn: Duration,
    /// The fewest segments a chunk is cut into ([`crate::schedule::min_segments`] of the
    /// job's host count).
    pub min_segments: usize,
}

/// Where stall reports go (the communicator's logger).
pub type StallSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

pub use crate::exec_stats::{PeerStats, WaitProbe};

/// The staging area a plan's `HostReduce` steps meet in and, optionally, where they read this
/// rank's input from instead of the output buffer: a device buffer of the same layout, so its
/// bytes go straight into the shared area (CUDA CPU-Reduce across staging domains). Allowed
/// only for a single-lane plan whose `HostReduce` steps come first and cover the whole output
/// buffer, so no other step has touched a range when it is read; each result is written to
/// the output buffer as usual.
#[derive(Clone, Copy)]
pub struct StageUse<'a> {
    pub area: &'a dyn HostStage,
    pub input: Option<&'a dyn StageIo>,
}

impl<'a> StageUse<'a> {
    pub fn area(area: &'a dyn HostStage) -> Self {
        StageUse { area, input: None }
    }
}

/// Whether `plan` can take its input through [`StageUse::input`]: one lane, whose leading
/// `HostReduce` steps cover every output chunk, and no `HostReduce` after them.
pub fn feeds_host_reduce(plan: &RankPlan) -> bool {
    let [lane] = &plan.lanes[..] else {
        return false;
    };
    let lead = lane
        .steps
        .iter()
        .take_while(|s| matches!(s.op, Op::HostReduce { .. }))
        .count();
    if lane.steps[lead..]
        .iter()
        .any(|s| matches!(s.op, Op::HostReduce { .. }))
    {
        return false;
    }
    let mut covered = vec![false; plan.output_chunks as usize];
    for s in &lane.steps[..lead] {
        if let Op::HostReduce { dst, .. } = s.op {
            if dst.buf != Buf::Output {
                return false;
            }
            match covered.get_mut(dst.index as usize) {
                Some(c) => *c = true,
                None => return false,
            }
        }
    }
    !covered.is_empty() && covered.iter().all(|c| *c)
}

/// A host reduce's input read from the caller's [`StageIo`] at `off` (the step's offset in the
/// buffer), its result written to the output buffer at `out`.
struct Fed<'a> {
    io: &'a dyn StageIo,
    off: usize,
    out: usize,
}

impl StageIo for Fed<'_> {
    unsafe fn fill(&self, dst: *mut u8, off: usize, len: usize) -> Result<()> {
        // SAFETY: forwarded; the range lies within the buffer the caller's io serves.
        unsafe { self.io.fill(dst, self.off + off, len) }
    }

    unsafe fn drain(&self, src: *const u8, off: usize, len: usize) -> Result<()> {
        // SAFETY: `out + off .. + len` lies in the step's range of the output buffer, which
        // no other step touches while the host reduce runs.
        unsafe { std::ptr::copy_nonoverlapping(src, (self.out + off) as *mut u8, len) };
        Ok(())
    }
}

/// What the call is, for frame headers and reductions.
#[derive(Clone, Copy, Debug)]
pub struct CallInfo {
    pub seq: u64,
    pub dtype: DType,
    /// `None` for collectives that do not reduce.
    pub op: Option<ReduceOp>,
    /// Per-rank element count as the API defines it (see `Collective::buffer_elems`).
    pub count: usize,
}

/// The caller's buffers as raw ranges (plans alias chunks of them across steps and lanes).
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    pub input: *const u8,
    pub input_len: usize,
    pub output: *mut u8,
    pub output_len: usize,
}
// SAFETY: the executor is the only user of these ranges for the duration of `run`.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// Executes plans; keeps scratch memory between calls.
pub struct Executor {
    params: ExecParams,
    stall: Option<StallSink>,
    probe: Option<std::sync::Arc<WaitProbe>>,
    scratch: Mutex<Vec<Vec<u64>>>,
    tmp: Mutex<Vec<u64>>,
}

struct Pending {
    buf: Buf,
    range: Range<usize>,
    handle: OpHandle,
}

struct LaneCtx<'a> {
    plan: &'a RankPlan,
    sched: &'a Schedule,
    t: &'a dyn Transport,
    call: CallInfo,
    bufs: Buffers,
    params: ExecParams,
    /// Address of the plan's scratch buffer (`Buf::Scratch`).
    tmp: usize,
    lane: usize,
    step: usize,
    pending: Vec<Pending>,
    scratch: &'a mut [u64],
    stall: Option<&'a StallSink>,
    probe: Option<&'a WaitProbe>,
    /// The plan's algorithm wire code, looked up once (every segment's header carries it).
    algo: u8,
    /// Where `HostReduce` steps meet (CPU-Reduce), and where they read the input from.
    staging: Option<StageUse<'a>>,
    /// This lane's traffic per peer, when asked for.
    stats: Option<PeerStats>,
}

impl Executor {
    pub fn new(params: ExecParams) -> Self {
        Executor {
            params,
            stall: None,
            probe: None,
            scratch: Mutex::new(Vec::new()),
            tmp: Mutex::new(Vec::new()),
        }
    }

    pub fn params(&self) -> ExecParams {
        self.params
    }

    /// How this executor lowers plans (the simulator lowers with the same knobs).
    pub fn lowering(&self) -> Lowering {
        Lowering {
            segment_bytes: self.params.segment_bytes,
            min_segments: self.params.min_segments,
            depth: self.params.depth,
        }
    }

    /// Sends stall reports (see `ExecParams::stall_warn`) to `sink`.
    pub fn with_stall_sink(mut self, sink: StallSink) -> Self {
        self.stall = Some(sink);
        self
    }

    /// Publishes what it waits for in `probe` (see [`WaitProbe`]).
    pub fn with_wait_probe(mut self, probe: std::sync::Arc<WaitProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Runs `plan` over one transport (a plan on channel 0 only).
    pub fn run(
        &self,
        plan: &RankPlan,
        t: &dyn Transport,
        call: CallInfo,
        bufs: Buffers,
    ) -> Result<()> {
        self.run_on(plan, &[t], call, bufs)
    }

    /// Runs `plan` with the lanes of channel `c` on `channels[c]`, without a staging area.
    pub fn run_on(
        &self,
        plan: &RankPlan,
        channels: &[&dyn Transport],
        call: CallInfo,
        bufs: Buffers,
    ) -> Result<()> {
        self.run_with(plan, channels, None, call, bufs, None)
    }

    /// Runs `plan`; lanes on channel `c` use `channels[c]`, and `HostReduce` steps meet in
    /// `staging`. Buffer lengths must match the plan's collective for `call.count`. With
    /// `stats` (sized for the plan's ranks), each lane adds its traffic per peer to it.
    pub fn run_with(
        &self,
        plan: &RankPlan,
        channels: &[&dyn Transport],
        staging: Option<StageUse<'_>>,
        call: CallInfo,
        bufs: Buffers,
        stats: Option<&Mutex<PeerStats>>,
    ) -> Result<()> {
        let sched = lower(plan, call.count, call.dtype.size(), self.lowering());
        self.run_lowered(plan, &sched, channels, staging, call, bufs, stats)
    }

    /// [`Executor::run_with`] on a schedule the caller lowered (and may keep between calls of
    /// the same size): `sched` must be `plan` lowered with [`Executor::lowering`] for
    /// `call.count` elements of `call.dtype`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_lowered(
        &self,
        plan: &RankPlan,
        sched: &Schedule,
        channels: &[&dyn Transport],
        staging: Option<StageUse<'_>>,
        call: CallInfo,
        bufs: Buffers,
        stats: Option<&Mutex<PeerStats>>,
    ) -> Result<()> {
        if sched.rank != plan.rank || sched.lanes.len() != plan.lanes.len() {
            return Err(Error::invalid(format!(
                "{} plan of {}: the schedule given was lowered from another plan",
                plan.algorithm,
                plan.collective.name()
            )));
        }
        if plan.channels() as usize > channels.len() || channels.is_empty() {
            return Err(Error::invalid(format!(
                "{} plan of {} uses {} channels but the communicator has {} (channels are set up at init from the agreed topology)",
                plan.algorithm,
                plan.collective.name(),
                plan.channels(),
                channels.len()
            )));
        }
        if staging.is_some_and(|s| s.input.is_some()) && !feeds_host_reduce(plan) {
            return Err(Error::invalid(format!(
                "{} plan: its input can be read through the staging area only when its host reduces come first and cover the buffer",
                plan.algorithm
            )));
        }
        let abort_all = |why: &str| {
            channels.iter().for_each(|t| t.abort(why));
            staging.iter().for_each(|s| s.area.abort(why));
        };
        if bufs.output_len != sched.output_bytes
            || (plan.collective.has_input() && bufs.input_len != sched.input_bytes)
        {
            return Err(Error::invalid(format!(
                "{}: buffers of {} / {} bytes do not fit count {} of {} on {} ranks",
                plan.collective.name(),
                bufs.input_len,
                bufs.output_len,
                call.count,
                call.dtype,
                plan.nranks
            )));
        }
        let slot_words = sched.segment_bytes.div_ceil(8);
        // The plan's own temporary buffer (e.g. double-buffered partial sums).
        let mut tmp: Vec<u64> = {
            let mut pool = self.tmp.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = std::mem::take(&mut *pool);
            v.resize(sched.scratch_bytes.div_ceil(8), 0);
            v
        };
        let tmp_addr = tmp.as_mut_ptr() as usize;
        let nl = plan.lanes.len();
        let mut scratch = {
            let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<Vec<u64>> = (0..nl).map(|_| pool.pop().unwrap_or_default()).collect();
            // One slot per posted-ahead segment per source of the widest fan-in step.
            let sources = sched.max_fan_in.max(1);
            for s in &mut v {
                s.resize(slot_words * sched.depth * sources, 0);
            }
            v
        };
        let params = self.params;
        let on = |l: usize| channels[sched.lanes[l].channel as usize];
        let result = if nl <= 1 {
            match scratch.first_mut() {
                Some(s) => {
                    let mut ctx =
                        LaneCtx::new(plan, sched, on(0), call, bufs, params, tmp_addr, 0, s);
                    ctx.stall = self.stall.as_ref();
                    ctx.probe = self.probe.as_deref();
                    ctx.staging = staging;
                    ctx.stats = stats.map(|_| PeerStats::new(plan.nranks));
                    ctx.run_lane(None, stats)
                }
                None => Ok(()),
            }
        } else {
            let progress = Progress {
                done: Mutex::new(vec![0; nl]),
                cv: Condvar::new(),
            };
            let stall = self.stall.as_ref();
            let probe = self.probe.as_deref();
            std::thread::scope(|sc| {
                let handles: Vec<_> = scratch
                    .iter_mut()
                    .enumerate()
                    .map(|(l, s)| {
                        let progress = &progress;
                        let abort_all = &abort_all;
                        let t = on(l);
                        sc.spawn(move || {
                            let mut ctx =
                                LaneCtx::new(plan, sched, t, call, bufs, params, tmp_addr, l, s);
                            ctx.stall = stall;
                            ctx.probe = probe;
                            ctx.staging = staging;
                            ctx.stats = stats.map(|_| PeerStats::new(plan.nranks));
                            let r = ctx.run_lane(Some(progress), stats);
                            if let Err(e) = &r {
                                // Unblock sibling lanes waiting on a transport or on us.
                                abort_all(&e.to_string());
                                progress.fail();
                            }
                            r
                        })
                    })
                    .collect();
                let mut first = Ok(());
                for h in handles {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err(Error::Aborted("executor lane panicked".into())));
                    if first.is_ok() {
                        first = r;
                    }
                }
                first
            })
        };
        if let Err(e) = &result {
            abort_all(&e.to_string());
        }
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(scratch);
        *self.tmp.lock().unwrap_or_else(|e| e.into_inner()) = tmp;
        result
    }
}

/// Cross-lane completion counters.
struct Progress {
    done: Mutex<Vec<usize>>,
    cv: Condvar,
}

impl Progress {
    fn fail(&self) {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        d.iter_mut().for_each(|x| *x = usize::MAX);
        self.cv.notify_all();
    }
    fn finish(&self, lane: usize, steps: usize) {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if d[lane] != usize::MAX {
            d[lane] = steps;
        }
        self.cv.notify_all();
    }
    /// Waits for `deps`. With `drive`, the waiter keeps calling it (the lane's transport's
    /// `progress`): on transports whose bytes move only when polled, this lane's sends still in
    /// flight would otherwise never leave, and the lanes waited for may be waiting on them.
    fn wait(
        &self,
        deps: &[StepId],
        timeout: Duration,
        drive: Option<&dyn Fn() -> bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if d.contains(&usize::MAX) {
                return Err(Error::Aborted("a sibling lane failed".into()));
            }
            if deps.iter().all(|id| d[id.lane as usize] > id.step as usize) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Aborted(format!(
                    "timed out waiting for lane dependencies {deps:?}"
                )));
            }
            let nap = match drive {
                Some(drive) => {
                    drop(d);
                    let moved = drive();
                    d = self.done.lock().unwrap_or_else(|e| e.into_inner());
                    if moved {
                        continue;
                    }
                    Duration::from_micros(100)
                }
                None => deadline - now,
            };
            d = self
                .cv
                .wait_timeout(d, nap.min(deadline - now))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<'a> LaneCtx<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a RankPlan,
        sched: &'a Schedule,
        t: &'a dyn Transport,
        call: CallInfo,
        bufs: Buffers,
        params: ExecParams,
        tmp: usize,
        lane: usize,
        scratch: &'a mut [u64],
    ) -> Self {
        LaneCtx {
            plan,
            sched,
            t,
            call,
            bufs,
            params,
            tmp,
            lane,
            step: 0,
            pending: Vec::new(),
            scratch,
            stall: None,
            probe: None,
            algo: crate::plan::algorithm_code(&plan.algorithm),
            staging: None,
            stats: None,
        }
    }

    fn run_lane(
        mut self,
        progress: Option<&Progress>,
        stats: Option<&Mutex<PeerStats>>,
    ) -> Result<()> {
        let r = self.run_steps(progress);
        if let (Some(out), Some(mine)) = (stats, &self.stats) {
            out.lock().unwrap_or_else(|e| e.into_inner()).add(mine);
        }
        r
    }

    fn run_steps(&mut self, progress: Option<&Progress>) -> Result<()> {
        let lane = &self.sched.lanes[self.lane];
        for (i, step) in lane.steps.iter().enumerate() {
            self.step = i;
            if let (Some(p), false) = (progress, step.deps.is_empty()) {
                let t = self.t;
                let drive = || t.progress();
                let drive: Option<&dyn Fn() -> bool> = t.needs_progress().then_some(&drive);
                p.wait(&step.deps, self.params.timeout, drive)?;
            }
            let t0 = self.stats.is_some().then(Instant::now);
            self.run_step(&step.op)?;
            if let (Some(t0), Some(st)) = (t0, &mut self.stats) {
                let phase = step.phase.map(|p| p.name());
                st.step(self.lane as u32, phase, t0, Instant::now());
            }
            if let Some(p) = progress {
                p.finish(self.lane, i + 1);
            }
        }
        // Every send must have left the caller's memory before we return.
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            self.wait(&p.handle, "send", p.buf, &p.range)?;
        }
        Ok(())
    }

    fn header(&self, len: usize) -> FrameHeader {
        FrameHeader {
            seq: self.call.seq,
            coll: self.plan.collective.code(),
            dtype: self.call.dtype as u8,
            op: self.call.op.map(|o| o as u8).unwrap_or(u8::MAX),
            algo: self.algo,
            // Verified plans have fewer than MAX_CHANNELS (16) channels, so this fits.
            channel: self.sched.lanes[self.lane].channel as u8,
            root: match self.plan.collective {
                crate::plan::Collective::Broadcast { root }
                | crate::plan::Collective::Reduce { root } => root.0,
                _ => 0,
            },
            count: self.call.count as u64,
            len: len as u64,
        }
    }

    fn ptr(&self, buf: Buf, off: usize) -> *mut u8 {
        match buf {
            // The input is only ever read (sent or copied from); the cast is for one signature.
            Buf::Input => self.bufs.input.wrapping_add(off) as *mut u8,
            Buf::Output => self.bufs.output.wrapping_add(off),
            Buf::Scratch => (self.tmp as *mut u8).wrapping_add(off),
        }
    }

    fn wait(&mut self, h: &OpHandle, what: &str, buf: Buf, r: &Range<usize>) -> Result<()> {
        let t0 = Instant::now();
        if let Some(p) = self.probe {
            p.begin(h.peer().0, what == "send");
        }
        let res = self.wait_reporting(h, what, buf, r);
        if let Some(p) = self.probe {
            p.end(h.peer().0, what == "send", t0.elapsed());
        }
        if let Some(st) = &mut self.stats {
            if let Some(w) = st.wait.get_mut(h.peer().idx()) {
                *w += t0.elapsed();
            }
        }
        res
    }

    /// Waits for `h`, reporting every `stall_warn` that it has not completed.
    fn wait_reporting(&self, h: &OpHandle, what: &str, buf: Buf, r: &Range<usize>) -> Result<()> {
        let deadline = Instant::now() + self.params.timeout;
        let (plan, call, lane, step) = (self.plan, self.call, self.lane, self.step);
        let what = || {
            format!(
                "{} #{} ({} elements of {}): {what} of bytes {}..{} of the {} buffer with rank {} (lane {lane} step {step})",
                plan.collective.name(),
                call.seq,
                call.count,
                call.dtype,
                r.start,
                r.end,
                if buf == Buf::Input { "input" } else { "output" },
                h.peer()
            )
        };
        // Wait in stretches of `stall_warn`: each stretch that ends without the operation
        // done is reported (which rank, which call), then the wait goes on to the timeout.
        let start = Instant::now();
        let every = self.params.stall_warn;
        let mut mark = start + every;
        loop {
            let until = if every.is_zero() {
                deadline
            } else {
                deadline.min(mark)
            };
            let r = if self.t.needs_progress() {
                h.wait_driven(until, self.params.timeout, &what, &|| self.t.progress())
            } else {
                h.wait(until, self.params.timeout, &what)
            };
            match (r, self.stall) {
                (Err(Error::Timeout { .. }), Some(sink)) if until < deadline => {
                    sink(&format!(
                        "stalled {:.0}s: {} (algorithm {}); rank {} has not sent or taken its part yet",
                        start.elapsed().as_secs_f64(),
                        what(),
                        plan.algorithm,
                        h.peer()
                    ));
                    mark += every;
                }
                (Err(Error::Timeout { .. }), None) if until < deadline => mark += every,
                (r, _) => return r,
            }
        }
    }

    /// Waits for pending sends that read bytes we are about to overwrite.
    fn clear_hazard(&mut self, buf: Buf, r: &Range<usize>) -> Result<()> {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.buf == buf
                && p.range.start < r.end.max(r.start + 1)
                && r.start < p.range.end.max(p.range.start + 1)
            {
                let p = self.pending.swap_remove(i);
                self.wait(&p.handle, "send", p.buf, &p.range)?;
            } else {
                i += 1;
            }
        }
        // Keep the list short: drop sends that already finished.
        self.pending.retain(|p| !p.handle.is_done());
        Ok(())
    }

    fn send(&mut self, to: crate::Rank, buf: Buf, r: Range<usize>) -> Result<()> {
        let hdr = self.header(r.len());
        // SAFETY: the range lies in a caller buffer that outlives this call; it is not written
        // until the send completes (clear_hazard) and `run` waits for or aborts every send.
        let handle = unsafe { self.t.post_send(to, hdr, self.ptr(buf, r.start), r.len())? };
        if let Some(st) = &mut self.stats {
            st.sent[to.idx()] += r.len() as u64;
        }
        self.pending.push(Pending {
            buf,
            range: r,
            handle,
        });
        Ok(())
    }

    fn reduce_op(&self) -> Result<ReduceOp> {
        self.call.op.ok_or_else(|| {
            Error::Plan("a reducing step in a collective without a reduce op".into())
        })
    }

    fn run_step(&mut self, op: &'a SegOp) -> Result<()> {
        match op {
            SegOp::HostReduce {
                buf,
                range: r,
                group,
                copy_out,
                // The area was sized with the same segment at init and pipelines by it.
                ..
            } => {
                let StageUse { area: st, input } = self.staging.ok_or_else(|| {
                    Error::invalid(format!(
                        "{} plan: a host reduce needs the host's shared staging area, and this communicator has none (local ranks without shared memory: ACSPEED_SHM=0, or one rank per host)",
                        self.plan.algorithm
                    ))
                })?;
                if group.len() != st.group().len() || !group.iter().all(|g| st.group().contains(&g))
                {
                    return Err(Error::invalid(format!(
                        "{} plan: host reduce among ranks {:?}, but the staging area is shared by ranks {:?}",
                        self.plan.algorithm,
                        group,
                        st.group()
                    )));
                }
                self.clear_hazard(*buf, r)?;
                let op = self.reduce_op()?;
                // SAFETY: the range lies in a buffer of this call, no pending send reads it
                // (cleared above) and no other lane of a verified plan touches it meanwhile.
                let call = crate::StageCall {
                    len: r.len(),
                    dtype: self.call.dtype,
                    op,
                    seq: self.call.seq,
                    count: self.call.count as u64,
                    copy_out: *copy_out,
                    timeout: self.params.timeout,
                };
                let data = self.ptr(*buf, r.start);
                match input {
                    // SAFETY: as above; the caller's io serves the whole buffer.
                    Some(io) => unsafe {
                        let fed = Fed {
                            io,
                            off: r.start,
                            out: data as usize,
                        };
                        st.host_reduce_io(&fed, &call)
                    },
                    None => unsafe { st.host_reduce(data, &call) },
                }?;
                // Through the area, each member reduces one share of every input and takes
                // every member's share of the result: per peer, one share each way.
                if let Some(stats) = &mut self.stats {
                    let share = (r.len() / group.len().max(1)) as u64;
                    for g in group.iter().filter(|g| *g != self.plan.rank) {
                        stats.sent[g.idx()] += share;
                        stats.recv[g.idx()] += share;
                    }
                }
                Ok(())
            }
            SegOp::Move {
                from,
                to,
                reduce,
                buf,
                segs,
            } => {
                if from.is_empty() {
                    // Only sends: each segment to every destination in turn.
                    for s in segs.iter() {
                        for t in to.iter() {
                            self.send(t, *buf, s.clone())?;
                        }
                    }
                    return Ok(());
                }
                let op = if *reduce {
                    Some(self.reduce_op()?)
                } else {
                    None
                };
                self.recv_pipeline(&from.to_vec(), &to.to_vec(), *buf, segs, op)
            }
            SegOp::Local {
                reduce,
                src,
                src_at,
                dst,
                dst_at,
                len,
            } => {
                let (len, rd) = (*len, *dst_at..*dst_at + *len);
                self.clear_hazard(*dst, &rd)?;
                // SAFETY: both ranges lie in the caller's buffers (checked lengths in `run`)
                // or in the plan's scratch, and no pending send reads the destination.
                unsafe {
                    if *reduce {
                        let d = std::slice::from_raw_parts_mut(self.ptr(*dst, rd.start), len);
                        let s = std::slice::from_raw_parts(self.ptr(*src, *src_at), len);
                        kernels::reduce(self.call.dtype, self.reduce_op()?, d, s);
                    } else {
                        kernels::copy::copy(self.ptr(*src, *src_at), self.ptr(*dst, rd.start), len);
                    }
                }
                Ok(())
            }
        }
    }

    /// Receives a chunk's segments from every rank in `from`, keeping `depth`
    /// receives per source posted ahead, and forwards each segment to every rank in `fwd` as
    /// soon as all sources' parts of it are in. `op` makes it a reducing receive: sources are
    /// reduced into the destination in list order (so the result is the same on every run).
    /// The first source reduces through the transport's own buffers when it can; the others
    /// go through scratch slots. Without `op` there is exactly one source.
    fn recv_pipeline(
        &mut self,
        from: &[crate::Rank],
        fwd: &[crate::Rank],
        buf: Buf,
        segs: &Segments,
        op: Option<ReduceOp>,
    ) -> Result<()> {
        self.clear_hazard(buf, &segs.range)?;
        let nsegs = segs.count();
        let depth = self.sched.depth;
        let fused = op.is_some() && self.t.can_recv_reduce(from[0]);
        let slot_bytes = self.sched.segment_bytes.div_ceil(8) * 8;
        let base = self.scratch.as_mut_ptr() as *mut u8;
        let nsrc = from.len();
        let slot = |i: usize, k: usize| base.wrapping_add(((i % depth) * nsrc + k) * slot_bytes);
        // Per segment, one handle per source.
        let mut posted: VecDeque<Vec<OpHandle>> = VecDeque::new();
        let mut next = 0;
        for i in 0..nsegs {
            while next < nsegs && next < i + depth {
                let s = segs.get(next);
                let hdr = self.header(s.len());
                let into = self.ptr(buf, s.start);
                let mut hs = Vec::with_capacity(nsrc);
                for (k, &f) in from.iter().enumerate() {
                    // SAFETY: the destination (or scratch slot (next % depth, k), whose
                    // previous segment was already reduced) is not touched until the handle
                    // completes.
                    let h = unsafe {
                        match op {
                            Some(op) if k == 0 && fused => {
                                self.t.post_recv_reduce(f, hdr, into, self.call.dtype, op)?
                            }
                            Some(_) => self.t.post_recv(f, hdr, slot(next, k))?,
                            None => self.t.post_recv(f, hdr, into)?,
                        }
                    };
                    hs.push(h);
                    if let Some(st) = &mut self.stats {
                        st.recv[f.idx()] += s.len() as u64;
                    }
                }
                posted.push_back(hs);
                next += 1;
            }
            let hs = posted.pop_front().expect("posted ahead");
            let s = segs.get(i);
            let what = if op.is_some() {
                "receive-reduce"
            } else {
                "receive"
            };
            for (k, h) in hs.iter().enumerate() {
                self.wait(h, what, buf, &s)?;
                let Some(op) = op else { continue };
                if k == 0 && fused {
                    continue;
                }
                // SAFETY: the receive completed, so the slot holds s.len() valid bytes, and
                // the destination range is inside the caller's buffer with no send pending
                // on it. Sources are reduced in list order.
                unsafe {
                    let d = std::slice::from_raw_parts_mut(self.ptr(buf, s.start), s.len());
                    kernels::reduce(
                        self.call.dtype,
                        op,
                        d,
                        std::slice::from_raw_parts(slot(i, k), s.len()),
                    );
                }
            }
            for &to in fwd {
                self.send(to, buf, s.clone())?;
            }
        }
        Ok(())
    }
}
