//! Symbolic verification of a set of plans (one per rank), in the spirit of msccl-tools' checker.
//!
//! Every chunk holds a *multiset* of `(origin rank, origin chunk)` contributions. The verifier
//! runs all ranks' plans together over FIFO message queues, then checks the collective's
//! postcondition: an allreduce must leave each chunk on every rank with every rank's
//! contribution exactly once (missing *and* double reduction are caught). It also rejects
//! deadlocks, dependency cycles, out-of-bounds chunks, unmatched messages, sending
//! uninitialised data, breaking the one-lane-per-peer-and-channel matching rule, and (given a concrete
//! element count) messages whose sender and receiver chunk sizes differ.

use crate::error::{Error, Result};
use crate::plan::{Buf, ChunkRef, Collective, Op, RankPlan, StepId};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A symbolic chunk value: contribution -> multiplicity.
type Value = BTreeMap<(u32, u32), u32>;

struct Msg {
    value: Value,
    elems: Option<usize>,
    id: usize,
}

struct RankState {
    input: Vec<Option<Value>>,
    output: Vec<Option<Value>>,
    scratch: Vec<Option<Value>>,
}

impl RankState {
    fn slot(&mut self, c: ChunkRef) -> &mut Option<Value> {
        match c.buf {
            Buf::Input => &mut self.input[c.index as usize],
            Buf::Output => &mut self.output[c.index as usize],
            Buf::Scratch => &mut self.scratch[c.index as usize],
        }
    }
}

fn err(msg: String) -> Error {
    Error::Plan(msg)
}

fn single(r: u32, c: u32) -> Value {
    BTreeMap::from([((r, c), 1)])
}

/// How [`verify_with`] models the machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Per-rank element count for the concrete size check (`None`: symbolic only).
    pub count: Option<usize>,
    /// Bounded buffers: a send completes only once its receiver has taken the message, and a
    /// step that overwrites a chunk waits for every earlier send of that chunk to complete
    /// (what the executor's hazard check does). Catches plans that need unbounded transport
    /// buffers, e.g. a ring reduce-scatter with one scratch copy (see algorithms' ring.rs).
    pub bounded: bool,
}

/// Verifies `plans` (index = rank) with unbounded FIFOs. `count` enables the concrete size
/// check for that per-rank element count.
pub fn verify(plans: &[RankPlan], count: Option<usize>) -> Result<()> {
    verify_with(
        plans,
        VerifyOptions {
            count,
            bounded: false,
        },
    )
}

/// Verifies `plans` in both models: unbounded FIFOs and bounded buffers.
pub fn verify_all_models(plans: &[RankPlan], count: Option<usize>) -> Result<()> {
    verify(plans, count)?;
    verify_with(
        plans,
        VerifyOptions {
            count,
            bounded: true,
        },
    )
    .map_err(|e| err(format!("bounded-buffer model: {e}")))
}

pub fn verify_with(plans: &[RankPlan], opts: VerifyOptions) -> Result<()> {
    let n = plans.len();
    if n == 0 {
        return Err(err("no plans".into()));
    }
    let count = opts.count;
    let coll = plans[0].collective;
    for (r, p) in plans.iter().enumerate() {
        if p.rank.idx() != r || p.nranks as usize != n || p.collective != coll {
            return Err(err(format!(
                "plan at index {r} is for rank {} of {} ({}), expected rank {r} of {n} ({})",
                p.rank,
                p.nranks,
                p.collective.name(),
                coll.name()
            )));
        }
        check_structure(p)?;
        if p.weights != plans[0].weights || p.output_chunks != plans[0].output_chunks {
            return Err(err(format!(
                "rank {r} splits its output as {} chunks weighted {:?} but rank 0 as {} weighted {:?}; every rank must use the same layout",
                p.output_chunks, p.weights, plans[0].output_chunks, plans[0].weights
            )));
        }
    }
    check_lane_rule(plans)?;

    let elems_of =
        |p: &RankPlan, c: ChunkRef| -> Option<usize> { Some(p.chunk_elems(c, count?).len()) };

    // Initial symbolic state.
    let mut st: Vec<RankState> = plans
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let r = r as u32;
            let init = |k: u32, on: bool| (0..k).map(|i| on.then(|| single(r, i))).collect();
            RankState {
                input: init(p.input_chunks, coll.has_input()),
                output: init(p.output_chunks, !coll.has_input()),
                scratch: init(p.chunks_of(Buf::Scratch), false),
            }
        })
        .collect();

    // FIFO per (sender, receiver, channel).
    let mut queues: HashMap<(usize, usize, u32), VecDeque<Msg>> = HashMap::new();
    // Bounded model: messages sent but not yet taken, per sending rank: (chunk, id, to).
    let mut in_flight: Vec<Vec<(ChunkRef, usize, usize)>> = vec![Vec::new(); n];
    let mut next_id = 0usize;
    let mut pc: Vec<Vec<usize>> = plans.iter().map(|p| vec![0; p.lanes.len()]).collect();
    let done =
        |pc: &Vec<Vec<usize>>, r: usize, id: StepId| pc[r][id.lane as usize] > id.step as usize;
    // HostReduce rendezvous: (group, occurrence) -> members arrived, with their lane.
    let mut host_done: Vec<usize> = vec![0; n];
    let mut arrived: HashMap<(Vec<u32>, usize), BTreeMap<usize, usize>> = HashMap::new();

    loop {
        let mut progressed = false;
        let mut all_done = true;
        let mut hazards: Vec<String> = Vec::new();
        for r in 0..n {
            for l in 0..plans[r].lanes.len() {
                loop {
                    let lane = &plans[r].lanes[l];
                    let Some(step) = lane.steps.get(pc[r][l]) else {
                        break;
                    };
                    all_done = false;
                    if !step.deps.iter().all(|d| done(&pc, r, *d)) {
                        break;
                    }
                    let here = format!("rank {r} lane {l} step {}", pc[r][l]);
                    if let Op::HostReduce { group, .. } = step.op {
                        let mut key: Vec<u32> = group.iter().map(|g| g.0).collect();
                        key.sort();
                        let k = (key, host_done[r]);
                        arrived.entry(k.clone()).or_default().insert(r, l);
                        if arrived[&k].len() < k.0.len() {
                            break;
                        }
                        let members = arrived.remove(&k).expect("just checked");
                        host_reduce(plans, &mut st, &pc, &members, count, &here)?;
                        for (m, ml) in members {
                            pc[m][ml] += 1;
                            host_done[m] += 1;
                        }
                        progressed = true;
                        continue;
                    }
                    let ch = lane.channel;
                    let from = step.op.recv_peers();
                    if !from
                        .iter()
                        .all(|f| queues.get(&(f.idx(), r, ch)).is_some_and(|q| !q.is_empty()))
                    {
                        break;
                    }
                    if opts.bounded {
                        if let Some(w) = step.op.writes() {
                            if let Some((_, _, to)) = in_flight[r].iter().find(|(c, _, _)| *c == w)
                            {
                                hazards.push(format!(
                                    "{here} must overwrite chunk {w} while its send to rank {to} is not yet received"
                                ));
                                break;
                            }
                        }
                    }
                    let incoming: Vec<Msg> = from
                        .iter()
                        .map(|f| {
                            queues
                                .get_mut(&(f.idx(), r, ch))
                                .and_then(|q| q.pop_front())
                                .expect("checked non-empty")
                        })
                        .collect();
                    for (f, m) in from.iter().zip(&incoming) {
                        in_flight[f.idx()].retain(|(_, id, _)| *id != m.id);
                    }
                    let mine = step.op.writes().and_then(|c| elems_of(&plans[r], c));
                    let out_value = execute(&mut st[r], &step.op, incoming, mine, &here)?;
                    if let Some(value) = out_value {
                        let sent = step.op.sent_chunk().expect("a sending step");
                        let elems = elems_of(&plans[r], sent);
                        for to in step.op.send_peers() {
                            queues.entry((r, to.idx(), ch)).or_default().push_back(Msg {
                                value: value.clone(),
                                elems,
                                id: next_id,
                            });
                            if opts.bounded {
                                in_flight[r].push((sent, next_id, to.idx()));
                            }
                            next_id += 1;
                        }
                    }
                    pc[r][l] += 1;
                    progressed = true;
                }
            }
        }
        if all_done {
            break;
        }
        if !progressed {
            let stuck: Vec<String> = (0..n)
                .flat_map(|r| {
                    let pcr = &pc[r];
                    plans[r]
                        .lanes
                        .iter()
                        .enumerate()
                        .filter_map(move |(l, lane)| {
                            lane.steps
                                .get(pcr[l])
                                .map(|s| format!("rank {r} lane {l} step {} {:?}", pcr[l], s.op))
                        })
                })
                .take(6)
                .collect();
            let why = if hazards.is_empty() {
                String::new()
            } else {
                format!(" ({})", hazards[..hazards.len().min(3)].join("; "))
            };
            return Err(err(format!(
                "deadlock: no rank can progress{why}; stuck: {}",
                stuck.join("; ")
            )));
        }
    }
    if let Some(((a, b, c), q)) = queues.iter().find(|(_, q)| !q.is_empty()) {
        return Err(err(format!(
            "{} message(s) from rank {a} to rank {b} on channel {c} were never received",
            q.len()
        )));
    }
    check_post(coll, plans, &st)
}

/// Completes a `HostReduce` whose members (rank -> lane) have all arrived: each member's
/// chunk becomes the sum of all members' chunks.
fn host_reduce(
    plans: &[RankPlan],
    st: &mut [RankState],
    pc: &[Vec<usize>],
    members: &BTreeMap<usize, usize>,
    count: Option<usize>,
    here: &str,
) -> Result<()> {
    let mut total = Value::new();
    let mut elems = None;
    let mut dsts = Vec::new();
    let mut receivers: Option<Vec<u32>> = None;
    for (&m, &ml) in members {
        let op = plans[m].lanes[ml].steps[pc[m][ml]].op;
        let Op::HostReduce { dst, group, to } = op else {
            unreachable!("members arrived at a HostReduce");
        };
        let mut t: Vec<u32> = to.iter().map(|r| r.0).collect();
        t.sort();
        if receivers.as_ref().is_some_and(|x| *x != t) {
            return Err(err(format!(
                "{here}: rank {m} sends this host reduce's result to ranks {t:?}, another member to {:?}",
                receivers.unwrap_or_default()
            )));
        }
        receivers = Some(t);
        if group.len() != members.len() || !group.iter().all(|g| members.contains_key(&g.idx())) {
            return Err(err(format!(
                "{here}: rank {m} meets this host reduce with group {:?}, not {:?}",
                group,
                members.keys().collect::<Vec<_>>()
            )));
        }
        let e = count.map(|c| plans[m].chunk_elems(dst, c).len());
        if elems.is_some() && e != elems {
            return Err(err(format!(
                "{here}: host reduce of {e:?} elements on rank {m} but {elems:?} on another member"
            )));
        }
        elems = e;
        let v = st[m]
            .slot(dst)
            .clone()
            .ok_or_else(|| err(format!("{here}: rank {m} host-reduces uninitialised {dst}")))?;
        for (k, c) in v {
            *total.entry(k).or_default() += c;
        }
        dsts.push((m, dst));
    }
    let receivers = receivers.unwrap_or_default();
    for (m, dst) in dsts {
        if receivers.contains(&(m as u32)) {
            *st[m].slot(dst) = Some(total.clone());
        }
    }
    Ok(())
}

/// Runs one step on the symbolic state; returns the value to send, if the step sends.
fn execute(
    s: &mut RankState,
    op: &Op,
    incoming: Vec<Msg>,
    my_elems: Option<usize>,
    here: &str,
) -> Result<Option<Value>> {
    if let Some(mine) = my_elems {
        for m in &incoming {
            if m.elems != Some(mine) {
                return Err(err(format!(
                    "{here}: receives {:?} elements into a chunk of {mine}",
                    m.elems
                )));
            }
        }
    }
    let read = |s: &mut RankState, c: ChunkRef| -> Result<Value> {
        s.slot(c)
            .clone()
            .ok_or_else(|| err(format!("{here}: reads uninitialised chunk {c}")))
    };
    let add = |v: &mut Value, from: &Value| {
        for (k, c) in from {
            *v.entry(*k).or_default() += c;
        }
    };
    let sends = !op.send_peers().is_empty();
    let mut incoming = incoming.into_iter().map(|m| m.value);
    Ok(match *op {
        Op::Send { src, .. } => Some(read(s, src)?),
        Op::Copy { src, dst } => {
            let v = read(s, src)?;
            *s.slot(dst) = Some(v);
            None
        }
        Op::HostReduce { .. } => unreachable!("host reduces complete in the rendezvous"),
        Op::Reduce { src, dst } => {
            let mut v = read(s, dst)?;
            add(&mut v, &read(s, src)?);
            *s.slot(dst) = Some(v);
            None
        }
        _ => {
            let dst = op.chunks()[0];
            let v = if op.reduces() {
                let mut v = read(s, dst)?;
                incoming.for_each(|m| add(&mut v, &m));
                v
            } else {
                match incoming.next() {
                    Some(m) => m,
                    None => read(s, dst)?,
                }
            };
            *s.slot(dst) = Some(v.clone());
            sends.then_some(v)
        }
    })
}

fn check_structure(p: &RankPlan) -> Result<()> {
    let r = p.rank;
    if p.collective.has_input() != (p.input_chunks > 0)
        && !matches!(p.collective, Collective::Barrier)
    {
        return Err(err(format!(
            "rank {r}: input_chunks={} does not fit {}",
            p.input_chunks,
            p.collective.name()
        )));
    }
    // Chunk counts must fit the collective's buffer shapes (the postcondition indexes by them).
    let (n, i, o) = (p.nranks.max(1), p.input_chunks, p.output_chunks);
    let shape_ok = match p.collective {
        Collective::AllGather => i >= 1 && o == n * i,
        Collective::ReduceScatter => o >= 1 && i == n * o,
        Collective::AllToAll => i >= n && i % n == 0 && o == i,
        Collective::Barrier => o == n,
        _ => o >= 1,
    };
    if !p.weights.is_empty() && (p.weights.len() != o as usize || p.weights.iter().all(|w| *w == 0))
    {
        return Err(err(format!(
            "rank {r}: {} chunk weights for {o} output chunks (need one each, not all zero)",
            p.weights.len()
        )));
    }
    if !shape_ok || p.scratch_factor > 64 {
        return Err(err(format!(
            "rank {r}: {} input / {} output chunks (scratch x{}) do not fit {} on {} ranks",
            i,
            o,
            p.scratch_factor,
            p.collective.name(),
            p.nranks
        )));
    }
    for (l, lane) in p.lanes.iter().enumerate() {
        if lane.channel >= crate::plan::MAX_CHANNELS {
            return Err(err(format!(
                "rank {r} lane {l}: channel {} (at most {} channels)",
                lane.channel,
                crate::plan::MAX_CHANNELS
            )));
        }
        for (i, s) in lane.steps.iter().enumerate() {
            for c in s.op.chunks() {
                if c.index >= p.chunks_of(c.buf) {
                    return Err(err(format!(
                        "rank {r} lane {l} step {i}: chunk {c} out of bounds ({} chunks)",
                        p.chunks_of(c.buf)
                    )));
                }
            }
            let (from, to) = (s.op.recv_peers(), s.op.send_peers());
            for peer in from.iter().chain(&to) {
                if peer.0 >= p.nranks || *peer == r {
                    return Err(err(format!("rank {r} lane {l} step {i}: bad peer {peer}")));
                }
            }
            let dup = |v: &[crate::Rank]| (1..v.len()).any(|k| v[..k].contains(&v[k]));
            if dup(&from) || dup(&to) {
                return Err(err(format!(
                    "rank {r} lane {l} step {i}: a peer appears twice in {:?}",
                    s.op
                )));
            }
            if let Op::HostReduce { group, to, .. } = s.op {
                let g = group.to_vec();
                if !g.contains(&r)
                    || dup(&g)
                    || g.iter().any(|q| q.0 >= p.nranks)
                    || dup(&to.to_vec())
                    || to.iter().any(|t| !g.contains(&t))
                {
                    return Err(err(format!(
                        "rank {r} lane {l} step {i}: a host reduce group must hold distinct ranks including this one, and its receivers must be members ({group:?} to {to:?})"
                    )));
                }
            }
            if let Op::Fan { reduce, .. } = s.op {
                if (reduce && from.is_empty()) || (!reduce && from.len() > 1) {
                    return Err(err(format!(
                        "rank {r} lane {l} step {i}: a fan step reduces from one or more ranks or copies from at most one ({:?})",
                        s.op
                    )));
                }
                if from.is_empty() && to.is_empty() {
                    return Err(err(format!("rank {r} lane {l} step {i}: empty fan step")));
                }
            }
            for d in &s.deps {
                if d.lane as usize == l || p.step(*d).is_none() {
                    return Err(err(format!(
                        "rank {r} lane {l} step {i}: bad dependency {d:?}"
                    )));
                }
            }
        }
    }
    check_acyclic(p)
}

/// Dependency cycles across lanes (within a lane order is total) would deadlock the executor.
fn check_acyclic(p: &RankPlan) -> Result<()> {
    // Nodes are steps; edges: previous step in lane, and explicit deps. Kahn's algorithm.
    let ids: Vec<StepId> = p
        .lanes
        .iter()
        .enumerate()
        .flat_map(|(l, lane)| {
            (0..lane.steps.len()).map(move |s| StepId {
                lane: l as u32,
                step: s as u32,
            })
        })
        .collect();
    let index: HashMap<StepId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut indeg = vec![0usize; ids.len()];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); ids.len()];
    for (i, id) in ids.iter().enumerate() {
        let mut preds: Vec<StepId> = p.step(*id).unwrap().deps.clone();
        if id.step > 0 {
            preds.push(StepId {
                lane: id.lane,
                step: id.step - 1,
            });
        }
        for d in preds {
            out[index[&d]].push(i);
            indeg[i] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..ids.len()).filter(|i| indeg[*i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = ready.pop() {
        seen += 1;
        for &j in &out[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                ready.push(j);
            }
        }
    }
    if seen != ids.len() {
        return Err(err(format!(
            "rank {}: dependency cycle among its steps",
            p.rank
        )));
    }
    Ok(())
}

fn check_lane_rule(plans: &[RankPlan]) -> Result<()> {
    for p in plans {
        let mut send_lane: HashMap<(u32, u32), usize> = HashMap::new();
        let mut recv_lane: HashMap<(u32, u32), usize> = HashMap::new();
        for (l, lane) in p.lanes.iter().enumerate() {
            for s in &lane.steps {
                for (peers, map, what) in [
                    (s.op.send_peers(), &mut send_lane, "sends to"),
                    (s.op.recv_peers(), &mut recv_lane, "receives from"),
                ] {
                    for peer in peers {
                        let prev = *map.entry((peer.0, lane.channel)).or_insert(l);
                        if prev != l {
                            return Err(err(format!("rank {} {what} rank {peer} on channel {} from lanes {prev} and {l}; one lane per peer, direction and channel", p.rank, lane.channel)));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_post(coll: Collective, plans: &[RankPlan], st: &[RankState]) -> Result<()> {
    let n = plans.len() as u32;
    let all = |c: u32| -> Value { (0..n).map(|q| ((q, c), 1)).collect() };
    let expect = |r: usize, c: u32, got: &Option<Value>, want: Value| -> Result<()> {
        if got.as_ref() != Some(&want) {
            return Err(err(format!(
                "{}: rank {r} output chunk {c} ends as {} but must be {}",
                coll.name(),
                show(got.as_ref()),
                show(Some(&want))
            )));
        }
        Ok(())
    };
    for (r, s) in st.iter().enumerate() {
        let ru = r as u32;
        let k_in = plans[r].input_chunks;
        for (c, got) in s.output.iter().enumerate() {
            let c = c as u32;
            match coll {
                Collective::AllReduce => expect(r, c, got, all(c))?,
                Collective::Reduce { root } if root.0 == ru => expect(r, c, got, all(c))?,
                Collective::Reduce { .. } => {}
                Collective::Broadcast { root } => expect(r, c, got, single(root.0, c))?,
                Collective::AllGather => {
                    let k = k_in.max(1);
                    expect(r, c, got, single(c / k, c % k))?
                }
                // An in-place allgather of empty chunks: every rank must have heard from all.
                Collective::Barrier => expect(r, c, got, single(c, c))?,
                Collective::ReduceScatter => {
                    let k = plans[r].output_chunks;
                    expect(r, c, got, all(ru * k + c))?
                }
                Collective::AllToAll => {
                    let k = k_in / n;
                    expect(r, c, got, single(c / k, ru * k + c % k))?
                }
            }
        }
    }
    Ok(())
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "uninitialised".into(),
        Some(v) => {
            let items: Vec<String> = v
                .iter()
                .map(|((r, c), m)| {
                    if *m == 1 {
                        format!("r{r}c{c}")
                    } else {
                        format!("r{r}c{c}x{m}")
                    }
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}
