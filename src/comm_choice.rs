//! How a communicator chooses each call's algorithm, layer by layer: per-size rules
//! (`ACSPEED_ALLREDUCE`, ...), a forced algorithm (`ACSPEED_ALGO`), then `auto` (the
//! autotuner's measurements, the selector's predictions, or the fixed rule measured on this
//! project's machines); and how it explains the choice (`explain`, the table at init).

use super::*;

impl Communicator {
    pub(super) fn log_init(&self) {
        // A forced algorithm whose plan falls back is worth a warning: the user asked for it.
        if let Some(note) = self.forced().and_then(|a| fallback_note(&self.ctx, a)) {
            self.log.warn(&format!(
                "ACSPEED_ALGO={}: {note}",
                self.forced().map(|a| a.name()).unwrap_or("?")
            ));
        }
        if !log_enabled(&self.log, acspeed_core::config::LogLevel::Info) {
            return;
        }
        let peers: Vec<String> = (0..self.nranks)
            .filter(|p| *p != self.rank)
            .map(|p| format!("{p}:{}", self.transport.name(Rank(p))))
            .collect();
        self.log.info(&format!(
            "rank {}/{} host={} local_ranks={:?} transports=[{}] segment={}B depth={} timeout={:?}",
            self.rank,
            self.nranks,
            self.hosts
                .get(self.rank as usize)
                .map(String::as_str)
                .unwrap_or("?"),
            self.local_ranks(),
            peers.join(" "),
            self.cfg.segment_bytes,
            self.cfg.pipeline_depth,
            self.cfg.timeout
        ));
        self.log.info(&match (&self.tuner, &self.selector) {
            (Some(t), _) => format!(
                "auto: measured by ACSPEED_AUTOTUNE (cache {})",
                t.path().display()
            ),
            (None, Ok(s)) => format!("auto: the selector's predictions, {}", s.about),
            (None, Err(why)) => format!("auto: fixed rule ({why})"),
        });
        if !self.ctx.nvlinks.is_empty() {
            use acspeed_algorithms::ntree;
            self.log.info(&match ntree::job_trees(&self.ctx) {
                Ok(trees) => format!(
                    "ntree: {} trees over the NVLinks of ACSPEED_TOPO_FILE, weights {:?}, roots {:?}, {} channel(s)",
                    trees.len(),
                    trees.iter().map(|t| t.weight).collect::<Vec<_>>(),
                    trees.iter().map(|t| t.root.0).collect::<Vec<_>>(),
                    1 + self.channels.len()
                ),
                Err(why) => format!("ntree runs the double binary tree: {why}"),
            });
        }
        for coll in [
            Collective::AllReduce,
            Collective::Broadcast { root: Rank(0) },
            Collective::Reduce { root: Rank(0) },
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::AllToAll,
        ] {
            if let Some(a) = self.forced().filter(|a| !a.serves(coll)) {
                self.log.info(&format!(
                    "ACSPEED_ALGO={} does not serve {}: it runs ring",
                    a.name(),
                    coll.name()
                ));
            }
            self.log.info(&format!(
                "algorithm table: {:<14} {}",
                coll.name(),
                table_row(|b| self.algorithm_for(coll, b))
            ));
        }
    }

    /// Algorithm a collective of `bytes` (output buffer size) runs, layer by layer:
    /// per-size rules (`ACSPEED_ALLREDUCE`, ...), then a forced algorithm (`ACSPEED_ALGO`; the
    /// collectives it does not serve run ring), then `auto`. Where `auto` decides:
    /// - with `ACSPEED_AUTOTUNE`, the measured choice (trying candidates at first);
    /// - with a GPU topology file (`ACSPEED_TOPO_FILE`) or a CPU host model
    ///   (`ACSPEED_HOST_MODEL`), the simulator's prediction on that host times the job's
    ///   host shape;
    /// - otherwise a fixed rule, measured on this project's 2-vCPU machines
    ///   (docs/PERFORMANCE.md). Allreduce goes hybrid from 256 KiB when ranks span several
    ///   hosts and some host has more than one (from 16 MiB when the hosts' rank counts
    ///   differ), and CPU-Reduce from 16 MiB on one host of
    ///   4-8 ranks sharing one staging area. Small messages (up to 16 KiB) on 8+ ranks use
    ///   the double binary tree; at 4 ranks it measured no faster than ring here. Everything
    ///   else runs ring. Broadcast and reduce follow the same tree rule.
    pub fn algorithm_for(&self, coll: Collective, bytes: usize) -> Algorithm {
        self.choose(coll, bytes).0
    }

    /// The algorithm for `coll` at `bytes`, and why (the layer that decided).
    pub(super) fn choose(&self, coll: Collective, bytes: usize) -> (Algorithm, String) {
        let (a, why, _) = self.choose_layer(coll, bytes);
        (a, why)
    }

    /// [`Communicator::choose`], and whether `auto` decided. With `ACSPEED_AUTOTUNE`, what
    /// the autotuner runs next where `auto` decides.
    pub(super) fn choose_layer(&self, coll: Collective, bytes: usize) -> (Algorithm, String, bool) {
        let (a, why, auto) = decide_layer(&self.ctx, &self.rules, self.forced(), coll, bytes);
        let tuned = match (&self.tuner, auto, Class::of(coll, bytes)) {
            (Some(t), true, Some(class)) => t.next(class, self.tune_candidates(coll)),
            _ => None,
        };
        let (a, why) = match tuned {
            Some(Next::Run { algo, why, .. }) => (algo, why),
            Some(Next::Confirm(c)) => (
                c,
                format!(
                    "ACSPEED_AUTOTUNE: cached in {}, to be confirmed by every rank at the first call",
                    self.tuner.as_ref().map(|t| t.path().display().to_string()).unwrap_or_default()
                ),
            ),
            None if auto => self.predicted(coll, bytes).unwrap_or((a, why)),
            None => (a, why),
        };
        let (a, why) = match a {
            // CPU-Reduce meets in shared memory; `ACSPEED_SHM` is the same on every rank
            // (compared at rendezvous), so every rank falls back alike.
            Algorithm::CpuReduce if !self.cfg.shm => {
                let f = if self.ctx.nhosts() > 1 {
                    Algorithm::Hybrid(acspeed_algorithms::InterHost::Ring)
                } else {
                    Algorithm::Ring
                };
                (
                    f,
                    format!(
                        "{why}, but cpu_reduce needs shared memory (ACSPEED_SHM=0): {}",
                        f.name()
                    ),
                )
            }
            _ => match fallback_note(&self.ctx, a) {
                Some(note) => (a, format!("{why}; {note}")),
                None => (a, why),
            },
        };
        (a, why, auto)
    }

    /// Waits for the selector's init-time table fill to end and returns how many (collective,
    /// size class) entries the table holds: every class up to 1 GiB of allreduce, broadcast
    /// and reduce once the fill is done; 0 without a selector (no model to predict with).
    pub fn selector_table(&self) -> usize {
        if let Some(f) = self.fill.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.wait();
        }
        self.selector.as_ref().map(|s| s.filled()).unwrap_or(0)
    }

    /// Which algorithm a collective of `bytes` (output size) runs and why, in one line.
    pub fn explain(&self, coll: Collective, bytes: usize) -> String {
        let (a, why) = self.choose(coll, bytes);
        format!(
            "{} of {} bytes on {} ranks (hosts {:?}): {} ({why})",
            coll.name(),
            bytes,
            self.nranks,
            self.ctx.shape(),
            a.name()
        )
    }

    /// The algorithm of the next call, and the class whose trial it is (autotune).
    pub(super) fn pick(
        &self,
        coll: Collective,
        bytes: usize,
    ) -> Result<(Algorithm, Option<Class>)> {
        let (a, _, auto) = self.choose_layer(coll, bytes);
        let (Some(t), true, Some(class)) = (&self.tuner, auto, Class::of(coll, bytes)) else {
            return Ok((a, None));
        };
        let cands = self.tune_candidates(coll);
        loop {
            match t.next(class, cands) {
                None => return Ok((a, None)),
                Some(Next::Run { algo, trial, .. }) => return Ok((algo, trial.then_some(class))),
                Some(Next::Confirm(c)) => {
                    // Every rank reads its own cache: use it only if all read the same choice.
                    let mine = cands
                        .iter()
                        .position(|x| *x == c)
                        .map_or(0, |i| i as i64 + 1);
                    let mut v = encode_i64(&[mine, -mine]);
                    self.run_as(
                        Collective::AllReduce,
                        Algorithm::Ring,
                        DType::I64,
                        Some(ReduceOp::Max),
                        2,
                        &[],
                        &mut v,
                        None,
                    )?;
                    let m = decode_i64(&v);
                    let agreed = mine > 0 && m[0] == mine && -m[1] == mine;
                    if !agreed {
                        self.log.info(&format!(
                            "ACSPEED_AUTOTUNE: ranks read different cached choices for {}; measuring again",
                            class.name()
                        ));
                    }
                    t.confirm(class, cands, agreed);
                }
            }
        }
    }

    /// The selector's choice where it has a model (a GPU topology file or a CPU host model), with every
    /// candidate's predicted time.
    pub(super) fn predicted(&self, coll: Collective, bytes: usize) -> Option<(Algorithm, String)> {
        let s = self.selector.as_ref().ok()?;
        let cands = self.tune_candidates(coll);
        if cands.len() < 2 {
            return None;
        }
        match s.predictions(coll, bytes, cands) {
            Ok(p) if !p.is_empty() => Some((
                p[0].algo,
                format!(
                    "selector: predicted {} ({})",
                    p.iter()
                        .map(|x| format!("{} {:.0} us", x.algo.name(), x.time_us))
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.about
                ),
            )),
            // The simulator is deterministic: every rank falls back alike.
            Ok(_) => None,
            Err(e) => {
                self.log
                    .warn(&format!("selector: {e}; auto's fixed rule decides"));
                None
            }
        }
    }

    /// The algorithms the autotuner and the selector choose among for `coll` (computed at
    /// init), in the same order on every rank.
    pub(super) fn tune_candidates(&self, coll: Collective) -> &[Algorithm] {
        match coll {
            Collective::AllReduce => &self.cands[0],
            Collective::Broadcast { .. } => &self.cands[1],
            Collective::Reduce { .. } => &self.cands[2],
            _ => &[],
        }
    }

    /// Agrees on the slowest rank's time of every trial of `class` and decides it.
    pub(super) fn tune_decide(&self, t: &Tuner, class: Class, local: &[f64]) -> Result<()> {
        let mut v: Vec<u8> = local.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.run_as(
            Collective::AllReduce,
            Algorithm::Ring,
            DType::F64,
            Some(ReduceOp::Max),
            local.len(),
            &[],
            &mut v,
            None,
        )?;
        let maxed: Vec<f64> = v
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let d = t.decide(class, &maxed)?;
        if let Err(e) = d.saved {
            self.log
                .warn(&format!("{e} (the choice still holds for this job)"));
        }
        self.log.info(&d.summary);
        Ok(())
    }
}

pub(super) fn encode_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn decode_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// What the autotuner's choices depend on besides the measurements: the job's shape and the
/// settings that change how algorithms perform. Its hash names the default cache file.
pub(super) fn tune_key(ctx: &PlanContext, cfg: &Config) -> String {
    format!(
        "acspeed {} ranks={} hosts={:?} nvlinks={:?} sockets={:?} shm={} shm_mode={:?} cma_min={} nstreams={:?} rdma={:?} segment={} depth={} cpu_reduce={}x{}",
        env!("CARGO_PKG_VERSION"),
        ctx.nranks,
        ctx.host_of,
        ctx.nvlinks,
        ctx.socket_of,
        cfg.shm,
        cfg.shm_mode,
        cfg.shm_cma_min,
        cfg.nstreams,
        cfg.rdma,
        cfg.segment_bytes,
        cfg.pipeline_depth,
        cfg.cpu_reduce_pipelines,
        cfg.cpu_reduce_threads
    )
}

/// The algorithm for `coll` at `bytes` and why, layer by layer: a per-size rule for the
/// collective, then the forced algorithm (`ACSPEED_ALGO`), then `auto`'s rule. Pure, so that
/// `acspeed explain` answers without a job.
pub fn decide(
    ctx: &PlanContext,
    rules: &SizeRules,
    forced: Option<Algorithm>,
    coll: Collective,
    bytes: usize,
) -> (Algorithm, String) {
    let (a, why, _) = decide_layer(ctx, rules, forced, coll, bytes);
    (a, why)
}

/// [`decide`], and whether `auto` decided (neither a size rule nor a forced algorithm).
pub(super) fn decide_layer(
    ctx: &PlanContext,
    rules: &SizeRules,
    forced: Option<Algorithm>,
    coll: Collective,
    bytes: usize,
) -> (Algorithm, String, bool) {
    let rules = match coll {
        Collective::AllReduce => &rules.0,
        Collective::Broadcast { .. } => &rules.1,
        Collective::Reduce { .. } => &rules.2,
        _ => &rules.3,
    };
    if let Some((a, lo, hi)) = rules.iter().find(|(_, lo, hi)| (*lo..*hi).contains(&bytes)) {
        let hi = if *hi == usize::MAX {
            "max".into()
        } else {
            human(*hi)
        };
        return (
            *a,
            format!(
                "ACSPEED_{} range {}-{hi}",
                coll.name().to_ascii_uppercase(),
                human(*lo)
            ),
            false,
        );
    }
    if let Some(a) = forced {
        return if a.serves(coll) {
            (a, format!("ACSPEED_ALGO={}", a.name()), false)
        } else {
            (
                Algorithm::Ring,
                format!(
                    "ACSPEED_ALGO={} does not serve {}: ring",
                    a.name(),
                    coll.name()
                ),
                false,
            )
        };
    }
    let a = auto_rule(ctx, coll, bytes);
    let why = match a {
        Algorithm::Hybrid(_) => format!(
            "auto: ranks span {} hosts {:?} and the message is >= {}",
            ctx.nhosts(),
            ctx.shape(),
            human(hybrid_min_bytes(ctx))
        ),
        Algorithm::Tree => format!(
            "auto: {} ranks (>= {TREE_MIN_RANKS}) and <= {}",
            ctx.nranks,
            human(TREE_MAX_BYTES)
        ),
        Algorithm::CpuReduce => format!(
            "auto: {} ranks on one host share a staging area and the message is >= {}",
            ctx.nranks,
            human(CPU_REDUCE_MIN_BYTES)
        ),
        _ => "auto: ring (bandwidth-optimal; no hierarchy or latency rule applies)".into(),
    };
    (a, why, true)
}

/// Per-size rules (allreduce, broadcast, reduce, others): (algorithm, from, to).
pub type SizeRules = (
    Vec<(Algorithm, usize, usize)>,
    Vec<(Algorithm, usize, usize)>,
    Vec<(Algorithm, usize, usize)>,
    Vec<(Algorithm, usize, usize)>,
);

/// Resolves the per-size strings, refusing an algorithm that cannot serve its collective.
pub fn size_rules(cfg: &Config) -> Result<SizeRules> {
    let resolve = |name: &str, coll: Collective, rules: &[acspeed_core::config::SizeRule]| {
        rules
            .iter()
            .map(|r| {
                let a = Algorithm::from_name(&r.algo).map_err(|e| match e {
                    Error::InvalidArgument(m) => Error::invalid(format!("{name}: {m}")),
                    e => e,
                })?;
                if !a.serves(coll) {
                    return Err(Error::invalid(format!(
                        "{name}: algorithm {} cannot run {}",
                        a.name(),
                        coll.name()
                    )));
                }
                Ok((a, r.lo, r.hi))
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok((
        resolve(
            "ACSPEED_ALLREDUCE",
            Collective::AllReduce,
            &cfg.allreduce_rules,
        )?,
        resolve(
            "ACSPEED_BROADCAST",
            Collective::Broadcast { root: Rank(0) },
            &cfg.broadcast_rules,
        )?,
        resolve(
            "ACSPEED_REDUCE",
            Collective::Reduce { root: Rank(0) },
            &cfg.reduce_rules,
        )?,
        Vec::new(),
    ))
}

/// Largest message the double binary tree takes in `auto` (latency-bound sizes).
pub(super) const TREE_MAX_BYTES: usize = 16 << 10;
/// Fewest ranks for which `auto` uses the tree (2 log2(n) hops against the ring's 2(n-1)).
pub(super) const TREE_MIN_RANKS: u32 = 8;
/// Smallest allreduce that goes hybrid in `auto` when ranks span hosts: netsim 2 x 2, after
/// the TCP transmit-queue fix, hybrid took 0.9-2.0 ms at 256 KiB against ring's 2.6-3.1 and
/// tied it at 64 KiB (2026-11-30, 2 runs; `benches/select_quality.py`: auto's ring at 256 KiB
/// was 2.32x the best candidate).
pub(super) const HYBRID_MIN_BYTES: usize = 256 << 10;
/// The same on hosts of different sizes (3+1+2): there the one-rank host drives every stripe
/// and hybrid sends at most 1.25x less than the ring (docs/PERFORMANCE.md, "Hybrid in
/// overlapping rounds"); netsim 3+1+2, hybrid against ring (medians of 3, two runs on
/// 2026-11-30): 1.01x and 1.00x at 1 MiB, 0.82x and 0.85x at 4 MiB, 0.99x and 1.04x at 16 MiB,
/// 1.02x and 1.15x (with rounds) at 64 MiB.
pub(super) const HYBRID_UNEVEN_MIN_BYTES: usize = 16 << 20;

/// Smallest allreduce `auto` runs hybrid for on `ctx` (several hosts, some with several ranks).
pub(super) fn hybrid_min_bytes(ctx: &PlanContext) -> usize {
    let shape = ctx.shape();
    if shape.iter().all(|m| *m == shape[0]) {
        HYBRID_MIN_BYTES
    } else {
        HYBRID_UNEVEN_MIN_BYTES
    }
}
/// Smallest allreduce `auto` runs as CPU-Reduce on one host whose ranks share one staging
/// area, at least [`CPU_REDUCE_MIN_RANKS`] of them: there it measured 1.28-1.45x ring at
/// 16-256 MiB (4 ranks, 3 runs), and parity or worse below 16 MiB and with 2 ranks, where the
/// ring is one cache-resident exchange (docs/PERFORMANCE.md, "CPU-Reduce against ring").
pub(super) const CPU_REDUCE_MIN_BYTES: usize = 16 << 20;
pub(super) const CPU_REDUCE_MIN_RANKS: u32 = 4;

/// `auto`'s rule (see `Communicator::algorithm_for`).
pub(super) fn auto_rule(ctx: &PlanContext, coll: Collective, bytes: usize) -> Algorithm {
    let multi_host = ctx.nhosts() > 1 && ctx.shape().iter().any(|m| *m > 1);
    let small = bytes <= TREE_MAX_BYTES && ctx.nranks >= TREE_MIN_RANKS;
    // One host, one staging domain (no socket split, which is unmeasured) and no fallback.
    let cpu_reduce = ctx.nhosts() == 1
        && ctx.nranks >= CPU_REDUCE_MIN_RANKS
        && ctx.domains().len() == 1
        && acspeed_algorithms::cpu_reduce::fallback_reason(ctx).is_none();
    match coll {
        Collective::AllReduce if cpu_reduce && bytes >= CPU_REDUCE_MIN_BYTES => {
            Algorithm::CpuReduce
        }
        Collective::AllReduce if multi_host && bytes >= hybrid_min_bytes(ctx) => {
            Algorithm::Hybrid(acspeed_algorithms::InterHost::Ring)
        }
        Collective::AllReduce | Collective::Broadcast { .. } | Collective::Reduce { .. }
            if small =>
        {
            Algorithm::Tree
        }
        _ => Algorithm::Ring,
    }
}

/// Why `a`'s plan on `ctx` is another algorithm's, if it is (n-trees without NVLinks,
/// CPU-Reduce without a host of several ranks): the same on every rank.
pub(super) fn fallback_note(ctx: &PlanContext, a: Algorithm) -> Option<String> {
    match a {
        Algorithm::Ntree => acspeed_algorithms::ntree::fallback_reason(ctx)
            .map(|r| format!("{r}, so it runs the double binary tree")),
        Algorithm::CpuReduce => acspeed_algorithms::cpu_reduce::fallback_reason(ctx).map(|r| {
            let f = if ctx.nhosts() > 1 { "hybrid" } else { "ring" };
            format!("{r}, so it runs {f}")
        }),
        _ => None,
    }
}

/// One line of the algorithm table: which algorithm runs up to which power-of-two size.
pub(super) fn table_row(pick: impl Fn(usize) -> Algorithm) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut cur = pick(1);
    let mut last = 1usize;
    for b in (1..=40).map(|k| 1usize << k) {
        let a = pick(b);
        if a != cur {
            out.push(format!("{} to {}", cur.name(), human(last)));
            cur = a;
        }
        last = b;
    }
    out.push(format!("{} beyond", cur.name()));
    out.join("; ")
}

pub(super) fn human(b: usize) -> String {
    match b {
        0 => "0".into(),
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

/// NVLink counts between the GPUs of `ACSPEED_TOPO_FILE`, and each GPU's socket (both empty
/// without a file). acspeed moves bytes over shared memory and sockets, never GPU to GPU, so
/// probed links are not planned on: a topology file is the user saying which links plans
/// should treat as fast and which GPUs (ranks) sit on which socket.
pub fn gpu_facts(cfg: &Config) -> Result<(Vec<Vec<u8>>, Vec<u32>)> {
    if cfg.topo_file.is_none() {
        return Ok((Vec::new(), Vec::new()));
    }
    let d = crate::probe::discover(cfg)?;
    Ok((d.nvlink_matrix(), d.gpu_sockets()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_rule_by_shape_and_size() {
        let one = PlanContext::single_host(4);
        let two = PlanContext::from_shape(&[2, 2]).unwrap();
        let flat = PlanContext::from_shape(&[1, 1, 1, 1]).unwrap();
        let ar = Collective::AllReduce;
        let eight = PlanContext::single_host(8);
        assert_eq!(auto_rule(&eight, ar, 4 << 10), Algorithm::Tree);
        assert_eq!(auto_rule(&eight, ar, 4 << 20), Algorithm::Ring);
        assert_eq!(auto_rule(&eight, ar, 16 << 20), Algorithm::CpuReduce);
        assert_eq!(auto_rule(&one, ar, 4 << 10), Algorithm::Ring);
        assert_eq!(auto_rule(&one, ar, 16 << 20), Algorithm::CpuReduce);
        assert_eq!(
            table_row(|b| auto_rule(&one, ar, b)),
            "ring to 8M; cpu_reduce beyond"
        );
        // Two ranks, more than a staging area holds, or several sockets: ring.
        for ctx in [
            PlanContext::single_host(2),
            PlanContext::single_host(3),
            PlanContext::single_host(9),
        ] {
            assert_eq!(auto_rule(&ctx, ar, 256 << 20), Algorithm::Ring, "{ctx:?}");
        }
        let sockets = PlanContext {
            socket_of: vec![0, 0, 1, 1],
            ..PlanContext::single_host(4)
        };
        assert_eq!(auto_rule(&sockets, ar, 256 << 20), Algorithm::Ring);
        assert_eq!(
            auto_rule(&one, Collective::Broadcast { root: Rank(0) }, 64 << 20),
            Algorithm::Ring
        );
        assert_eq!(
            auto_rule(&PlanContext::single_host(2), ar, 64),
            Algorithm::Ring
        );
        assert!(matches!(
            auto_rule(&two, ar, 16 << 20),
            Algorithm::Hybrid(_)
        ));
        assert_eq!(auto_rule(&flat, ar, 16 << 20), Algorithm::Ring);
        assert_eq!(auto_rule(&one, Collective::AllGather, 64), Algorithm::Ring);
        assert_eq!(
            table_row(|b| auto_rule(&two, ar, b)),
            "ring to 128K; hybrid beyond"
        );
        // Uneven hosts: hybrid from 16 MiB.
        let uneven = PlanContext::from_shape(&[3, 1, 2]).unwrap();
        assert_eq!(
            table_row(|b| auto_rule(&uneven, ar, b)),
            "ring to 8M; hybrid beyond"
        );
        assert_eq!(
            table_row(|b| auto_rule(&eight, Collective::Broadcast { root: Rank(0) }, b)),
            "tree to 16K; ring beyond"
        );
    }
}
