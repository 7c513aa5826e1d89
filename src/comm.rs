//! The communicator: a group of ranks with a connected transport, a plan cache and an executor.
//!
//! Collectives run one at a time in issue order (a lock per communicator); each call gets a
//! sequence number that travels in every frame, so ranks that disagree about what they are
//! doing get a `Mismatch` error naming the other rank rather than wrong data. After any
//! transport-level error the communicator is poisoned: it says so on every later call.

use crate::autotune::{Class, Next, Tuner};
use crate::element::Element;
use crate::log::{log_enabled, Logger};
use crate::policy::{table_row, Policy};
use acspeed_algorithms::Algorithm;
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor, PeerStats, StageUse};
use acspeed_core::plan::{Collective, RankPlan};
use acspeed_core::schedule::Schedule;
use acspeed_core::{
    kernels, Config, DType, Error, HostStage, PlanContext, Rank, ReduceOp, Result, Transport,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[path = "comm_choice.rs"]
mod choice;
#[path = "comm_device.rs"]
mod device;
#[path = "comm_p2p.rs"]
mod p2p;

pub use device::{CommExchange, DeviceRun};

/// A set of ranks that run collectives together.
pub struct Communicator {
    rank: u32,
    nranks: u32,
    transport: Arc<dyn Transport>,
    /// Channels 1.. (channel 0 is `transport`): more pipes to the same peers, for plans whose
    /// lanes share a peer (n-trees), set up at init from the agreed context.
    channels: Vec<Arc<dyn Transport>>,
    /// The device's hold on the staging area (`StageIo::pin`): taken at the first device
    /// call through the area, `Some(None)` when there was nothing to pin or pinning failed.
    /// Declared before `staging` so that it is released before the area is unmapped.
    stage_pin: Mutex<Option<Option<acspeed_core::PinGuard>>>,
    /// CPU-Reduce's staging area shared with this host's other ranks (none without
    /// shared memory or on a host of one rank).
    staging: Option<Arc<dyn HostStage>>,
    exec: Executor,
    cfg: Config,
    state: Mutex<CallState>,
    poisoned: Mutex<Option<String>>,
    hosts: Vec<String>,
    /// What plan generators know (host map), identical on every rank.
    ctx: PlanContext,
    /// Which pairs of this host's GPUs have a peer-to-peer path, by local index (from the
    /// agreed topology; `None` without one).
    gpu_p2p: Option<Vec<Vec<bool>>>,
    /// Which algorithm each call runs, and why.
    policy: Policy,
    /// `ACSPEED_TIMELINE`: one Chrome-trace event per collective.
    timeline: Option<crate::timeline::Timeline>,
    /// The selector's table, filled at init in the background (stopped and joined on drop).
    fill: Mutex<Option<crate::selector::Fill>>,
    /// Where the next receive from any source starts looking (round robin over ranks).
    next_any: std::sync::atomic::AtomicU32,
    /// Heartbeats to the coordinator and its stall reports (when connected by `init`).
    control: Option<crate::control::Control>,
    /// When on ([`Communicator::record_busy`]), when each collective ran: (start, end) in
    /// seconds since the Unix epoch, for overlap measurements.
    busy: Mutex<Option<Vec<(f64, f64)>>>,
    /// What the executor waits for right now (read by the heartbeat).
    probe: Arc<acspeed_core::executor::WaitProbe>,
    log: Logger,
    /// Per-collective timing statistics, logged at the end (`ACSPEED_DEBUG=INFO` or more).
    call_stats: Option<crate::call_stats::CallStats>,
}

struct CallState {
    seq: u64,
    /// Plans by collective, algorithm and rounds ([`Algorithm::rounds_for`]).
    plans: HashMap<(Collective, Algorithm, u32), Arc<RankPlan>>,
    /// Their lowerings by (collective, algorithm, rounds, element count, element size): a
    /// training job repeats a few bucket sizes, and lowering costs a fraction of a small
    /// call. Emptied when it reaches [`MAX_SCHEDULES`] (a sweep of sizes).
    schedules: HashMap<SizeKey, Arc<Schedule>>,
    /// The same lowerings compiled for device queues (`run_device`), under the same key and
    /// bound; `Err` keeps why one is not device work.
    programs: HashMap<SizeKey, std::result::Result<Arc<acspeed_core::device::Program>, String>>,
}

/// (collective, algorithm, rounds, element count, element size): what a lowering depends on.
type SizeKey = (Collective, Algorithm, u32, usize, usize);

/// Schedules a communicator keeps (see `CallState::schedules`).
const MAX_SCHEDULES: usize = 256;

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("nranks", &self.nranks)
            .finish_non_exhaustive()
    }
}

impl Communicator {
    /// Wraps a connected transport. `hosts[r]` is rank r's host identity (for grouping); the
    /// GPUs' NVLinks come from `ACSPEED_TOPO_FILE` when it is set. No rank gets a CPU-Reduce
    /// staging area, so CPU-Reduce runs what it runs without shared memory (ring or hybrid).
    pub fn from_transport(
        transport: Arc<dyn Transport>,
        cfg: Config,
        hosts: Vec<String>,
    ) -> Result<Communicator> {
        let cfg = Config {
            transport: acspeed_core::config::TransportSettings {
                shm: false,
                ..cfg.transport
            },
            ..cfg
        };
        let model = crate::model::JobModel::new(&cfg, hosts)?;
        Communicator::with_channels(transport, Vec::new(), None, cfg, model)
    }

    /// Wraps connected transports: `transport` is channel 0, `channels` are channels 1..,
    /// `staging` the host's CPU-Reduce staging area, `model` the job as every rank agreed on
    /// it ([`crate::model::Discovery::agree`]).
    pub fn with_channels(
        transport: Arc<dyn Transport>,
        channels: Vec<Arc<dyn Transport>>,
        staging: Option<Arc<dyn HostStage>>,
        cfg: Config,
        model: crate::model::JobModel,
    ) -> Result<Communicator> {
        let (rank, nranks) = (transport.rank().0, transport.nranks());
        let log = Logger::new(cfg.job.log, rank);
        // Stall reports are warnings: they show at the default log level.
        let exec = Executor::new(ExecParams {
            segment_bytes: cfg.exec.segment_bytes,
            depth: cfg.exec.pipeline_depth,
            timeout: cfg.job.timeout,
            stall_warn: cfg.job.stall_warn,
            min_segments: acspeed_core::schedule::min_segments(model.context.nhosts()),
        })
        .with_stall_sink(Arc::new(move |m: &str| log.warn(m)));
        let probe = Arc::new(acspeed_core::executor::WaitProbe::new(nranks));
        let exec = exec.with_wait_probe(probe.clone());
        let policy = Policy::for_job(&cfg, &model, log)?;
        let gpu_p2p = model
            .description
            .as_ref()
            .filter(|d| !d.gpus.is_empty())
            .and_then(|d| acspeed_core::topology::TopoModel::from_description(d).ok())
            .map(|m| m.p2p);
        let crate::model::JobModel {
            hosts,
            context: ctx,
            ..
        } = model;
        let timeline = match &cfg.job.timeline {
            Some(t) => Some(crate::timeline::Timeline::open(
                t,
                transport.rank().0,
                transport.nranks(),
            )?),
            None => None,
        };
        // The selector's table is filled now, in the background; a call whose class it has not
        // reached predicts that class itself (deterministic: the same table either way).
        let fill = policy
            .selector()
            .ok()
            .map(|s| crate::selector::Fill::start(s.clone(), policy.chosen_collectives(), log));
        let c = Communicator {
            rank,
            nranks,
            transport,
            channels,
            stage_pin: Mutex::new(None),
            staging,
            exec,
            cfg,
            state: Mutex::new(CallState {
                seq: 0,
                plans: HashMap::new(),
                schedules: HashMap::new(),
                programs: HashMap::new(),
            }),
            poisoned: Mutex::new(None),
            hosts,
            ctx,
            gpu_p2p,
            policy,
            timeline,
            fill: Mutex::new(fill),
            next_any: std::sync::atomic::AtomicU32::new(0),
            control: None,
            busy: Mutex::new(None),
            probe,
            log,
            call_stats: log_enabled(&log, acspeed_core::config::LogLevel::Info)
                .then(|| crate::call_stats::CallStats::new(log, nranks)),
        };
        c.log_init();
        Ok(c)
    }

    /// Logs a warning with this communicator's rank prefix (shown at the default level).
    pub fn warn(&self, msg: &str) {
        self.log.warn(msg);
    }

    /// Starts (or stops) recording when each collective runs; see [`Communicator::take_busy`].
    pub fn record_busy(&self, on: bool) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    /// The (start, end) times, in seconds since the Unix epoch, of the collectives run since
    /// the last call (while recording is on). Their union against a training step's window is
    /// the step's communication time, from which `python -m acspeed.linearity` derives how
    /// much of it the backward pass hid.
    pub fn take_busy(&self) -> Vec<(f64, f64)> {
        match &mut *self.busy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(v) => std::mem::take(v),
            None => Vec::new(),
        }
    }

    /// What the executor waits for right now (for the control plane's heartbeat).
    pub(crate) fn wait_probe(&self) -> Arc<acspeed_core::executor::WaitProbe> {
        self.probe.clone()
    }

    /// Joins the control plane (heartbeats, stall reports); see [`crate::control`].
    pub(crate) fn with_control(mut self, c: crate::control::Control) -> Self {
        self.control = Some(c);
        self
    }

    /// The stall reports this rank received from the coordinator (the last few, oldest
    /// first): which collective waited past `ACSPEED_STALL_WARN_SECS` and which ranks had not
    /// joined it. Empty without a control plane (communicators not built by `init`).
    pub fn stall_reports(&self) -> Vec<String> {
        self.control
            .as_ref()
            .map(|c| c.reports())
            .unwrap_or_default()
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }
    pub fn nranks(&self) -> u32 {
        self.nranks
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Ranks that share this rank's host (by hostname or `ACSPEED_HOST_ID`), ascending.
    pub fn local_ranks(&self) -> Vec<u32> {
        let me = self.hosts.get(self.rank as usize);
        (0..self.nranks)
            .filter(|r| self.hosts.get(*r as usize) == me)
            .collect()
    }

    /// Transport used towards `peer` (for logs and benchmarks).
    pub fn transport_name(&self, peer: u32) -> String {
        self.transport.name(Rank(peer))
    }

    fn forced(&self) -> Option<Algorithm> {
        self.policy.forced()
    }

    /// Forces an algorithm for later calls (`None`: back to the per-size rules and `auto`),
    /// as `ACSPEED_ALGO` does at init. Every rank must make the same call at the same point
    /// of its call sequence: the algorithm travels in every frame header, so ranks that
    /// differ fail with a mismatch naming the other rank.
    pub fn set_algorithm(&self, algo: Option<Algorithm>) {
        self.policy.set_forced(algo);
    }

    /// The job as plan generators see it (ranks per host).
    pub fn plan_context(&self) -> &PlanContext {
        &self.ctx
    }

    /// The plan of `algo` for a `coll` of `bytes` (output per rank), built and verified once.
    fn plan(
        &self,
        st: &mut CallState,
        coll: Collective,
        algo: Algorithm,
        bytes: usize,
    ) -> Result<Arc<RankPlan>> {
        let rounds = algo.rounds_for(coll, bytes, &self.ctx);
        if let Some(p) = st.plans.get(&(coll, algo, rounds)) {
            return Ok(p.clone());
        }
        let plan = Arc::new(algo.plan_rounds(coll, Rank(self.rank), &self.ctx, rounds)?);
        // Verify every new plan against all ranks' plans while that is cheap, in both buffer
        // models (a plan that needs unbounded transport buffers would hang at scale).
        if self.nranks <= 64 {
            let all = algo.all_plans_rounds(coll, &self.ctx, rounds)?;
            acspeed_core::verify::verify_all_models(&all, None)?;
        }
        if let Some(dir) = &self.cfg.job.plan_dump_dir {
            let path = std::path::Path::new(dir).join(format!(
                "plan-{}-{}{}-n{}-r{}.json",
                coll.name(),
                algo.name(),
                if rounds > 1 {
                    format!("-x{rounds}")
                } else {
                    String::new()
                },
                self.nranks,
                self.rank
            ));
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&path, plan.to_json()))
                .map_err(|e| {
                    Error::io(
                        format!("ACSPEED_PLAN_DUMP_DIR: writing {}", path.display()),
                        e,
                    )
                })?;
        }
        st.plans.insert((coll, algo, rounds), plan.clone());
        Ok(plan)
    }

    fn check_root(&self, what: &str, root: u32) -> Result<()> {
        if root >= self.nranks {
            return Err(Error::invalid(format!(
                "{what}: root {root} is out of range for {} ranks",
                self.nranks
            )));
        }
        Ok(())
    }

    fn elems(what: &str, dtype: DType, bytes: usize, which: &str) -> Result<usize> {
        if bytes % dtype.size() != 0 {
            return Err(Error::invalid(format!("{what}: {which} buffer of {bytes} bytes is not a whole number of {dtype} elements ({} bytes each)", dtype.size())));
        }
        Ok(bytes / dtype.size())
    }

    /// Runs one collective. `input` is only read for collectives with a separate input.
    fn run(
        &self,
        coll: Collective,
        dtype: DType,
        op: Option<ReduceOp>,
        count: usize,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<()> {
        self.check_usable()?;
        if let Some(op) = op {
            op.check_dtype(dtype)?;
        }
        let (algo, trial) = self.pick(coll, output.len())?;
        if trial.is_some() {
            // A trial times the call, not building and verifying the algorithm's plan.
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.plan(&mut st, coll, algo, output.len())?;
        }
        let t0 = std::time::Instant::now();
        self.run_as(coll, algo, dtype, op, count, input, output, None)?;
        if let (Some(t), Some(class)) = (self.policy.tuner(), trial) {
            if let Some(local) = t.record(class, t0.elapsed().as_secs_f64()) {
                self.tune_decide(t, class, &local)?;
            }
        }
        Ok(())
    }

    /// Runs one collective with `algo`; with `fed`, the host reduces read this rank's input
    /// through it (see `StageUse::input`; the caller checked the plan takes it).
    #[allow(clippy::too_many_arguments)]
    fn run_as(
        &self,
        coll: Collective,
        algo: Algorithm,
        dtype: DType,
        op: Option<ReduceOp>,
        count: usize,
        input: &[u8],
        output: &mut [u8],
        fed: Option<&dyn acspeed_core::StageIo>,
    ) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.plan(&mut st, coll, algo, output.len())?;
        let bufs = Buffers {
            input: input.as_ptr(),
            input_len: input.len(),
            output: output.as_mut_ptr(),
            output_len: output.len(),
        };
        let mut pipes: Vec<&dyn Transport> = vec![&*self.transport];
        pipes.extend(self.channels.iter().map(|t| &**t));
        let what = (coll, algo, dtype, op, count, output.len());
        let staging = self
            .staging
            .as_deref()
            .map(|area| StageUse { area, input: fed });
        let rounds = algo.rounds_for(coll, output.len(), &self.ctx);
        let key = (coll, algo, rounds, count, dtype.size());
        let sched = match st.schedules.get(&key) {
            Some(s) => s.clone(),
            None => {
                if st.schedules.len() >= MAX_SCHEDULES {
                    st.schedules.clear();
                }
                let s = Arc::new(acspeed_core::schedule::lower(
                    &plan,
                    count,
                    dtype.size(),
                    self.exec.lowering(),
                ));
                st.schedules.insert(key, s.clone());
                s
            }
        };
        self.tracked(&mut st, what, |call, stats| {
            self.exec
                .run_lowered(&plan, &sched, &pipes, staging, call, bufs, stats)
        })?;
        if op == Some(ReduceOp::Avg) {
            let root_only = matches!(coll, Collective::Reduce { root } if root.0 != self.rank);
            if !root_only {
                kernels::scale_avg(dtype, output, self.nranks as usize);
            }
        }
        Ok(())
    }

    /// Runs `body` as the next call of the sequence, with what every call reports around
    /// it: the stall inspector's enter/leave, the busy intervals, the timeline, the poisoning
    /// on failure and the trace line. `what` = (collective, algorithm, dtype, op, element
    /// count, output bytes).
    fn tracked(
        &self,
        st: &mut CallState,
        what: (Collective, Algorithm, DType, Option<ReduceOp>, usize, usize),
        body: impl FnOnce(CallInfo, Option<&Mutex<PeerStats>>) -> Result<()>,
    ) -> Result<()> {
        let (coll, algo, dtype, op, count, bytes) = what;
        st.seq += 1;
        let call = CallInfo {
            seq: st.seq,
            dtype,
            op,
            count,
        };
        let t0 = std::time::Instant::now();
        if let Some(c) = &self.control {
            self.probe.reset();
            c.enter(call.seq, coll.name(), algo.name(), bytes as u64);
        }
        // Traffic per peer only for the timeline (one clock read per wait otherwise saved).
        let stats = self
            .timeline
            .as_ref()
            .map(|_| Mutex::new(PeerStats::new(self.nranks)));
        let r = body(call, stats.as_ref());
        if let Some(c) = &self.control {
            c.leave(call.seq);
        }
        if let Some(v) = &mut *self.busy.lock().unwrap_or_else(|e| e.into_inner()) {
            let epoch = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            };
            let end = std::time::SystemTime::now();
            v.push((epoch(end - t0.elapsed()), epoch(end)));
        }
        if let (Some(tl), Some(stats)) = (&self.timeline, stats) {
            let st = stats.into_inner().unwrap_or_else(|e| e.into_inner());
            tl.complete(
                coll.name(),
                t0,
                std::time::Instant::now(),
                serde_json::json!({
                    "seq": call.seq, "bytes": bytes, "count": count,
                    "dtype": dtype.name(), "op": op.map(|o| o.name()), "algo": algo.name(),
                    "ranks": self.nranks, "ok": r.is_ok(),
                    "peers": crate::timeline::peer_rows(&st),
                }),
            );
            // Its phases, one row per lane under the collective's.
            for p in &st.phases {
                tl.complete_on(
                    p.lane + 1,
                    &format!("{} {}", coll.name(), p.name),
                    p.start,
                    p.end,
                    serde_json::json!({"seq": call.seq, "lane": p.lane, "steps": p.steps}),
                );
            }
        }
        if let Err(e) = &r {
            if !matches!(e, Error::InvalidArgument(_)) {
                *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
            self.log
                .warn(&format!("{} #{} failed: {e}", coll.name(), call.seq));
            return r;
        }
        if let Some(s) = &self.call_stats {
            s.record(coll.name(), algo.name(), bytes, t0.elapsed().as_secs_f64());
        }
        if log_enabled(&self.log, acspeed_core::config::LogLevel::Trace) {
            self.log.trace(&format!(
                "{} #{} {} x {} via {} in {:?}",
                coll.name(),
                call.seq,
                count,
                dtype,
                algo.name(),
                t0.elapsed()
            ));
        }
        Ok(())
    }

    /// In-place allreduce of `bytes` bytes of `dtype` that this process cannot address
    /// directly (a device buffer), read and written through `io` straight into and out of
    /// the host's CPU-Reduce staging area: no host bounce buffer in between. It applies when
    /// the algorithm for this size is `cpu_reduce` and its plan is one `HostReduce` among all
    /// ranks (one host, one staging domain); otherwise, and for `Avg` or while
    /// `ACSPEED_AUTOTUNE` is on, it returns `Ok(false)` having done nothing, and the caller
    /// stages the buffer through host memory. The decision depends only on what every rank
    /// agreed on at init, so all ranks take the same path.
    pub fn allreduce_through_stage(
        &self,
        io: &dyn acspeed_core::StageIo,
        bytes: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<bool> {
        self.check_usable()?;
        op.check_dtype(dtype)?;
        let count = Self::elems("allreduce", dtype, bytes, "data")?;
        let (Some(stage), None) = (self.staging.as_deref(), self.policy.tuner()) else {
            return Ok(false);
        };
        if op == ReduceOp::Avg || count == 0 {
            return Ok(false);
        }
        let coll = Collective::AllReduce;
        let algo = self.decide(coll, bytes).algorithm;
        if algo != Algorithm::CpuReduce {
            return Ok(false);
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.plan(&mut st, coll, algo, bytes)?;
        let whole = matches!(
            &plan.lanes[..],
            [lane] if plan.output_chunks == 1 && matches!(
                &lane.steps[..],
                [step] if matches!(step.op, acspeed_core::plan::Op::HostReduce { group, to, .. }
                    if group == to && group.iter().eq(stage.group().iter().copied()))
            )
        );
        if !whole {
            return Ok(false);
        }
        self.pin_stage(stage, io);
        let what = (coll, algo, dtype, Some(op), count, bytes);
        self.tracked(&mut st, what, |call, _| {
            let call = acspeed_core::StageCall {
                len: bytes,
                dtype,
                op,
                seq: call.seq,
                count: count as u64,
                copy_out: true,
                timeout: self.cfg.job.timeout,
            };
            // SAFETY: the caller's `io` serves 0..bytes until we return.
            unsafe { stage.host_reduce_io(io, &call) }
        })?;
        Ok(true)
    }

    /// In-place allreduce of a byte buffer holding `dtype` elements.
    pub fn allreduce_bytes(&self, data: &mut [u8], dtype: DType, op: ReduceOp) -> Result<()> {
        let n = Self::elems("allreduce", dtype, data.len(), "data")?;
        self.run(Collective::AllReduce, dtype, Some(op), n, &[], data)
    }

    /// In-place broadcast from `root`.
    pub fn broadcast_bytes(&self, data: &mut [u8], dtype: DType, root: u32) -> Result<()> {
        self.check_root("broadcast", root)?;
        let n = Self::elems("broadcast", dtype, data.len(), "data")?;
        self.run(
            Collective::Broadcast { root: Rank(root) },
            dtype,
            None,
            n,
            &[],
            data,
        )
    }

    /// In-place reduce to `root` (other ranks' buffers hold partial results afterwards).
    pub fn reduce_bytes(
        &self,
        data: &mut [u8],
        dtype: DType,
        op: ReduceOp,
        root: u32,
    ) -> Result<()> {
        self.check_root("reduce", root)?;
        let n = Self::elems("reduce", dtype, data.len(), "data")?;
        self.run(
            Collective::Reduce { root: Rank(root) },
            dtype,
            Some(op),
            n,
            &[],
            data,
        )
    }

    /// `output` (n x input) receives every rank's `input`, in rank order.
    pub fn allgather_bytes(&self, input: &[u8], output: &mut [u8], dtype: DType) -> Result<()> {
        let n = Self::elems("allgather", dtype, input.len(), "input")?;
        if output.len() != input.len() * self.nranks as usize {
            return Err(Error::invalid(format!(
                "allgather: output has {} bytes but must be {} (input {} x {} ranks)",
                output.len(),
                input.len() * self.nranks as usize,
                input.len(),
                self.nranks
            )));
        }
        self.run(Collective::AllGather, dtype, None, n, input, output)
    }

    /// `output` receives this rank's block of the reduction of every rank's `input` (n x output).
    pub fn reduce_scatter_bytes(
        &self,
        input: &[u8],
        output: &mut [u8],
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let n = Self::elems("reduce_scatter", dtype, output.len(), "output")?;
        if input.len() != output.len() * self.nranks as usize {
            return Err(Error::invalid(format!(
                "reduce_scatter: input has {} bytes but must be {} (output {} x {} ranks)",
                input.len(),
                output.len() * self.nranks as usize,
                output.len(),
                self.nranks
            )));
        }
        self.run(Collective::ReduceScatter, dtype, Some(op), n, input, output)
    }

    /// Block `j` of `input` goes to rank `j`; block `j` of `output` comes from rank `j`.
    pub fn alltoall_bytes(&self, input: &[u8], output: &mut [u8], dtype: DType) -> Result<()> {
        let total = Self::elems("alltoall", dtype, input.len(), "input")?;
        if input.len() != output.len() || total % self.nranks as usize != 0 {
            return Err(Error::invalid(format!("alltoall: input ({} bytes) and output ({} bytes) must be equal and split evenly into {} blocks of {dtype}", input.len(), output.len(), self.nranks)));
        }
        self.run(
            Collective::AllToAll,
            dtype,
            None,
            total / self.nranks as usize,
            input,
            output,
        )
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&self) -> Result<()> {
        self.run(Collective::Barrier, DType::U8, None, 0, &[], &mut [])
    }

    pub fn allreduce<T: Element>(&self, data: &mut [T], op: ReduceOp) -> Result<()> {
        self.allreduce_bytes(T::bytes_mut(data), T::DTYPE, op)
    }
    pub fn broadcast<T: Element>(&self, data: &mut [T], root: u32) -> Result<()> {
        self.broadcast_bytes(T::bytes_mut(data), T::DTYPE, root)
    }
    pub fn reduce<T: Element>(&self, data: &mut [T], op: ReduceOp, root: u32) -> Result<()> {
        self.reduce_bytes(T::bytes_mut(data), T::DTYPE, op, root)
    }
    pub fn allgather<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<()> {
        self.allgather_bytes(T::bytes(input), T::bytes_mut(output), T::DTYPE)
    }
    pub fn reduce_scatter<T: Element>(
        &self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        self.reduce_scatter_bytes(T::bytes(input), T::bytes_mut(output), T::DTYPE, op)
    }
    pub fn alltoall<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<()> {
        self.alltoall_bytes(T::bytes(input), T::bytes_mut(output), T::DTYPE)
    }

    /// Fails every operation in flight and poisons the communicator (peers see an error
    /// naming this rank with `reason`).
    pub fn abort(&self, reason: &str) {
        *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("aborted: {reason}"));
        self.transport.abort(reason);
        self.channels.iter().for_each(|t| t.abort(reason));
        if let Some(s) = &self.staging {
            s.abort(reason);
        }
    }

    /// In-place allreduce of `data` (host memory) whose input this rank supplies through
    /// `input` (e.g. a device buffer of the same length) instead of `data`: a CPU-Reduce plan
    /// whose host reduces come first reads it straight into the shared staging area, and
    /// `data` receives the result (then the rest of the plan, across domains, runs on it).
    /// `Ok(false)`, with nothing done, when this call would not run such a plan (another
    /// algorithm, no staging area, the autotuner deciding, a rank alone in its domain): the
    /// caller then fills `data` itself and calls [`allreduce_bytes`](Self::allreduce_bytes).
    pub fn allreduce_fed(
        &self,
        data: &mut [u8],
        input: &dyn acspeed_core::StageIo,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<bool> {
        self.check_usable()?;
        op.check_dtype(dtype)?;
        let count = Self::elems("allreduce", dtype, data.len(), "data")?;
        if !self.would_feed(data.len())? {
            return Ok(false);
        }
        if let Some(stage) = self.staging.as_deref() {
            self.pin_stage(stage, input);
        }
        let (coll, algo) = (Collective::AllReduce, Algorithm::CpuReduce);
        self.run_as(coll, algo, dtype, Some(op), count, &[], data, Some(input))?;
        Ok(true)
    }

    /// Whether [`allreduce_fed`](Self::allreduce_fed) of `bytes` would read its input through
    /// the staging area (the same answer on every call of that size).
    pub fn would_feed(&self, bytes: usize) -> Result<bool> {
        if self.staging.is_none() || self.policy.tuner().is_some() || bytes == 0 {
            return Ok(false);
        }
        let coll = Collective::AllReduce;
        if self.decide(coll, bytes).algorithm != Algorithm::CpuReduce {
            return Ok(false);
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.plan(&mut st, coll, Algorithm::CpuReduce, bytes)?;
        Ok(acspeed_core::executor::feeds_host_reduce(&plan))
    }

    /// Pins the staging area for `io`'s device once. A failure (e.g. the page-lock limit) is
    /// logged and not retried: the copies are then synchronous, but still right.
    fn pin_stage(&self, stage: &dyn HostStage, io: &dyn acspeed_core::StageIo) {
        let mut pin = self.stage_pin.lock().unwrap_or_else(|e| e.into_inner());
        if pin.is_some() {
            return;
        }
        let (ptr, len) = stage.area();
        // SAFETY: the area stays mapped while `self.staging` lives, and the guard is
        // dropped before it (field order).
        *pin = Some(match unsafe { io.pin(ptr, len) } {
            Ok(g) => g,
            Err(e) => {
                self.log.warn(&format!(
                    "could not pin the CPU-Reduce staging area ({len} bytes) for the device, so its copies are synchronous: {e}"
                ));
                None
            }
        });
    }

    /// Closes the timeline file (`ACSPEED_TIMELINE`) and logs the call statistics now, as
    /// dropping the communicator would. For owners that may never drop it: a torch backend is
    /// shut down, and its process may then exit without running destructors. Later
    /// collectives are neither traced nor counted.
    pub fn finish_reports(&self) {
        if let Some(t) = &self.timeline {
            t.finish();
        }
        if let Some(s) = &self.call_stats {
            s.finish();
        }
        // A table fill still running has nothing left to serve: stop it (and join its thread).
        drop(self.fill.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The call statistics so far, one line per collective, algorithm and size class (empty
    /// below `ACSPEED_DEBUG=INFO`).
    pub fn call_stats(&self) -> Vec<String> {
        self.call_stats
            .as_ref()
            .map(|s| s.lines())
            .unwrap_or_default()
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(why) = self
            .poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(Error::Aborted(format!(
                "rank {}: communicator unusable after an earlier error: {why}",
                self.rank
            )));
        }
        Ok(())
    }
}
