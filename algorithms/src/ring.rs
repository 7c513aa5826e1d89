//! Ring algorithms: every collective as a pipeline around the ring `0 -> 1 -> ... -> n-1 -> 0`.
//!
//! Allreduce is reduce-scatter then allgather (NCCL's `runRing`, in its fused vocabulary):
//!
//! ```text
//!   n = 4, rank r, group g = chunks g*k .. g*k+k (k chunks per rank)
//!   step 0         Send           group r          -> next
//!   step 1..n-2    RecvReduceSend group r-j        (prev -> reduce -> next)
//!   step n-1       RecvReduceSend group r+1        (now complete: starts the allgather)
//!   step n..2n-3   RecvCopySend   group r+1-j
//!   step 2n-2      Recv           group r+2
//! ```
//!
//! Each rank sends and receives 2(n-1)/n of the buffer, which is the bandwidth optimum; the
//! executor's segmentation pipelines every step. Each chunk is reduced once, at one rank, in a
//! fixed order, and then copied, so every rank ends with bitwise identical results.

use acspeed_core::plan::{ChunkRef, Collective, Lane, Op, RankPlan, Step};
use acspeed_core::Rank;

/// Allreduce over several rings at once (NCCL's channels): ring `c` reduces the `c`-th of
/// `rings.len()` equal parts of the buffer around its own rank order, on channel `c`, so rings
/// that cross the same pair of ranks do not queue behind one another.
pub fn multi_ring_allreduce(rank: Rank, nranks: u32, rings: &[Vec<Rank>]) -> RankPlan {
    let n = nranks;
    let lanes = rings
        .iter()
        .enumerate()
        .map(|(c, order)| {
            let base = c as u32 * n;
            let groups: Vec<Vec<ChunkRef>> =
                (0..n).map(|i| vec![ChunkRef::out(base + i)]).collect();
            let mut s = crate::compose::Steps(Vec::new());
            crate::compose::ring_allreduce(&mut s, order, rank, &groups);
            Lane {
                channel: c as u32,
                steps: s.0,
            }
        })
        .collect();
    RankPlan {
        collective: Collective::AllReduce,
        algorithm: "ring".into(),
        rank,
        nranks,
        input_chunks: 0,
        output_chunks: rings.len() as u32 * n,
        scratch_factor: 0,
        weights: Vec::new(),
        lanes,
    }
}

/// Ring plans with `chunks_per_rank` chunks in each rank's group (more chunks = finer steps;
/// the executor pipelines within chunks anyway, so 1 is the default).
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub chunks_per_rank: u32,
}

impl Default for Ring {
    fn default() -> Self {
        Ring { chunks_per_rank: 1 }
    }
}

struct Builder {
    r: u32,
    n: u32,
    k: u32,
    steps: Vec<Step>,
}

impl Builder {
    fn rank(&self, off: i64) -> Rank {
        Rank(((self.r as i64 + off).rem_euclid(self.n as i64)) as u32)
    }
    fn group(&self, off: i64) -> u32 {
        self.rank(off).0
    }
    /// Emits `f(chunk)` for every chunk of group `g` of a buffer split into n*k chunks.
    fn each(&mut self, g: u32, f: impl Fn(ChunkRef) -> Op) {
        for m in 0..self.k {
            self.steps.push(f(ChunkRef::out(g * self.k + m)).into());
        }
    }
}

impl Ring {
    pub fn plan_for_rank(&self, coll: Collective, rank: Rank, nranks: u32) -> RankPlan {
        let (n, r, k) = (nranks, rank.0, self.chunks_per_rank.max(1));
        let mut b = Builder {
            r,
            n,
            k,
            steps: Vec::new(),
        };
        let (next, prev) = (b.rank(1), b.rank(-1));
        let (mut input_chunks, mut output_chunks, mut scratch_factor) = (0, n * k, 0);
        if coll == Collective::Barrier {
            // An in-place allgather of n empty chunks.
            b.k = 1;
            output_chunks = n;
        }
        match coll {
            Collective::AllReduce if n > 1 => {
                b.each(b.group(0), |c| Op::Send { to: next, src: c });
                for j in 1..n as i64 {
                    b.each(b.group(-j), |c| Op::RecvReduceSend {
                        from: prev,
                        to: next,
                        dst: c,
                    });
                }
                for j in 1..n as i64 - 1 {
                    b.each(b.group(1 - j), |c| Op::RecvCopySend {
                        from: prev,
                        to: next,
                        dst: c,
                    });
                }
                b.each(b.group(2), |c| Op::Recv { from: prev, dst: c });
            }
            Collective::Broadcast { root } | Collective::Reduce { root } if n > 1 => {
                output_chunks = k;
                let reduce = matches!(coll, Collective::Reduce { .. });
                // Position along the chain: broadcast starts at root, reduce ends at root.
                let start = if reduce { root.0 + 1 } else { root.0 };
                let pos = (r + n - start % n) % n;
                let op = |c: ChunkRef| match (pos, reduce) {
                    (0, _) => Op::Send { to: next, src: c },
                    (p, false) if p == n - 1 => Op::Recv { from: prev, dst: c },
                    (p, true) if p == n - 1 => Op::RecvReduce { from: prev, dst: c },
                    (_, false) => Op::RecvCopySend {
                        from: prev,
                        to: next,
                        dst: c,
                    },
                    (_, true) => Op::RecvReduceSend {
                        from: prev,
                        to: next,
                        dst: c,
                    },
                };
                b.k = 1;
                for m in 0..k {
                    b.each(m, op);
                }
            }
            Collective::AllGather => {
                input_chunks = k;
                for m in 0..k {
                    if n > 1 {
                        b.steps.push(
                            Op::Send {
                                to: next,
                                src: ChunkRef::inp(m),
                            }
                            .into(),
                        );
                    }
                    b.steps.push(
                        Op::Copy {
                            src: ChunkRef::inp(m),
                            dst: ChunkRef::out(r * k + m),
                        }
                        .into(),
                    );
                }
                b.allgather_tail(next, prev);
            }
            Collective::Barrier if n > 1 => {
                b.each(r, |c| Op::Send { to: next, src: c });
                b.allgather_tail(next, prev);
            }
            Collective::ReduceScatter => {
                input_chunks = n * k;
                output_chunks = k;
                let inp = |g: u32, m: u32| ChunkRef::inp(g * k + m);
                if n == 1 {
                    (0..k).for_each(|m| {
                        b.steps.push(
                            Op::Copy {
                                src: inp(r, m),
                                dst: ChunkRef::out(m),
                            }
                            .into(),
                        )
                    });
                } else {
                    // Partial sums in transit are built in two scratch copies used in turn.
                    // One buffer would deadlock once a message outgrows the transport's
                    // buffers: every rank would wait for its previous send to drain before
                    // posting the receive its neighbour's send is waiting for.
                    scratch_factor = 2;
                    let g0 = b.group(-1);
                    (0..k).for_each(|m| {
                        b.steps.push(
                            Op::Send {
                                to: next,
                                src: inp(g0, m),
                            }
                            .into(),
                        )
                    });
                    for j in 1..n as i64 {
                        let g = b.group(-1 - j);
                        let last = j == n as i64 - 1;
                        for m in 0..k {
                            let dst = if last {
                                ChunkRef::out(m)
                            } else {
                                ChunkRef::scratch((j as u32 % 2) * k + m)
                            };
                            b.steps.push(
                                Op::Copy {
                                    src: inp(g, m),
                                    dst,
                                }
                                .into(),
                            );
                            let op = if last {
                                Op::RecvReduce { from: prev, dst }
                            } else {
                                Op::RecvReduceSend {
                                    from: prev,
                                    to: next,
                                    dst,
                                }
                            };
                            b.steps.push(op.into());
                        }
                    }
                }
            }
            Collective::AllToAll => {
                // Pairwise exchange: in round j send to r+j and receive from r-j.
                input_chunks = n * k;
                for m in 0..k {
                    b.steps.push(
                        Op::Copy {
                            src: ChunkRef::inp(r * k + m),
                            dst: ChunkRef::out(r * k + m),
                        }
                        .into(),
                    );
                }
                for j in 1..n as i64 {
                    let (to, from) = (b.rank(j), b.rank(-j));
                    for m in 0..k {
                        b.steps.push(
                            Op::Send {
                                to,
                                src: ChunkRef::inp(to.0 * k + m),
                            }
                            .into(),
                        );
                        b.steps.push(
                            Op::Recv {
                                from,
                                dst: ChunkRef::out(from.0 * k + m),
                            }
                            .into(),
                        );
                    }
                }
            }
            // One rank: in-place collectives have nothing to do.
            _ => {
                if matches!(
                    coll,
                    Collective::Broadcast { .. } | Collective::Reduce { .. }
                ) {
                    output_chunks = k;
                }
            }
        }
        RankPlan {
            collective: coll,
            algorithm: "ring".into(),
            rank,
            nranks,
            input_chunks,
            output_chunks,
            scratch_factor,
            weights: Vec::new(),
            lanes: vec![Lane::new(b.steps)],
        }
    }
}

impl Builder {
    /// Forwards groups around the ring until every rank has all of them (ring allgather).
    fn allgather_tail(&mut self, next: Rank, prev: Rank) {
        let n = self.n as i64;
        for j in 1..n - 1 {
            self.each(self.group(-j), |c| Op::RecvCopySend {
                from: prev,
                to: next,
                dst: c,
            });
        }
        if n > 1 {
            self.each(self.group(1), |c| Op::Recv { from: prev, dst: c });
        }
    }
}
