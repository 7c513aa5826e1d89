//! The policy: the one place that decides which algorithm (and how many rounds) a collective
//! of a given size runs, and why. Layers, first match wins:
//! 1. per-size rules (`ACSPEED_ALLREDUCE`, `ACSPEED_BROADCAST`, `ACSPEED_REDUCE`);
//! 2. a forced algorithm (`ACSPEED_ALGO`, or `Communicator::set_algorithm`); the collectives
//!    it does not serve run ring;
//! 3. `auto`: the autotuner's measurements (`ACSPEED_AUTOTUNE`), else the selector's
//!    predictions (a GPU topology file or a CPU host model), else the fixed rule measured on
//!    this project's machines (docs/PERFORMANCE.md).
//!
//! Then [`Algorithm::fallback`] says what the chosen algorithm's plan is on this job. The
//! reason is data ([`Reason`]); it becomes text only where a person reads it (`explain`, the
//! logs, the timeline). The communicator and `acspeed explain` build the same policy with
//! [`Policy::for_job`], so what `explain` says is what runs.

use crate::autotune::{Class, Next, Tuner};
use crate::log::Logger;
use crate::model::JobModel;
use crate::selector::Selector;
use acspeed_algorithms::{Algorithm, Fallback, FallbackCause};
use acspeed_core::plan::Collective;
use acspeed_core::{Config, Error, PlanContext, Rank, Result};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Which layer of the policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    SizeRule,
    Forced,
    Autotune,
    Selector,
    FixedRule,
}

impl Layer {
    /// Whether `auto` decided (neither a size rule nor a forced algorithm).
    pub fn is_auto(self) -> bool {
        matches!(self, Layer::Autotune | Layer::Selector | Layer::FixedRule)
    }
}

/// Why a layer chose what it chose.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// A per-size rule of `var` covers `lo..hi`.
    SizeRule {
        var: &'static str,
        lo: usize,
        hi: usize,
    },
    /// `ACSPEED_ALGO` (or `set_algorithm`) names the algorithm.
    Forced(Algorithm),
    /// The forced algorithm does not serve the collective, which runs ring.
    ForcedDoesNotServe {
        forced: Algorithm,
        coll: &'static str,
    },
    /// The autotuner is trying candidates or has measured its choice (its own account).
    Tuning(String),
    /// A choice cached by an earlier job, which every rank confirms at the first call.
    CachedChoice { file: String },
    /// The selector's predictions, fastest first, and the model they come from.
    Predicted {
        times: Vec<(Algorithm, f64)>,
        model: Arc<str>,
    },
    /// The fixed rule: ranks span hosts and the message is at least `min_bytes`.
    AutoHybrid {
        hosts: usize,
        shape: Vec<u32>,
        min_bytes: usize,
    },
    /// The fixed rule: enough ranks for the tree and a latency-bound message.
    AutoTree { nranks: u32 },
    /// The fixed rule: one host's ranks share a staging area and the message is large.
    AutoCpuReduce { nranks: u32, small: bool },
    /// The fixed rule's default.
    AutoRing,
}

/// What a collective of a given size runs, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The algorithm whose plans run (a fallback for lack of shared memory already applied).
    pub algorithm: Algorithm,
    /// Rounds of its plan at this size ([`Algorithm::rounds_for`]).
    pub rounds: u32,
    pub layer: Layer,
    pub reason: Reason,
    /// When the chosen algorithm's plan is another's on this job, which and why.
    pub fallback: Option<Fallback>,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SizeRule { var, lo, hi } => {
                let hi = if *hi == usize::MAX {
                    "max".into()
                } else {
                    human(*hi)
                };
                write!(f, "{var} range {}-{hi}", human(*lo))
            }
            Reason::Forced(a) => write!(f, "ACSPEED_ALGO={}", a.name()),
            Reason::ForcedDoesNotServe { forced, coll } => {
                write!(f, "ACSPEED_ALGO={} does not serve {coll}: ring", forced.name())
            }
            Reason::Tuning(why) => f.write_str(why),
            Reason::CachedChoice { file } => write!(
                f,
                "ACSPEED_AUTOTUNE: cached in {file}, to be confirmed by every rank at the first call"
            ),
            Reason::Predicted { times, model } => {
                let t: Vec<String> = times
                    .iter()
                    .map(|(a, us)| format!("{} {us:.0} us", a.name()))
                    .collect();
                write!(f, "selector: predicted {} ({model})", t.join(", "))
            }
            Reason::AutoHybrid {
                hosts,
                shape,
                min_bytes,
            } => write!(
                f,
                "auto: ranks span {hosts} hosts {shape:?} and the message is >= {}",
                human(*min_bytes)
            ),
            Reason::AutoTree { nranks } => write!(
                f,
                "auto: {nranks} ranks (>= {TREE_MIN_RANKS}) and <= {}",
                human(TREE_MAX_BYTES)
            ),
            Reason::AutoCpuReduce { nranks, small } => write!(
                f,
                "auto: {nranks} ranks on one host share a staging area and the message is {}",
                if *small {
                    format!("<= {} (one hand-off through the area)", human(cpu_reduce_small_max(*nranks)))
                } else {
                    format!(">= {}", human(CPU_REDUCE_MIN_BYTES))
                }
            ),
            Reason::AutoRing => {
                f.write_str("auto: ring (bandwidth-optimal; no hierarchy or latency rule applies)")
            }
        }
    }
}

impl fmt::Display for Decision {
    /// The reason, then the fallback if any: `explain`'s and the logs' wording.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        match &self.fallback {
            Some(fb) if fb.cause == FallbackCause::NoSharedMemory => write!(f, ", but {fb}"),
            Some(fb) => write!(f, "; {fb}"),
            None => Ok(()),
        }
    }
}

/// The policy of one job (see the module docs).
pub struct Policy {
    ctx: PlanContext,
    rules: SizeRules,
    forced: Mutex<Option<Algorithm>>,
    tuner: Option<Tuner>,
    /// Predicted choices where `auto` decides (else why there is no model).
    selector: std::result::Result<Arc<Selector>, String>,
    /// The selector's account of its model, shared by every decision it makes.
    model: Arc<str>,
    /// Candidates of allreduce, broadcast and reduce for the autotuner and the selector
    /// (empty when neither is on), the same on every rank.
    cands: [Vec<Algorithm>; 3],
    /// [`Algorithm::fallback`] of every algorithm on this job, computed once (n-trees' asks
    /// for the tree packing): the same for every collective the algorithm serves.
    fallbacks: Vec<(Algorithm, Option<Fallback>)>,
    /// Decisions by (collective, bytes) while nothing but the size decides (no autotuner,
    /// whose choices change as it measures); emptied by `set_forced` and at
    /// [`MAX_DECISIONS`] entries.
    decided: Mutex<HashMap<(Collective, usize), Arc<Decision>>>,
    log: Logger,
}

/// Decisions a policy keeps (see `Policy::decided`).
const MAX_DECISIONS: usize = 1024;

impl Policy {
    /// The policy of the job `model` describes, under `cfg`. Warnings (an unreadable
    /// autotune cache) go to `log`.
    pub fn for_job(cfg: &Config, model: &JobModel, log: Logger) -> Result<Policy> {
        let ctx = &model.context;
        let forced = match &cfg.policy.algo {
            acspeed_core::config::AlgoChoice::Auto => None,
            acspeed_core::config::AlgoChoice::Named(n) => {
                Some(Algorithm::from_name(n).map_err(|e| match e {
                    Error::InvalidArgument(m) => Error::invalid(format!("ACSPEED_ALGO: {m}")),
                    e => e,
                })?)
            }
        };
        let rules = size_rules(cfg)?;
        let mut warnings = Vec::new();
        let tuner = match cfg.policy.autotune {
            true => Some(Tuner::new(
                model.facts.tune_key(ctx, cfg),
                cfg.policy.autotune_file.as_deref(),
                cfg.policy.cache_dir.as_deref(),
                &mut warnings,
            )),
            false => None,
        };
        warnings.iter().for_each(|w| log.warn(w));
        let selector = match &model.cluster {
            Ok(c) => Ok(Arc::new(Selector::new(c, cfg.exec.segment_bytes))),
            Err(why) => Err(why.clone()),
        };
        let model: Arc<str> = match &selector {
            Ok(s) => s.about.as_str().into(),
            Err(_) => "".into(),
        };
        let cands = if tuner.is_some() || selector.is_ok() {
            COLLECTIVES_CHOSEN.map(|coll| {
                acspeed_algorithms::select::candidates(coll, ctx)
                    .into_iter()
                    // Without shared memory CPU-Reduce runs another algorithm's plan. Only
                    // agreed facts may decide: a rank alone in its domain has no staging area
                    // of its own yet runs CPU-Reduce plans like the others (a candidate list
                    // that differed there made 3+1+2 jobs under ACSPEED_AUTOTUNE issue
                    // different calls on rank 3 and fail with a mismatch).
                    .filter(|a| *a != Algorithm::CpuReduce || cfg.transport.shm)
                    .collect()
            })
        } else {
            Default::default()
        };
        let fallbacks = Algorithm::ALL
            .iter()
            .map(|a| {
                (
                    *a,
                    a.fallback(Collective::AllReduce, ctx, cfg.transport.shm),
                )
            })
            .collect();
        Ok(Policy {
            ctx: ctx.clone(),
            fallbacks,
            decided: Mutex::default(),
            rules,
            forced: Mutex::new(forced),
            tuner,
            selector,
            model,
            cands,
            log,
        })
    }

    /// What a collective of `bytes` (output buffer size) runs, and why. Without side effects:
    /// the autotuner is asked what it would run next, not told anything.
    pub fn decide(&self, coll: Collective, bytes: usize) -> Arc<Decision> {
        if self.tuner.is_some() {
            return Arc::new(self.decide_now(coll, bytes));
        }
        // Held while deciding, so a `set_forced` (which empties the map under this lock) is
        // never overtaken by a decision made with the old setting; calls of one communicator
        // are sequential anyway.
        let mut m = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get(&(coll, bytes)) {
            return d.clone();
        }
        if m.len() >= MAX_DECISIONS {
            m.clear();
        }
        let d = Arc::new(self.decide_now(coll, bytes));
        m.insert((coll, bytes), d.clone());
        d
    }

    fn decide_now(&self, coll: Collective, bytes: usize) -> Decision {
        let (algo, layer, reason) = self.choose(coll, bytes);
        let fallback = self
            .fallbacks
            .iter()
            .find(|(a, _)| *a == algo && algo.serves(coll))
            .and_then(|(_, f)| f.clone());
        // Without shared memory there is no staging area to plan CPU-Reduce on: its fallback's
        // plans run. The other fallbacks are inside the chosen algorithm's own plans.
        let algorithm = match &fallback {
            Some(fb) if fb.cause == FallbackCause::NoSharedMemory => fb.runs,
            _ => algo,
        };
        Decision {
            algorithm,
            rounds: algorithm.rounds_for(coll, bytes, &self.ctx),
            layer,
            reason,
            fallback,
        }
    }

    fn choose(&self, coll: Collective, bytes: usize) -> (Algorithm, Layer, Reason) {
        let rules = match coll {
            Collective::AllReduce => &self.rules.0,
            Collective::Broadcast { .. } => &self.rules.1,
            Collective::Reduce { .. } => &self.rules.2,
            _ => &self.rules.3,
        };
        if let Some((a, lo, hi)) = rules.iter().find(|(_, lo, hi)| (*lo..*hi).contains(&bytes)) {
            let var = match coll {
                Collective::AllReduce => "ACSPEED_ALLREDUCE",
                Collective::Broadcast { .. } => "ACSPEED_BROADCAST",
                _ => "ACSPEED_REDUCE",
            };
            let reason = Reason::SizeRule {
                var,
                lo: *lo,
                hi: *hi,
            };
            return (*a, Layer::SizeRule, reason);
        }
        if let Some(a) = self.forced() {
            return if a.serves(coll) {
                (a, Layer::Forced, Reason::Forced(a))
            } else {
                let reason = Reason::ForcedDoesNotServe {
                    forced: a,
                    coll: coll.name(),
                };
                (Algorithm::Ring, Layer::Forced, reason)
            };
        }
        if let (Some(t), Some(class)) = (&self.tuner, Class::of(coll, bytes)) {
            match t.next(class, self.candidates(coll)) {
                Some(Next::Run { algo, why, .. }) => {
                    return (algo, Layer::Autotune, Reason::Tuning(why))
                }
                Some(Next::Confirm(c)) => {
                    let file = t.path().display().to_string();
                    return (c, Layer::Autotune, Reason::CachedChoice { file });
                }
                None => {}
            }
        }
        if let Some((a, reason)) = self.predicted(coll, bytes) {
            return (a, Layer::Selector, reason);
        }
        let a = auto_rule(&self.ctx, coll, bytes);
        let reason = match a {
            Algorithm::Hybrid(_) => Reason::AutoHybrid {
                hosts: self.ctx.nhosts(),
                shape: self.ctx.shape(),
                min_bytes: hybrid_min_bytes(&self.ctx),
            },
            Algorithm::Tree => Reason::AutoTree {
                nranks: self.ctx.nranks,
            },
            Algorithm::CpuReduce => Reason::AutoCpuReduce {
                nranks: self.ctx.nranks,
                small: bytes <= cpu_reduce_small_max(self.ctx.nranks),
            },
            _ => Reason::AutoRing,
        };
        (a, Layer::FixedRule, reason)
    }

    /// The selector's choice where it has a model, with every candidate's predicted time.
    fn predicted(&self, coll: Collective, bytes: usize) -> Option<(Algorithm, Reason)> {
        let s = self.selector.as_ref().ok()?;
        let cands = self.candidates(coll);
        if cands.len() < 2 {
            return None;
        }
        match s.predictions(coll, bytes, cands) {
            Ok(p) if !p.is_empty() => Some((
                p[0].algo,
                Reason::Predicted {
                    times: p.iter().map(|x| (x.algo, x.time_us)).collect(),
                    model: self.model.clone(),
                },
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

    /// The forced algorithm (`ACSPEED_ALGO`, or the last `set_forced`).
    pub fn forced(&self) -> Option<Algorithm> {
        *self.forced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forces an algorithm for later decisions (`None`: back to the rules and `auto`).
    pub fn set_forced(&self, algo: Option<Algorithm>) {
        *self.forced.lock().unwrap_or_else(|e| e.into_inner()) = algo;
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The algorithms the autotuner and the selector choose among for `coll`, in the same
    /// order on every rank.
    pub fn candidates(&self, coll: Collective) -> &[Algorithm] {
        match coll {
            Collective::AllReduce => &self.cands[0],
            Collective::Broadcast { .. } => &self.cands[1],
            Collective::Reduce { .. } => &self.cands[2],
            _ => &[],
        }
    }

    /// The collectives `auto` chooses among candidates for, with their candidates.
    pub fn chosen_collectives(&self) -> Vec<(Collective, Vec<Algorithm>)> {
        COLLECTIVES_CHOSEN
            .into_iter()
            .zip(self.cands.iter().cloned())
            .collect()
    }

    pub fn tuner(&self) -> Option<&Tuner> {
        self.tuner.as_ref()
    }

    pub fn selector(&self) -> std::result::Result<&Arc<Selector>, &String> {
        self.selector.as_ref()
    }

    pub fn context(&self) -> &PlanContext {
        &self.ctx
    }
}

/// `explain`'s line for a decision: what runs for a collective of `bytes` on the job, and why.
pub fn explain_line(ctx: &PlanContext, coll: Collective, bytes: usize, d: &Decision) -> String {
    format!(
        "{} of {bytes} bytes on {} ranks (hosts {:?}): {} ({d})",
        coll.name(),
        ctx.nranks,
        ctx.shape(),
        d.algorithm.name()
    )
}

/// The collectives for which `auto` ranks candidates (the others run ring or the fixed rule).
const COLLECTIVES_CHOSEN: [Collective; 3] = [
    Collective::AllReduce,
    Collective::Broadcast { root: Rank(0) },
    Collective::Reduce { root: Rank(0) },
];

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
            &cfg.policy.allreduce_rules,
        )?,
        resolve(
            "ACSPEED_BROADCAST",
            Collective::Broadcast { root: Rank(0) },
            &cfg.policy.broadcast_rules,
        )?,
        resolve(
            "ACSPEED_REDUCE",
            Collective::Reduce { root: Rank(0) },
            &cfg.policy.reduce_rules,
        )?,
        Vec::new(),
    ))
}

/// Largest message the double binary tree takes in `auto` (latency-bound sizes).
pub(crate) const TREE_MAX_BYTES: usize = 16 << 10;
/// Fewest ranks for which `auto` uses the tree (2 log2(n) hops against the ring's 2(n-1)).
pub(crate) const TREE_MIN_RANKS: u32 = 8;
/// Smallest allreduce that goes hybrid in `auto` when ranks span hosts of equal rank counts:
/// below it hybrid ties the flat ring (docs/PERFORMANCE.md, "Algorithm choice").
pub(crate) const HYBRID_MIN_BYTES: usize = 256 << 10;
/// The same on hosts of different rank counts, where the one-rank host drives every stripe and
/// hybrid gains less (docs/PERFORMANCE.md, "Hybrid in overlapping rounds").
pub(crate) const HYBRID_UNEVEN_MIN_BYTES: usize = 16 << 20;

/// Smallest allreduce `auto` runs hybrid for on `ctx` (several hosts, some with several ranks).
pub(crate) fn hybrid_min_bytes(ctx: &PlanContext) -> usize {
    let shape = ctx.shape();
    if shape.iter().all(|m| *m == shape[0]) {
        HYBRID_MIN_BYTES
    } else {
        HYBRID_UNEVEN_MIN_BYTES
    }
}
/// Smallest allreduce `auto` runs as CPU-Reduce on one host whose ranks (at least
/// [`CPU_REDUCE_MIN_RANKS`]) share one staging area (docs/PERFORMANCE.md, "CPU-Reduce against
/// ring").
pub(crate) const CPU_REDUCE_MIN_BYTES: usize = 16 << 20;
pub(crate) const CPU_REDUCE_MIN_RANKS: u32 = 4;
/// Largest allreduce `auto` also runs as CPU-Reduce on one host of any rank count sharing one
/// staging area: each rank hands its bytes over once and takes the result, where a ring needs
/// 2(n-1) dependent steps (docs/PERFORMANCE.md, "CPU-Reduce against ring").
pub(crate) fn cpu_reduce_small_max(nranks: u32) -> usize {
    if nranks >= CPU_REDUCE_MIN_RANKS {
        256 << 10
    } else {
        64 << 10
    }
}

/// `auto`'s fixed rule (see [`Policy::decide`]).
pub(crate) fn auto_rule(ctx: &PlanContext, coll: Collective, bytes: usize) -> Algorithm {
    let multi_host = ctx.nhosts() > 1 && ctx.shape().iter().any(|m| *m > 1);
    let small = bytes <= TREE_MAX_BYTES && ctx.nranks >= TREE_MIN_RANKS;
    // One host, one staging domain (no socket split, which is unmeasured) and no fallback.
    let cpu_reduce = ctx.nhosts() == 1
        && ctx.nranks >= 2
        && ctx.domains().len() == 1
        && acspeed_algorithms::cpu_reduce::fallback_reason(ctx).is_none();
    let large = ctx.nranks >= CPU_REDUCE_MIN_RANKS && bytes >= CPU_REDUCE_MIN_BYTES;
    match coll {
        Collective::AllReduce
            if cpu_reduce && (large || bytes <= cpu_reduce_small_max(ctx.nranks)) =>
        {
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

/// One line of the algorithm table: which algorithm runs up to which power-of-two size.
pub(crate) fn table_row(pick: impl Fn(usize) -> Algorithm) -> String {
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

pub(crate) fn human(b: usize) -> String {
    match b {
        0 => "0".into(),
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
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
        // Small allreduces on one host go through the staging area (one hand-off each).
        assert_eq!(auto_rule(&eight, ar, 4 << 10), Algorithm::CpuReduce);
        assert_eq!(auto_rule(&eight, ar, 4 << 20), Algorithm::Ring);
        assert_eq!(auto_rule(&eight, ar, 16 << 20), Algorithm::CpuReduce);
        assert_eq!(auto_rule(&one, ar, 4 << 10), Algorithm::CpuReduce);
        assert_eq!(auto_rule(&one, ar, 16 << 20), Algorithm::CpuReduce);
        assert_eq!(
            table_row(|b| auto_rule(&one, ar, b)),
            "cpu_reduce to 256K; ring to 8M; cpu_reduce beyond"
        );
        for n in [2, 3] {
            assert_eq!(
                table_row(|b| auto_rule(&PlanContext::single_host(n), ar, b)),
                "cpu_reduce to 64K; ring beyond"
            );
        }
        // Across hosts, one rank per host, nothing to share.
        assert_eq!(auto_rule(&flat, ar, 4 << 10), Algorithm::Ring);
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
        // Nine ranks are more than one staging area serves: the tree takes small messages.
        assert_eq!(
            auto_rule(&PlanContext::single_host(9), ar, 64),
            Algorithm::Tree
        );
        assert_eq!(auto_rule(&sockets, ar, 4 << 10), Algorithm::Ring);
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
