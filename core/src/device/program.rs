//! A lowered [`Schedule`] as work for device queues (streams): the device executor's reading of
//! the schedule, shared by every device engine (CUDA, the test stand-in).
//!
//! Each lane gets two queues. The **receive queue** does everything that writes this rank's
//! buffers: it waits for a segment to arrive in its receive slot, copies or reduces it into
//! the buffer (a fan step reduces all its sources in one kernel, in list order, as the CPU
//! executor does), hands the slot back to the sender and runs local copies and reductions.
//! The **send queue** copies segments straight into the receiving peer's slot and tells it so.
//! Sends never hold up receives, which is what lets a plan that sends a chunk before it
//! receives one (every ring) run with a bounded number of slots per connection.
//!
//! The two queues meet only where the bytes say so: a send waits for the receive-queue
//! operation that last wrote the bytes it reads, and a write waits for the send-queue
//! operation that last read the bytes it overwrites (the CPU executor's send hazard). A step
//! with cross-lane dependencies waits, on both its queues, for both queues of the lanes it
//! depends on to finish those steps.
//!
//! Every connection (sender, receiver, channel) has `depth` slots of the schedule's segment
//! size on the receiving side and two counters: *ready* (messages written, advanced by the
//! sender in the receiver's memory) and *taken* (messages consumed, advanced by the receiver in
//! the sender's memory). Message `m` goes to slot `m % depth`; the sender writes it once
//! `taken + depth > m`. Counters run on across calls, so a call never needs to reset them
//! while a peer may still read them.

use crate::error::{Error, Result};
use crate::plan::{Buf, StepId};
use crate::schedule::{Schedule, SegOp};
use crate::Rank;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// A byte location for a device copy or reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// Offset `at` of one of the call's buffers.
    Buf { buf: Buf, at: usize },
    /// This rank's receive slot of message `msg` from `from` on `channel`.
    Inbox { from: Rank, channel: u32, msg: u64 },
    /// Peer `to`'s receive slot of this rank's message `msg` on `channel`.
    Outbox { to: Rank, channel: u32, msg: u64 },
}

/// One queue operation. Message numbers are per connection: relative to the call in a
/// [`Program`], absolute (counting every earlier call) once [`Cursor::resolve`]d.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevOp {
    /// Wait until message `msg` from `from` on `channel` is in this rank's slot.
    WaitReady { from: Rank, channel: u32, msg: u64 },
    /// Wait until `to` has a free slot for message `msg` (it took message `msg - depth`).
    WaitSlot { to: Rank, channel: u32, msg: u64 },
    /// Wait until queue `queue` of this rank has passed `mark` marks in this call.
    WaitQueue { queue: usize, mark: u64 },
    /// `len` bytes from `src` to `dst`.
    Copy { dst: Loc, src: Loc, len: usize },
    /// `dst = dst (op) srcs[0] (op) ... (op) srcs[k-1]` over `len` bytes, left to right.
    Reduce {
        dst: Loc,
        srcs: Vec<Loc>,
        len: usize,
    },
    /// Tell `to` that message `msg` on `channel` is in its slot.
    Ready { to: Rank, channel: u32, msg: u64 },
    /// Tell `from` that message `msg` on `channel` was consumed (its slot is free).
    Taken { from: Rank, channel: u32, msg: u64 },
    /// This queue passes one more mark (what [`DevOp::WaitQueue`] counts).
    Mark,
}

/// A connection as the program uses it: (peer, channel).
pub type Conn = (Rank, u32);

/// One rank's schedule as device work: `queues[2 l]` receives and `queues[2 l + 1]` sends
/// for lane `l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub rank: Rank,
    pub queues: Vec<Vec<DevOp>>,
    /// Slots per connection the program relies on.
    pub depth: usize,
    /// The longest message (slots must hold it).
    pub max_message: usize,
    /// Messages this call sends / receives per connection (advance the [`Cursor`]).
    pub sends: HashMap<Conn, u64>,
    pub recvs: HashMap<Conn, u64>,
    /// Bytes of the scratch buffer the plan uses.
    pub scratch_bytes: usize,
    pub input_bytes: usize,
    pub output_bytes: usize,
}

/// Per-connection message counts of every call so far: what turns a program's call-relative
/// message numbers into the counters' absolute ones.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    sent: HashMap<Conn, u64>,
    recvd: HashMap<Conn, u64>,
}

impl Cursor {
    /// Messages received from `c` over every call resolved so far.
    pub fn received(&self, c: &Conn) -> u64 {
        self.recvd.get(c).copied().unwrap_or(0)
    }

    /// `prog`'s queues with absolute message numbers; advances the cursor past the call.
    pub fn resolve(&mut self, prog: &Program) -> Vec<Vec<DevOp>> {
        let (sent, recvd) = (&self.sent, &self.recvd);
        let s = |to: Rank, ch: u32, m: u64| m + sent.get(&(to, ch)).copied().unwrap_or(0);
        let r = |from: Rank, ch: u32, m: u64| m + recvd.get(&(from, ch)).copied().unwrap_or(0);
        let loc = |l: Loc| match l {
            Loc::Inbox { from, channel, msg } => Loc::Inbox {
                from,
                channel,
                msg: r(from, channel, msg),
            },
            Loc::Outbox { to, channel, msg } => Loc::Outbox {
                to,
                channel,
                msg: s(to, channel, msg),
            },
            b => b,
        };
        let out = prog
            .queues
            .iter()
            .map(|q| {
                q.iter()
                    .map(|op| match op.clone() {
                        DevOp::WaitReady { from, channel, msg } => DevOp::WaitReady {
                            from,
                            channel,
                            msg: r(from, channel, msg),
                        },
                        DevOp::Taken { from, channel, msg } => DevOp::Taken {
                            from,
                            channel,
                            msg: r(from, channel, msg),
                        },
                        DevOp::WaitSlot { to, channel, msg } => DevOp::WaitSlot {
                            to,
                            channel,
                            msg: s(to, channel, msg),
                        },
                        DevOp::Ready { to, channel, msg } => DevOp::Ready {
                            to,
                            channel,
                            msg: s(to, channel, msg),
                        },
                        DevOp::Copy { dst, src, len } => DevOp::Copy {
                            dst: loc(dst),
                            src: loc(src),
                            len,
                        },
                        DevOp::Reduce { dst, srcs, len } => DevOp::Reduce {
                            dst: loc(dst),
                            srcs: srcs.into_iter().map(loc).collect(),
                            len,
                        },
                        op => op,
                    })
                    .collect()
            })
            .collect();
        for (c, n) in &prog.sends {
            *self.sent.entry(*c).or_default() += n;
        }
        for (c, n) in &prog.recvs {
            *self.recvd.entry(*c).or_default() += n;
        }
        out
    }
}

/// What one queue has written or read so far: per buffer, disjoint byte ranges with the mark
/// of the latest operation that touched them (marks only grow, so the latest is the largest).
/// An interval map, so compiling stays O(n log n) in the segments of a large call.
#[derive(Default)]
struct Touches {
    by_buf: HashMap<Buf, BTreeMap<usize, (usize, u64)>>,
}

impl Touches {
    /// The mark after the latest operation that touched bytes overlapping `r` of `buf`.
    fn latest(&self, buf: Buf, r: &Range<usize>) -> Option<u64> {
        if r.is_empty() {
            return None;
        }
        let m = self.by_buf.get(&buf)?;
        let before = m
            .range(..=r.start)
            .next_back()
            .filter(|(_, (end, _))| *end > r.start)
            .map(|(_, (_, mark))| *mark);
        m.range(r.start + 1..r.end)
            .map(|(_, (_, mark))| *mark)
            .chain(before)
            .max()
    }

    fn add(&mut self, buf: Buf, r: Range<usize>, mark: u64) {
        if r.is_empty() {
            return;
        }
        let m = self.by_buf.entry(buf).or_default();
        // An interval that starts before `r` keeps its head (and its tail past `r`).
        if let Some((&s, &(e, mk))) = m.range(..r.start).next_back() {
            if e > r.start {
                m.insert(s, (r.start, mk));
                if e > r.end {
                    m.insert(r.end, (e, mk));
                }
            }
        }
        // Intervals that start inside `r` are replaced; one running past it keeps its tail.
        let inside: Vec<usize> = m.range(r.start..r.end).map(|(s, _)| *s).collect();
        for s in inside {
            if let Some((e, mk)) = m.remove(&s) {
                if e > r.end {
                    m.insert(r.end, (e, mk));
                }
            }
        }
        m.insert(r.start, (r.end, mark));
    }
}

/// One lane being compiled.
struct LaneQueues<'a> {
    recv: Vec<DevOp>,
    send: Vec<DevOp>,
    recv_marks: u64,
    send_marks: u64,
    written: Touches,
    read: Touches,
    lane: usize,
    channel: u32,
    sends: &'a mut HashMap<Conn, u64>,
    recvs: &'a mut HashMap<Conn, u64>,
}

impl LaneQueues<'_> {
    fn recv_q(&self) -> usize {
        2 * self.lane
    }
    fn send_q(&self) -> usize {
        2 * self.lane + 1
    }

    /// Receive-queue work that writes `r` of `buf`: first wait for the sends reading it.
    fn before_write(&mut self, buf: Buf, r: &Range<usize>) {
        if let Some(mark) = self.read.latest(buf, r) {
            let queue = self.send_q();
            self.recv.push(DevOp::WaitQueue { queue, mark });
        }
    }
    fn wrote(&mut self, buf: Buf, r: Range<usize>) {
        self.recv.push(DevOp::Mark);
        self.recv_marks += 1;
        self.written.add(buf, r, self.recv_marks);
    }

    /// Sends `r` of `buf` to `to` (after whatever last wrote it).
    fn send(&mut self, to: Rank, buf: Buf, r: Range<usize>) {
        if let Some(mark) = self.written.latest(buf, &r) {
            let queue = self.recv_q();
            // Only the newest wait matters: marks only grow.
            if !matches!(self.send.last(), Some(DevOp::WaitQueue { queue: q, mark: m }) if *q == queue && *m >= mark)
            {
                self.send.push(DevOp::WaitQueue { queue, mark });
            }
        }
        let channel = self.channel;
        let n = self.sends.entry((to, channel)).or_default();
        let msg = *n;
        *n += 1;
        self.send.push(DevOp::WaitSlot { to, channel, msg });
        self.send.push(DevOp::Copy {
            dst: Loc::Outbox { to, channel, msg },
            src: Loc::Buf { buf, at: r.start },
            len: r.len(),
        });
        self.send.push(DevOp::Ready { to, channel, msg });
        self.send.push(DevOp::Mark);
        self.send_marks += 1;
        self.read.add(buf, r, self.send_marks);
    }
}

/// Compiles `sched` for device queues. Host reduces (CPU-Reduce's staging area) are not device
/// work: a schedule with one is refused with the reason.
pub fn compile(sched: &Schedule) -> Result<Program> {
    let nl = sched.lanes.len();
    let mut sends = HashMap::new();
    let mut recvs = HashMap::new();
    let mut queues = Vec::with_capacity(2 * nl);
    // Marks of (receive, send) queue at the end of each step, per lane.
    let mut step_marks: Vec<Vec<(u64, u64)>> = Vec::with_capacity(nl);
    let mut max_message = 0;
    // (queue, position, step waited for) of every cross-lane dependency.
    let mut deps: Vec<(usize, usize, StepId)> = Vec::new();
    for (l, lane) in sched.lanes.iter().enumerate() {
        let mut q = LaneQueues {
            recv: Vec::new(),
            send: Vec::new(),
            recv_marks: 0,
            send_marks: 0,
            written: Touches::default(),
            read: Touches::default(),
            lane: l,
            channel: lane.channel,
            sends: &mut sends,
            recvs: &mut recvs,
        };
        let mut ends = Vec::with_capacity(lane.steps.len());
        for (i, step) in lane.steps.iter().enumerate() {
            for d in &step.deps {
                // Resolved below, once every lane's marks are known.
                deps.push((2 * l, q.recv.len(), *d));
                deps.push((2 * l + 1, q.send.len(), *d));
            }
            match &step.op {
                SegOp::HostReduce { .. } => {
                    return Err(Error::invalid(format!(
                        "lane {l} step {i}: a host reduce (CPU-Reduce's staging area) is not device work; CPU-Reduce runs through the staging path"
                    )))
                }
                SegOp::Local {
                    reduce,
                    src,
                    src_at,
                    dst,
                    dst_at,
                    len,
                } => {
                    let rd = *dst_at..*dst_at + *len;
                    q.before_write(*dst, &rd);
                    let (d, s) = (
                        Loc::Buf {
                            buf: *dst,
                            at: *dst_at,
                        },
                        Loc::Buf {
                            buf: *src,
                            at: *src_at,
                        },
                    );
                    q.recv.push(if *reduce {
                        DevOp::Reduce {
                            dst: d,
                            srcs: vec![s],
                            len: *len,
                        }
                    } else {
                        DevOp::Copy {
                            dst: d,
                            src: s,
                            len: *len,
                        }
                    });
                    q.wrote(*dst, rd);
                }
                SegOp::Move {
                    from,
                    to,
                    reduce,
                    buf,
                    segs,
                } => {
                    for s in segs.iter() {
                        max_message = max_message.max(s.len());
                        if !from.is_empty() {
                            q.before_write(*buf, &s);
                            let channel = q.channel;
                            let mut srcs = Vec::with_capacity(from.len());
                            for f in from.iter() {
                                let n = q.recvs.entry((f, channel)).or_default();
                                let msg = *n;
                                *n += 1;
                                q.recv.push(DevOp::WaitReady {
                                    from: f,
                                    channel,
                                    msg,
                                });
                                srcs.push(Loc::Inbox {
                                    from: f,
                                    channel,
                                    msg,
                                });
                            }
                            let dst = Loc::Buf {
                                buf: *buf,
                                at: s.start,
                            };
                            q.recv.push(if *reduce {
                                DevOp::Reduce {
                                    dst,
                                    srcs: srcs.clone(),
                                    len: s.len(),
                                }
                            } else {
                                if srcs.len() != 1 {
                                    return Err(Error::Plan(format!(
                                        "lane {l} step {i}: a receive without reduction from {} ranks",
                                        srcs.len()
                                    )));
                                }
                                DevOp::Copy {
                                    dst,
                                    src: srcs[0],
                                    len: s.len(),
                                }
                            });
                            for src in srcs {
                                if let Loc::Inbox { from, channel, msg } = src {
                                    q.recv.push(DevOp::Taken { from, channel, msg });
                                }
                            }
                            q.wrote(*buf, s.clone());
                        }
                        for t in to.iter() {
                            q.send(t, *buf, s.clone());
                        }
                    }
                }
            }
            ends.push((q.recv_marks, q.send_marks));
        }
        queues.push(q.recv);
        queues.push(q.send);
        step_marks.push(ends);
    }
    // Cross-lane dependencies: wait for both queues of the lane depended on, inserted from the
    // back so that earlier positions stay valid.
    for (queue, at, d) in deps.into_iter().rev() {
        let (r, s) = step_marks
            .get(d.lane as usize)
            .and_then(|e| e.get(d.step as usize))
            .copied()
            .ok_or_else(|| Error::Plan(format!("a step depends on {d:?}, which does not exist")))?;
        let l = d.lane as usize;
        let waits = [(2 * l, r), (2 * l + 1, s)]
            .into_iter()
            .filter(|(_, mark)| *mark > 0)
            .map(|(queue, mark)| DevOp::WaitQueue { queue, mark });
        queues[queue].splice(at..at, waits);
    }
    Ok(Program {
        rank: sched.rank,
        queues,
        depth: sched.depth,
        max_message,
        sends,
        recvs,
        scratch_bytes: sched.scratch_bytes,
        input_bytes: sched.input_bytes,
        output_bytes: sched.output_bytes,
    })
}

impl Program {
    /// The peers this program exchanges with, per channel: (sends to, receives from).
    pub fn connections(&self) -> (Vec<Conn>, Vec<Conn>) {
        let mut s: Vec<Conn> = self.sends.keys().copied().collect();
        let mut r: Vec<Conn> = self.recvs.keys().copied().collect();
        s.sort();
        r.sort();
        (s, r)
    }

    /// What operation `op` of queue `queue` waits for, for an error naming the peer; `None`
    /// for work that needs nobody else.
    pub fn waits_on(op: &DevOp) -> Option<(Rank, String)> {
        match op {
            DevOp::WaitReady { from, channel, msg } => Some((
                *from,
                format!("message {msg} from rank {from} on channel {channel}"),
            )),
            DevOp::WaitSlot { to, channel, msg } => Some((
                *to,
                format!(
                    "rank {to} to free a slot for message {msg} on channel {channel} (it has not taken an earlier one)"
                ),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval map answers what a list of every touch would: the latest overlapping mark.
    #[test]
    fn touches_keep_the_latest_mark_of_every_byte() {
        let mut t = Touches::default();
        let mut list: Vec<(Range<usize>, u64)> = Vec::new();
        let mut x = 12345u64;
        for mark in 1..400u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (x >> 33) as usize % 1000;
            let len = (x >> 13) as usize % 120;
            t.add(Buf::Output, a..a + len, mark);
            list.push((a..a + len, mark));
            let q = (x >> 20) as usize % 1000;
            let qr = q..q + (x >> 40) as usize % 50;
            let want = list
                .iter()
                .filter(|(r, _)| {
                    !qr.is_empty() && !r.is_empty() && r.start < qr.end && qr.start < r.end
                })
                .map(|(_, m)| *m)
                .max();
            assert_eq!(t.latest(Buf::Output, &qr), want, "{qr:?} after {mark}");
            assert_eq!(t.latest(Buf::Input, &qr), None);
        }
    }
}
