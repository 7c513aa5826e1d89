//! Symbolic verification of a set of plans (one per rank), in the spirit of msccl-tools' checker.
//!
//! Every chunk holds a *multiset* of `(origin rank, origin chunk)` contributions. The verifier
//! runs all ranks' plans together over FIFO message queues, then checks the collective's
//! postcondition: an allreduce must leave each chunk on every rank with every rank's
//! contribution exactly once (missing *and* double reduction are caught). It also rejects
//! deadlocks, dependency cycles, out-of-bounds chunks, unmatched messages, sending
//! uninitialised data, breaking the one-lane-per-peer matching rule, and (given a concrete
//! element count) messages whose sender and receiver chunk sizes differ.

use crate::error::{Error, Result};
use crate::plan::{Buf, ChunkRef, Collective, Op, RankPlan, StepId};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A symbolic chunk value: contribution -> multiplicity.
type Value = BTreeMap<(u32, u32), u32>;

struct Msg {
    value: Value,
    elems: Option<usize>,
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

/// Verifies `plans` (index = rank). `count` enables the concrete size check for that per-rank
/// element count.
pub fn verify(plans: &[RankPlan], count: Option<usize>) -> Result<()> {
    let n = plans.len();
    if n == 0 {
        return Err(err("no plans".into()));
    }
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

    let mut queues: HashMap<(usize, usize), VecDeque<Msg>> = HashMap::new();
    let mut pc: Vec<Vec<usize>> = plans.iter().map(|p| vec![0; p.lanes.len()]).collect();
    let done =
        |pc: &Vec<Vec<usize>>, r: usize, id: StepId| pc[r][id.lane as usize] > id.step as usize;

    loop {
        let mut progressed = false;
        let mut all_done = true;
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
                    let incoming = match step.op.recv_from() {
                        Some(from) => {
                            match queues.get_mut(&(from.idx(), r)).and_then(|q| q.pop_front()) {
                                Some(m) => Some(m),
                                None => break,
                            }
                        }
                        None => None,
                    };
                    let out_value = execute(
                        &mut st[r],
                        &step.op,
                        incoming,
                        elems_of(&plans[r], step.op.chunks()[0]),
                        &here,
                    )?;
                    if let (Some(to), Some(value)) = (step.op.send_to(), out_value) {
                        let elems = elems_of(&plans[r], step.op.chunks()[0]);
                        queues
                            .entry((r, to.idx()))
                            .or_default()
                            .push_back(Msg { value, elems });
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
            return Err(err(format!(
                "deadlock: no rank can progress; stuck: {}",
                stuck.join("; ")
            )));
        }
    }
    if let Some(((a, b), q)) = queues.iter().find(|(_, q)| !q.is_empty()) {
        return Err(err(format!(
            "{} message(s) from rank {a} to rank {b} were never received",
            q.len()
        )));
    }
    check_post(coll, plans, &st)
}

/// Runs one step on the symbolic state; returns the value to send, if the step sends.
fn execute(
    s: &mut RankState,
    op: &Op,
    incoming: Option<Msg>,
    my_elems: Option<usize>,
    here: &str,
) -> Result<Option<Value>> {
    if let (Some(m), Some(mine)) = (&incoming, my_elems) {
        if m.elems != Some(mine) {
            return Err(err(format!(
                "{here}: receives {:?} elements into a chunk of {mine}",
                m.elems
            )));
        }
    }
    let read = |s: &mut RankState, c: ChunkRef| -> Result<Value> {
        s.slot(c)
            .clone()
            .ok_or_else(|| err(format!("{here}: reads uninitialised chunk {c}")))
    };
    Ok(match *op {
        Op::Send { src, .. } => Some(read(s, src)?),
        Op::Recv { dst, .. } => {
            *s.slot(dst) = Some(incoming.expect("recv has a message").value);
            None
        }
        Op::RecvCopySend { dst, .. } => {
            let v = incoming.expect("recv has a message").value;
            *s.slot(dst) = Some(v.clone());
            Some(v)
        }
        Op::RecvReduce { dst, .. } | Op::RecvReduceSend { dst, .. } => {
            let mut v = read(s, dst)?;
            for (k, c) in incoming.expect("recv has a message").value {
                *v.entry(k).or_default() += c;
            }
            *s.slot(dst) = Some(v.clone());
            matches!(op, Op::RecvReduceSend { .. }).then_some(v)
        }
        Op::Copy { src, dst } => {
            let v = read(s, src)?;
            *s.slot(dst) = Some(v);
            None
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
        for (i, s) in lane.steps.iter().enumerate() {
            for c in s.op.chunks() {
                if c.index >= p.chunks_of(c.buf) {
                    return Err(err(format!(
                        "rank {r} lane {l} step {i}: chunk {c} out of bounds ({} chunks)",
                        p.chunks_of(c.buf)
                    )));
                }
            }
            for peer in [s.op.recv_from(), s.op.send_to()].into_iter().flatten() {
                if peer.0 >= p.nranks || peer == r {
                    return Err(err(format!("rank {r} lane {l} step {i}: bad peer {peer}")));
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
        let mut send_lane: HashMap<u32, usize> = HashMap::new();
        let mut recv_lane: HashMap<u32, usize> = HashMap::new();
        for (l, lane) in p.lanes.iter().enumerate() {
            for s in &lane.steps {
                for (peer, map, what) in [
                    (s.op.send_to(), &mut send_lane, "sends to"),
                    (s.op.recv_from(), &mut recv_lane, "receives from"),
                ] {
                    if let Some(peer) = peer {
                        let prev = *map.entry(peer.0).or_insert(l);
                        if prev != l {
                            return Err(err(format!("rank {} {what} rank {peer} from lanes {prev} and {l}; one lane per peer and direction", p.rank)));
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
