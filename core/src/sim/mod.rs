//! Discrete-event simulator: times the very plans the executor runs over a cluster model.
//!
//! Each rank's lanes advance through the steps of the very schedule the executor performs
//! ([`crate::schedule::lower`]): the plans are lowered once, with the executor's segment rule,
//! and the simulator only times the lowered steps. Receives posted ahead (the pipeline depth)
//! do not gate an arrival here: the transports buffer at least that many segments. A message between
//! two ranks is a fluid flow over the resources of its path ([`fluid`]): on a CPU host one
//! core's copy into the shared slot (the host's cores are one shared resource), between
//! hosts the sender's NIC egress and the receiver's ingress with the per-flow cap times the
//! streams, between GPUs the NVLink pair or the PCIe uplinks (and the inter-socket link for
//! SYS paths). Messages of one ordered pair go one at a time in FIFO order, as the
//! transports send them; each arrives one latency after its last byte left. A receiving
//! step takes segment `i` once it is in from every source, then spends CPU on it (the copy
//! out of the slot, or the reduction), then forwards it. Concurrent flows share every
//! resource max-min fairly, so contention (incast, a NIC shared by a host's ranks, cores
//! shared by more ranks than there are) shows up in the prediction.

pub mod cluster;
pub mod fluid;

pub use cluster::{Cluster, HostKind, HostModel, NetModel, GBPS};

use crate::error::{Error, Result};
use crate::plan::RankPlan;
use crate::schedule::{lower, Lowering, Schedule, SegOp};
use crate::topology::PathClass;
use fluid::{Fluid, ResId};
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// What a simulation needs beyond plans and cluster.
#[derive(Clone, Copy, Debug)]
pub struct SimParams {
    /// Per-rank element count (as the collective's API defines it).
    pub count: usize,
    pub elem_bytes: usize,
    /// The executor's segment size.
    pub segment_bytes: usize,
}

impl SimParams {
    /// The lowering the executor of a job on `hosts` hosts uses at this segment size.
    pub fn lowering(&self, hosts: usize) -> Lowering {
        Lowering::for_job(
            self.segment_bytes,
            crate::schedule::DEFAULT_PIPELINE_DEPTH,
            hosts,
        )
    }
}

/// The prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct SimResult {
    /// When the last rank finished, microseconds.
    pub time_us: f64,
    /// Messages simulated.
    pub messages: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Time(f64);
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Time {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.total_cmp(&self.0) // min-heap
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The next message of pair (a, b) on channel c has arrived.
    Arrive(usize, usize, u32),
}

#[derive(Clone, Copy, Debug)]
enum Token {
    /// A message of pair (a, b) on channel c has left the sender.
    Transfer(usize, usize, u32),
    /// CPU work of rank r, lane l finished.
    Work(usize, usize),
}

#[derive(Default)]
struct Pair {
    queue: VecDeque<usize>,
    active: bool,
    arrived: usize,
    consumed: usize,
}

#[derive(Default, Clone)]
struct LaneState {
    step: usize,
    seg: usize,
    busy: bool,
    started: bool,
    /// Work flows still running for the current step (a host reduce runs two).
    works: u32,
}

/// A host reduce's rendezvous: its group (sorted) and the occurrence among the members'.
type HostMeet = (Vec<u32>, usize);

struct Sim<'a> {
    scheds: &'a [Schedule],
    cl: &'a Cluster,
    /// Output bytes per rank (the shared-memory stream rate depends on the message size).
    coll_bytes: usize,
    fluid: Fluid,
    tokens: Vec<Token>,
    events: BinaryHeap<(Time, u64, Event)>,
    seq: u64,
    now: f64,
    /// FIFO pipes per (sender, receiver, channel).
    pairs: HashMap<(usize, usize, u32), Pair>,
    lanes: Vec<Vec<LaneState>>,
    cpu: Vec<ResId>,
    nic_out: Vec<ResId>,
    nic_in: Vec<ResId>,
    /// GPU hosts: per (host, local) PCIe out/in; per (host, socket, socket) one direction of
    /// the link between two sockets; NVLink pair directions; all created on first use.
    pcie: HashMap<(usize, u32), (ResId, ResId)>,
    sys: HashMap<(usize, u32, u32), ResId>,
    /// GPU hosts: per (host, socket) its DRAM, for paths through host memory.
    dram: HashMap<(usize, u32), ResId>,
    nv: HashMap<(usize, u32, u32), ResId>,
    messages: usize,
    /// Every message started, `(from, to, channel, bytes)`, when traced.
    trace: Option<Vec<Message>>,
    /// Per host: GPUs behind an NVSwitch (computed once; `path` runs for every message).
    switched: Vec<bool>,
    /// HostReduce rendezvous: (group, occurrence) -> members (rank, lane) arrived.
    host_wait: HashMap<HostMeet, Vec<(usize, usize)>>,
    host_done: Vec<usize>,
}

/// One simulated message: `(from, to, channel, bytes)`.
pub type Message = (u32, u32, u32, usize);

/// Predicts how long `plans` (one per rank) take on `cluster`, lowered as the executor of
/// that job lowers them.
pub fn simulate(plans: &[RankPlan], cluster: &Cluster, p: SimParams) -> Result<SimResult> {
    simulate_schedules(
        &lower_all(plans, cluster, p),
        cluster,
        p.count * p.elem_bytes,
        false,
    )
    .map(|(r, _)| r)
}

/// Every rank's plan lowered as the executor of a job on `cluster` lowers it.
fn lower_all(plans: &[RankPlan], cluster: &Cluster, p: SimParams) -> Vec<Schedule> {
    let low = p.lowering(cluster.hosts.len());
    plans
        .iter()
        .map(|pl| lower(pl, p.count, p.elem_bytes, low))
        .collect()
}

/// Every message the simulation of `plans` starts, `(from, to, channel, bytes)` in the order
/// the simulator puts them on the wire (per pair and channel, the transport's FIFO order).
pub fn message_trace(plans: &[RankPlan], cluster: &Cluster, p: SimParams) -> Result<Vec<Message>> {
    simulate_schedules(
        &lower_all(plans, cluster, p),
        cluster,
        p.count * p.elem_bytes,
        true,
    )
    .map(|(_, t)| t)
}

/// Times lowered schedules (one per rank) of a collective whose output is `coll_bytes` per
/// rank; with `trace`, also returns every message started.
pub fn simulate_schedules(
    scheds: &[Schedule],
    cluster: &Cluster,
    coll_bytes: usize,
    trace: bool,
) -> Result<(SimResult, Vec<Message>)> {
    if scheds.len() != cluster.nranks() {
        return Err(Error::invalid(format!(
            "simulate: {} plans for a cluster of {} ranks",
            scheds.len(),
            cluster.nranks()
        )));
    }
    let sized = cluster.at_size(coll_bytes);
    let cluster = &sized;
    let mut fluid = Fluid::new();
    let mut cpu = Vec::new();
    let (mut nic_out, mut nic_in) = (Vec::new(), Vec::new());
    for h in &cluster.hosts {
        cpu.push(fluid.add_resource(h.cores * h.copy_gbps * GBPS));
        nic_out.push(fluid.add_resource(cluster.net.nic_gbit / 8.0 * GBPS));
        nic_in.push(fluid.add_resource(cluster.net.nic_gbit / 8.0 * GBPS));
    }
    let mut sim = Sim {
        scheds,
        cl: cluster,
        coll_bytes,
        fluid,
        tokens: Vec::new(),
        events: BinaryHeap::new(),
        seq: 0,
        now: 0.0,
        pairs: HashMap::new(),
        lanes: scheds
            .iter()
            .map(|sc| vec![LaneState::default(); sc.lanes.len()])
            .collect(),
        cpu,
        nic_out,
        nic_in,
        pcie: HashMap::new(),
        sys: HashMap::new(),
        dram: HashMap::new(),
        nv: HashMap::new(),
        messages: 0,
        trace: trace.then(Vec::new),
        switched: cluster.hosts.iter().map(HostModel::nvswitch).collect(),
        host_wait: HashMap::new(),
        host_done: vec![0; scheds.len()],
    };
    for r in 0..scheds.len() {
        sim.pump_rank(r);
    }
    loop {
        let flow_dt = sim.fluid.next_finish();
        let ev_t = sim.events.peek().map(|(t, _, _)| t.0);
        let t_flow = flow_dt.map(|d| sim.now + d);
        let next = match (t_flow, ev_t) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => a.min(b),
        };
        if !next.is_finite() {
            return Err(Error::Plan(
                "simulate: flows that can never finish (a zero-capacity resource)".into(),
            ));
        }
        let done = sim.fluid.advance(next - sim.now);
        sim.now = next;
        for tok in done {
            sim.finish(tok);
        }
        while sim.events.peek().is_some_and(|(t, _, _)| t.0 <= sim.now) {
            let (_, _, Event::Arrive(a, b, c)) = sim.events.pop().expect("peeked");
            sim.pairs.get_mut(&(a, b, c)).expect("pair").arrived += 1;
            sim.pump_rank(b);
        }
    }
    // Every lane must have finished; otherwise the plans deadlock (the verifier says why).
    for (r, ls) in sim.lanes.iter().enumerate() {
        for (l, st) in ls.iter().enumerate() {
            if st.step < scheds[r].lanes[l].steps.len() {
                return Err(Error::Plan(format!(
                    "simulate: rank {r} lane {l} stuck at step {} (verify the plans)",
                    st.step
                )));
            }
        }
    }
    Ok((
        SimResult {
            time_us: sim.now,
            messages: sim.messages,
        },
        sim.trace.unwrap_or_default(),
    ))
}

impl Sim<'_> {
    fn token(&mut self, t: Token) -> usize {
        self.tokens.push(t);
        self.tokens.len() - 1
    }

    fn host(&self, r: usize) -> &HostModel {
        &self.cl.hosts[self.cl.host_of[r] as usize]
    }

    /// Starts CPU work for rank `r`, lane `l`: `bytes` processed at `gbps` by one core.
    fn work(&mut self, r: usize, l: usize, bytes: usize, gbps: f64) {
        let h = self.cl.host_of[r] as usize;
        let host = &self.cl.hosts[h];
        self.lanes[r][l].busy = true;
        self.lanes[r][l].works = 1;
        let tok = self.token(Token::Work(r, l));
        if matches!(host.kind, HostKind::Gpu { .. }) {
            // Device kernels: fast and off the CPU; model as one pass at device memory speed.
            self.fluid.start(bytes as f64, vec![], 500.0 * GBPS, tok);
            return;
        }
        // CPU work is counted in copy-equivalent bytes on the host's shared cores.
        let work = bytes as f64 * host.copy_gbps / gbps;
        self.fluid
            .start(work, vec![self.cpu[h]], host.copy_gbps * GBPS, tok);
    }

    /// Member `r`'s share of a host reduce of `bytes`: on a CPU host its copy in, its part of
    /// the reduction and its copy out, on the host's shared cores; on a GPU host the device
    /// copies down and up over the GPU's PCIe uplink (and the inter-socket link when its GPU
    /// sits on the other socket from the first member's), the three stages pipelined so the
    /// slowest resource sets the pace (host reduction on many cores is not the bottleneck).
    fn host_reduce_work(&mut self, r: usize, l: usize, first: usize, bytes: usize, out: bool) {
        let h = self.cl.host_of[r] as usize;
        let host = &self.cl.hosts[h];
        let copies = if out { 2.0 } else { 1.0 };
        let HostKind::Gpu { model, .. } = &host.kind else {
            let mine = copies / host.copy_gbps + 1.0 / host.reduce_gbps;
            // Measured end to end where calibrated: cache-line hand-offs between the members
            // (ordinary stores into lines the others last held) cost far more than the
            // copies themselves below the streaming size (2 ranks, 1 MiB: 1.7 GB/s against a
            // 12 GB/s copy). The measurement copies out on every member; one that does not
            // saves that copy's share.
            let rate = match host.stage_rate(bytes) {
                m if m > 0.0 => m * (2.0 / host.copy_gbps + 1.0 / host.reduce_gbps) / mine,
                _ => 1.0 / mine,
            };
            // Plus the members' rendezvous, about one shared-memory message: counted as
            // work at the same rate, so it shares the cores as the spinning waiters do.
            let fixed = (host.latency_us * rate * 1e3) as usize;
            self.work(r, l, bytes + fixed, rate);
            return;
        };
        let (g, g0) = (self.cl.local_of[r], self.cl.local_of[first]);
        let up = model.pcie_gbps.get(g as usize).copied().unwrap_or(12.0);
        let fl = &mut self.fluid;
        let (o, i) = *self
            .pcie
            .entry((h, g))
            .or_insert_with(|| (fl.add_resource(up * GBPS), fl.add_resource(up * GBPS)));
        // Down over the uplink into the staging area (on the first member's socket), and up
        // again for a member that takes the result: two flows, each crossing the sockets'
        // link in its direction when the GPU is on the other socket.
        let (down, back) = (self.socket_link(h, g, g0), self.socket_link(h, g0, g));
        // The staging area's DRAM (the first member's socket) takes each copy once.
        let dram = self.host_memory(h, g0);
        let flows: Vec<(ResId, Option<ResId>)> = if out {
            vec![(o, down), (i, back)]
        } else {
            vec![(o, down)]
        };
        self.lanes[r][l].busy = true;
        self.lanes[r][l].works = flows.len() as u32;
        for (link, sys) in flows {
            let tok = self.token(Token::Work(r, l));
            let res = std::iter::once(link).chain(sys).chain(dram).collect();
            self.fluid.start(bytes as f64, res, up * GBPS, tok);
        }
    }

    /// One direction of the link between the sockets of GPUs `a` and `b` of GPU host `h`
    /// (none when they share a socket: `SYS` between NUMA nodes of one package crosses no
    /// such link).
    fn socket_link(&mut self, h: usize, a: u32, b: u32) -> Option<ResId> {
        let host = &self.cl.hosts[h];
        let HostKind::Gpu { model, .. } = &host.kind else {
            return None;
        };
        let sockets = host.gpu_sockets();
        let (sa, sb) = (sockets.get(a as usize)?, sockets.get(b as usize)?);
        if sa == sb {
            return None;
        }
        let rate = model.socket_gbps;
        let fl = &mut self.fluid;
        Some(
            *self
                .sys
                .entry((h, *sa, *sb))
                .or_insert_with(|| fl.add_resource(rate * GBPS)),
        )
    }

    /// The DRAM of the socket of GPU `g` of GPU host `h`.
    fn host_memory(&mut self, h: usize, g: u32) -> Option<ResId> {
        let host = &self.cl.hosts[h];
        let HostKind::Gpu { model, .. } = &host.kind else {
            return None;
        };
        if model.host_memory_gbps <= 0.0 {
            return None;
        }
        let socket = *host.gpu_sockets().get(g as usize)?;
        let rate = model.host_memory_gbps;
        let fl = &mut self.fluid;
        Some(
            *self
                .dram
                .entry((h, socket))
                .or_insert_with(|| fl.add_resource(rate * GBPS)),
        )
    }

    fn send(&mut self, a: usize, b: usize, c: u32, len: usize) {
        self.messages += 1;
        if let Some(t) = &mut self.trace {
            t.push((a as u32, b as u32, c, len));
        }
        self.pairs
            .entry((a, b, c))
            .or_default()
            .queue
            .push_back(len);
        self.kick(a, b, c);
    }

    /// Starts the next queued message of pair (a, b) on channel c if none is on the wire
    /// (channels are separate pipes, so they share the path's resources concurrently).
    fn kick(&mut self, a: usize, b: usize, c: u32) {
        let pair = self.pairs.get_mut(&(a, b, c)).expect("pair");
        if pair.active {
            return;
        }
        let Some(len) = pair.queue.pop_front() else {
            return;
        };
        pair.active = true;
        let (res, weight, cap) = self.path(a, b);
        let tok = self.token(Token::Transfer(a, b, c));
        self.fluid.start(len as f64 * weight, res, cap, tok);
    }

    /// Resources, work per byte (flow units per byte moved) and per-flow cap (flow units per
    /// us) of a message from a to b.
    fn path(&mut self, a: usize, b: usize) -> (Vec<ResId>, f64, f64) {
        let (ha, hb) = (self.cl.host_of[a] as usize, self.cl.host_of[b] as usize);
        if ha != hb {
            let net = &self.cl.net;
            let cap = net
                .flow_gbit
                .map(|f| f / 8.0 * GBPS * net.streams as f64)
                .unwrap_or(f64::INFINITY);
            return (vec![self.nic_out[ha], self.nic_in[hb]], 1.0, cap);
        }
        let host = &self.cl.hosts[ha];
        match &host.kind {
            HostKind::Cpu => {
                // A message through shared memory is two copies' work on the host's cores
                // (the sender's in, the receiver's out or its reduce), so ranks beyond the
                // core count slow one another down; one stream goes no faster than the
                // measured stream rate.
                let rate = host.shm_rate(self.coll_bytes);
                (vec![self.cpu[ha]], 2.0, 2.0 * rate * GBPS)
            }
            HostKind::Gpu { model, .. } => {
                let (la, lb) = (self.cl.local_of[a], self.cl.local_of[b]);
                let (bw, class) = Cluster::gpu_path(model, la, lb);
                if let PathClass::NV(_) = class {
                    let fl = &mut self.fluid;
                    if self.switched[ha] {
                        // Behind an NVSwitch, `NV#` is a GPU's links to the switch, shared by
                        // all its peers: flows share the sender's egress and receiver's ingress.
                        let o = *self
                            .nv
                            .entry((ha, la, u32::MAX))
                            .or_insert_with(|| fl.add_resource(bw * GBPS));
                        let fl = &mut self.fluid;
                        let i = *self
                            .nv
                            .entry((ha, u32::MAX, lb))
                            .or_insert_with(|| fl.add_resource(bw * GBPS));
                        return (vec![o, i], 1.0, f64::INFINITY);
                    }
                    let r = *self
                        .nv
                        .entry((ha, la, lb))
                        .or_insert_with(|| fl.add_resource(bw * GBPS));
                    return (vec![r], 1.0, f64::INFINITY);
                }
                // PCIe, peer to peer or through host memory (NCCL's SHM transport): out of
                // the sender's own link and into the receiver's, across the sockets' link
                // when the path is SYS.
                let mut res = Vec::new();
                for (g, out) in [(la, true), (lb, false)] {
                    let up = model.pcie_gbps.get(g as usize).copied().unwrap_or(bw);
                    let fl = &mut self.fluid;
                    let (o, i) = *self.pcie.entry((ha, g)).or_insert_with(|| {
                        (fl.add_resource(up * GBPS), fl.add_resource(up * GBPS))
                    });
                    res.push(if out { o } else { i });
                }
                if class == PathClass::SYS {
                    res.extend(self.socket_link(ha, la, lb));
                }
                let direct = model
                    .p2p
                    .get(la as usize)
                    .and_then(|r| r.get(lb as usize))
                    .copied()
                    .unwrap_or(false);
                if let Some(m) = self.host_memory(ha, lb).filter(|_| !direct) {
                    // Through host memory (the receiver's socket): written and read there,
                    // so the flow counts twice on it (the fluid model weighs repeats).
                    res.extend([m, m]);
                }
                (res, 1.0, bw * GBPS)
            }
        }
    }

    fn finish(&mut self, tok: usize) {
        match self.tokens[tok] {
            Token::Transfer(a, b, c) => {
                let lat = if self.cl.host_of[a] == self.cl.host_of[b] {
                    self.host(b).latency_us
                } else {
                    self.cl.net.latency_us
                };
                self.seq += 1;
                self.events
                    .push((Time(self.now + lat), self.seq, Event::Arrive(a, b, c)));
                self.pairs.get_mut(&(a, b, c)).expect("pair").active = false;
                self.kick(a, b, c);
            }
            Token::Work(r, l) => {
                let st = &mut self.lanes[r][l];
                st.works = st.works.saturating_sub(1);
                if st.works == 0 {
                    st.busy = false;
                    self.after_work(r, l);
                    self.pump_rank(r);
                }
            }
        }
    }

    fn deps_met(&self, r: usize, l: usize) -> bool {
        let st = &self.scheds[r].lanes[l].steps[self.lanes[r][l].step];
        st.deps
            .iter()
            .all(|d| self.lanes[r][d.lane as usize].step > d.step as usize)
    }

    fn pump_rank(&mut self, r: usize) {
        // Lanes may unblock one another through dependencies: loop until nothing moves.
        loop {
            let mut moved = false;
            for l in 0..self.scheds[r].lanes.len() {
                moved |= self.pump(r, l);
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances lane (r, l) as far as it can; true when it moved.
    fn pump(&mut self, r: usize, l: usize) -> bool {
        let scheds = self.scheds;
        let mut moved = false;
        loop {
            let st = self.lanes[r][l].clone();
            let lane = &scheds[r].lanes[l];
            let Some(step) = lane.steps.get(st.step) else {
                return moved;
            };
            if st.busy {
                return moved;
            }
            if !st.started {
                if !self.deps_met(r, l) {
                    return moved;
                }
                self.lanes[r][l].started = true;
            }
            let ch = lane.channel;
            match &step.op {
                SegOp::Move { from, to, segs, .. } if from.is_empty() => {
                    for s in segs.iter() {
                        for t in to.iter() {
                            self.send(r, t.idx(), ch, s.len());
                        }
                    }
                    self.next_step(r, l);
                }
                SegOp::HostReduce { range, group, .. } => {
                    let mut key: Vec<u32> = group.iter().map(|g| g.0).collect();
                    key.sort();
                    let k = (key, self.host_done[r]);
                    let w = self.host_wait.entry(k.clone()).or_default();
                    if !w.contains(&(r, l)) {
                        w.push((r, l));
                    }
                    if w.len() < k.0.len() {
                        return moved;
                    }
                    let members = self.host_wait.remove(&k).expect("just filled");
                    let first = members.iter().map(|m| m.0).min().expect("a member");
                    for (m, ml) in members {
                        self.host_done[m] += 1;
                        // Each member's own step says whether it copies the result out.
                        let out = match &scheds[m].lanes[ml].steps[self.lanes[m][ml].step].op {
                            SegOp::HostReduce { copy_out, .. } => *copy_out,
                            _ => true,
                        };
                        self.host_reduce_work(m, ml, first, range.len(), out);
                    }
                    return true;
                }
                SegOp::Local { reduce, len, .. } => {
                    let host = self.host(r);
                    let rate = if *reduce {
                        host.reduce_gbps
                    } else {
                        host.copy_gbps
                    };
                    self.work(r, l, *len, rate);
                    // after_work advances the step once the work is done.
                    return true;
                }
                SegOp::Move {
                    from, reduce, segs, ..
                } => {
                    let i = st.seg;
                    let ready = from.iter().all(|s| {
                        self.pairs
                            .get(&(s.idx(), r, ch))
                            .is_some_and(|p| p.arrived > p.consumed)
                    });
                    if !ready {
                        return moved;
                    }
                    for s in from.iter() {
                        self.pairs
                            .get_mut(&(s.idx(), r, ch))
                            .expect("pair")
                            .consumed += 1;
                    }
                    let len = segs.get(i).len();
                    // CPU time to take the segment in: a reduction pass per source, except
                    // that the first shared-memory source is reduced straight out of its slot
                    // (that pass is part of the measured stream rate). Copies are part of
                    // the transfer on every path.
                    let host = self.host(r);
                    let intra = from
                        .iter()
                        .any(|s| self.cl.host_of[s.idx()] == self.cl.host_of[r]);
                    let work = if *reduce {
                        len * (from.len() - usize::from(intra))
                    } else {
                        0
                    };
                    let rate = host.reduce_gbps;
                    if work > 0 {
                        self.work(r, l, work, rate);
                        return true;
                    }
                    self.after_work(r, l);
                }
            }
            moved = true;
        }
    }

    /// A step's work (a local op, or one received segment's processing) finished.
    fn after_work(&mut self, r: usize, l: usize) {
        let st = self.lanes[r][l].clone();
        let lane = &self.scheds[r].lanes[l];
        let SegOp::Move { to, segs, .. } = &lane.steps[st.step].op else {
            self.next_step(r, l);
            return;
        };
        let len = segs.get(st.seg).len();
        for t in to.iter() {
            self.send(r, t.idx(), lane.channel, len);
        }
        if st.seg + 1 >= segs.count() {
            self.next_step(r, l);
        } else {
            self.lanes[r][l].seg += 1;
        }
    }

    fn next_step(&mut self, r: usize, l: usize) {
        let st = &mut self.lanes[r][l];
        st.step += 1;
        st.seg = 0;
        st.started = false;
    }
}

#[cfg(test)]
mod tests;
