//! One lowering for the executor and the simulator: for every algorithm, collective and job
//! shape (uneven hosts, n-trees on a cube-mesh, CPU-Reduce's staging groups), the messages
//! the in-memory transport carries when the executor runs the plans — per (sender, receiver,
//! channel), in order, with their lengths — are exactly the messages the simulator times.
//! Allreduces are also checked for exact sums, so the stream that matches is a correct one.

use acspeed_algorithms::Algorithm;
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor, StageUse};
use acspeed_core::plan::{Collective, Op, RankPlan};
use acspeed_core::sim::{message_trace, Cluster, HostModel, Message, NetModel, SimParams};
use acspeed_core::transport::OpHandle;
use acspeed_core::{
    DType, FrameHeader, HostStage, PlanContext, Rank, ReduceOp, StageCall, StageIo, Transport,
};
use acspeed_testkit::MemoryTransport;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Messages per (from, to, channel), lengths in order.
type Stream = BTreeMap<(u32, u32, u32), Vec<usize>>;

/// An in-memory endpoint that logs every message it sends.
struct Recording {
    inner: MemoryTransport,
    channel: u32,
    log: Arc<Mutex<Vec<Message>>>,
}

impl Transport for Recording {
    fn rank(&self) -> Rank {
        self.inner.rank()
    }
    fn nranks(&self) -> u32 {
        self.inner.nranks()
    }
    fn name(&self, peer: Rank) -> String {
        self.inner.name(peer)
    }
    unsafe fn post_send(
        &self,
        to: Rank,
        hdr: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> acspeed_core::Result<OpHandle> {
        assert_eq!(
            hdr.channel as u32, self.channel,
            "header names another channel"
        );
        self.log
            .lock()
            .unwrap()
            .push((self.inner.rank().0, to.0, self.channel, len));
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.post_send(to, hdr, data, len) }
    }
    unsafe fn post_recv(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
    ) -> acspeed_core::Result<OpHandle> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.post_recv(from, hdr, data) }
    }
    fn peek(&self, from: Rank) -> acspeed_core::Result<Option<FrameHeader>> {
        self.inner.peek(from)
    }
    fn can_recv_reduce(&self, from: Rank) -> bool {
        self.inner.can_recv_reduce(from)
    }
    unsafe fn post_recv_reduce(
        &self,
        from: Rank,
        hdr: FrameHeader,
        data: *mut u8,
        dtype: DType,
        op: ReduceOp,
    ) -> acspeed_core::Result<OpHandle> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.post_recv_reduce(from, hdr, data, dtype, op) }
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
}

/// A host staging area for threads: members deposit their bytes, the last to arrive reduces
/// them in group order, and each member that asks copies the result out.
struct ThreadStage {
    group: Vec<Rank>,
    me: usize,
    shared: Arc<(Mutex<StageState>, Condvar)>,
}

#[derive(Default)]
struct StageState {
    generation: u64,
    parts: Vec<Option<Vec<u8>>>,
    result: Option<Vec<u8>>,
    taken: usize,
}

impl HostStage for ThreadStage {
    fn group(&self) -> &[Rank] {
        &self.group
    }
    unsafe fn host_reduce(&self, data: *mut u8, call: &StageCall) -> acspeed_core::Result<()> {
        let (m, cv) = &*self.shared;
        let n = self.group.len();
        let mut st = m.lock().unwrap();
        // The previous reduction must be fully taken before this one starts.
        while st.result.is_some() {
            st = cv.wait(st).unwrap();
        }
        st.parts.resize(n, None);
        // SAFETY: the executor hands a range of `call.len` valid bytes.
        st.parts[self.me] = Some(unsafe { std::slice::from_raw_parts(data, call.len) }.to_vec());
        let generation = st.generation;
        if st.parts.iter().all(Option::is_some) {
            let parts: Vec<Vec<u8>> = st.parts.iter_mut().map(|p| p.take().unwrap()).collect();
            let mut acc = parts[0].clone();
            for p in &parts[1..] {
                acspeed_core::kernels::reduce(call.dtype, call.op, &mut acc, p);
            }
            st.result = Some(acc);
            st.generation += 1;
            cv.notify_all();
        }
        while st.generation == generation {
            st = cv.wait(st).unwrap();
        }
        if call.copy_out {
            let r = st.result.as_ref().expect("reduced");
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), data, call.len) };
        }
        st.taken += 1;
        if st.taken == n {
            st.taken = 0;
            st.result = None;
            cv.notify_all();
        }
        Ok(())
    }
    unsafe fn host_reduce_io(&self, _: &dyn StageIo, _: &StageCall) -> acspeed_core::Result<()> {
        Err(acspeed_core::Error::invalid("not used by this test"))
    }
    fn area(&self) -> (*mut u8, usize) {
        (std::ptr::null_mut(), 0)
    }
    fn abort(&self, _: &str) {}
}

fn x(r: usize, i: usize) -> i64 {
    (r as i64 + 1) * 1000 + (i as i64 % 997)
}

/// Runs the plans on threads over recording in-memory transports; returns the stream and,
/// for in-place collectives, every rank's output.
fn execute(plans: &[RankPlan], count: usize, seg: usize, hosts: usize, fused: bool) -> Stream {
    let n = plans.len() as u32;
    let channels = plans.iter().map(|p| p.channels()).max().unwrap_or(1);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut fabrics: Vec<Vec<Recording>> = (0..n).map(|_| Vec::new()).collect();
    for c in 0..channels {
        for (r, t) in MemoryTransport::fabric_with(n, fused)
            .into_iter()
            .enumerate()
        {
            fabrics[r].push(Recording {
                inner: t,
                channel: c,
                log: log.clone(),
            });
        }
    }
    // One staging area per host-reduce group.
    let mut stages: BTreeMap<Vec<u32>, Arc<(Mutex<StageState>, Condvar)>> = BTreeMap::new();
    let group_of = |p: &RankPlan| {
        p.lanes
            .iter()
            .flat_map(|l| &l.steps)
            .find_map(|s| match s.op {
                Op::HostReduce { group, .. } => {
                    let mut g: Vec<u32> = group.iter().map(|r| r.0).collect();
                    g.sort();
                    Some(g)
                }
                _ => None,
            })
    };
    for p in plans {
        if let Some(g) = group_of(p) {
            stages.entry(g).or_default();
        }
    }
    let exe = Executor::new(ExecParams {
        segment_bytes: seg,
        depth: 2,
        timeout: Duration::from_secs(30),
        stall_warn: Duration::ZERO,
        min_segments: acspeed_core::schedule::min_segments(hosts),
    });
    let coll = plans[0].collective;
    let (ie, oe) = coll.buffer_elems(n as usize, count);
    let outs: Vec<Vec<i64>> = std::thread::scope(|s| {
        let hs: Vec<_> = plans
            .iter()
            .zip(&fabrics)
            .enumerate()
            .map(|(r, (plan, ts))| {
                let exe = &exe;
                let stage = group_of(plan).map(|g| ThreadStage {
                    me: g.iter().position(|m| *m == r as u32).unwrap(),
                    group: g.iter().map(|m| Rank(*m)).collect(),
                    shared: stages[&g].clone(),
                });
                s.spawn(move || {
                    let input: Vec<i64> = (0..ie).map(|i| x(r, i)).collect();
                    let mut out: Vec<i64> = (0..oe).map(|i| x(r, i)).collect();
                    let bufs = Buffers {
                        input: input.as_ptr() as *const u8,
                        input_len: ie * 8,
                        output: out.as_mut_ptr() as *mut u8,
                        output_len: oe * 8,
                    };
                    let reduces = matches!(
                        coll,
                        Collective::AllReduce
                            | Collective::Reduce { .. }
                            | Collective::ReduceScatter
                    );
                    let call = CallInfo {
                        seq: 1,
                        dtype: DType::I64,
                        op: reduces.then_some(ReduceOp::Sum),
                        count,
                    };
                    let chans: Vec<&dyn Transport> =
                        ts.iter().map(|t| t as &dyn Transport).collect();
                    let staging = stage.as_ref().map(|s| StageUse::area(s as &dyn HostStage));
                    exe.run_with(plan, &chans, staging, call, bufs, None)
                        .unwrap_or_else(|e| panic!("rank {r}: {e}"));
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if coll == Collective::AllReduce {
        for (r, o) in outs.iter().enumerate() {
            for (i, v) in o.iter().enumerate() {
                let want: i64 = (0..n as usize).map(|q| x(q, i)).sum();
                assert_eq!(*v, want, "rank {r} element {i}");
            }
        }
    }
    let mut stream = Stream::new();
    for (a, b, c, len) in log.lock().unwrap().iter() {
        stream.entry((*a, *b, *c)).or_default().push(*len);
    }
    stream
}

fn simulated(plans: &[RankPlan], shape: &[u32], count: usize, seg: usize) -> Stream {
    let hosts = vec![HostModel::cpu(4.0, 10.0, 10.0, 1.0); shape.len()];
    let net = NetModel {
        nic_gbit: 10.0,
        flow_gbit: None,
        streams: 1,
        latency_us: 10.0,
    };
    let cl = Cluster::new(hosts, shape, net).unwrap();
    let p = SimParams {
        count,
        elem_bytes: 8,
        segment_bytes: seg,
    };
    let mut stream = Stream::new();
    for (a, b, c, len) in message_trace(plans, &cl, p).unwrap() {
        stream.entry((a, b, c)).or_default().push(len);
    }
    stream
}

/// Job shapes: one host, even and uneven hosts, one rank per host, an NVLink cube-mesh.
fn context(shape: usize) -> (Vec<u32>, PlanContext) {
    let shapes: [&[u32]; 8] = [
        &[1],
        &[2],
        &[5],
        &[2, 2],
        &[3, 1, 2],
        &[2, 3],
        &[1, 1, 1],
        &[8],
    ];
    let s = shapes[shape % shapes.len()].to_vec();
    let mut ctx = PlanContext::from_shape(&s).unwrap();
    if shape % shapes.len() == 7 {
        ctx = ctx.with_nvlinks(crate::util::dgx1()).unwrap();
    }
    (s, ctx)
}

fn check(algo: Algorithm, shape: usize, coll: usize, count: usize, seg: usize, rounds: u32) {
    let (s, ctx) = context(shape);
    let colls = crate::util::collectives(ctx.nranks);
    let coll = colls[coll % colls.len()];
    if !algo.serves(coll) {
        return;
    }
    let plans = algo.all_plans_rounds(coll, &ctx, rounds).unwrap();
    let fused = count % 2 == 0;
    let ran = execute(&plans, count, seg, s.len(), fused);
    let sim = simulated(&plans, &s, count, seg);
    assert_eq!(
        ran,
        sim,
        "{} {} on {s:?}, count {count}, segment {seg}, {rounds} rounds",
        algo.name(),
        coll.name()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn executor_and_simulator_see_the_same_messages(
        algo in 0..Algorithm::ALL.len(),
        shape in 0usize..8,
        coll in 0usize..6,
        count in prop_oneof![Just(0usize), 1usize..64, 64usize..40_000],
        seg in prop_oneof![Just(64usize), Just(1000), Just(4096), Just(64 << 10)],
        rounds in 1u32..=4,
    ) {
        check(Algorithm::ALL[algo], shape, coll, count, seg, rounds);
    }
}

/// Every algorithm on every shape at least once, with chunks long enough for the minimum
/// segment count across hosts (128 KiB and more).
#[test]
fn every_algorithm_and_shape_streams_alike() {
    for algo in Algorithm::ALL {
        for shape in 0..8 {
            check(algo, shape, 0, 70_000, 64 << 10, 2);
            check(algo, shape, 0, 3, 64, 1);
        }
    }
}
