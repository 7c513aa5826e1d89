//! `auto` by prediction on GPU hosts: with a topology file (`ACSPEED_TOPO_FILE`) that
//! describes GPUs, the communicator models the job as that host times the agreed host shape,
//! and it simulates every candidate algorithm on the very plans the executor would run. The
//! fastest prediction per collective and power-of-two size class is what `auto` runs. The
//! cost table is filled at init on a background thread ([`Fill`]); a call that gets to a class
//! first predicts it itself.
//!
//! On CPU hosts the same happens with a host model the user measured once per machine type
//! (`ACSPEED_HOST_MODEL`, from `acspeed simulate --here --json`) and the network given by
//! `ACSPEED_NET_GBPS` / `ACSPEED_FLOW_GBPS`. Without either there is no model, and `auto` keeps
//! its measured fixed rule (or `ACSPEED_AUTOTUNE`): the CPU model is measured in seconds, too
//! slow for every init, and on VMs whose vCPU placement changes its shared-memory figures move
//! with it (docs/PERFORMANCE.md, "Simulator against measurement").
//!
//! Every rank must build the same table. The inputs are the agreed context, the settings
//! compared at rendezvous and the topology file, whose fingerprint init compares too. The
//! simulator is deterministic.

use crate::autotune::Class;
use acspeed_algorithms::select::{context_of, rank_candidates, Prediction};
use acspeed_algorithms::Algorithm;
use acspeed_core::plan::Collective;
use acspeed_core::sim::Cluster;
use acspeed_core::{Error, PlanContext, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The largest size class the init-time fill covers (1 GiB); larger classes are predicted on
/// their first call, with the same result.
pub const FILL_MAX_LOG2: u32 = 30;

/// Wall time the init-time fill may take. Every entry up to 1 GiB took 20-23 s per rank for 8
/// ranks of a V100 box sharing this 2-core VM, and the cost grows with ranks x steps (1024
/// ranks: minutes per entry at 1 GiB); past the budget the fill ends, so a large job does not
/// keep a core per rank busy for its first half hour.
const FILL_BUDGET: Duration = Duration::from_secs(60);

/// A table entry: a power-of-two size class and a quarter of it. The class of messages of
/// 2^(k-1)+1 ..= 2^k bytes is cut at its quarter points 2^(k-1) x 5/4, 6/4, 7/4 and 8/4, and
/// each part is predicted at its largest size. On the topology fixtures a pick per whole class
/// was up to 1.47x the best prediction at sizes between the class tops (the crossover of two
/// algorithms inside a class); per quarter, at most 1.03x at the eighth points
/// (`benches/select_fixtures.py`, 2026-11-30).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    class: Class,
    quarter: u32,
}

impl Key {
    fn of(class: Class, bytes: usize) -> Key {
        let k = class.log2();
        let quarter = if k < QUARTERS_FROM_LOG2 {
            4
        } else {
            let base = 1usize << (k - 1);
            (1..=4).find(|j| bytes <= base / 4 * (4 + j)).unwrap_or(4) as u32
        };
        Key { class, quarter }
    }

    /// The largest size of the entry (where it is predicted).
    fn bytes(&self) -> usize {
        let k = self.class.log2();
        if k < QUARTERS_FROM_LOG2 {
            1 << k
        } else {
            (1usize << (k - 1)) / 4 * (4 + self.quarter as usize)
        }
    }
}

/// Classes below 16 bytes are not cut (their quarters would not be whole bytes).
const QUARTERS_FROM_LOG2: u32 = 4;

/// One entry of the cost table: filled once, by whichever thread gets there first (the
/// background fill or a call), and waited for by the others.
type Cell = Arc<OnceLock<std::result::Result<Vec<Prediction>, String>>>;

/// The model and its cost table.
pub struct Selector {
    cluster: Cluster,
    /// What the model is, for explanations.
    pub about: String,
    segment_bytes: usize,
    elem: usize,
    table: Mutex<HashMap<Key, Cell>>,
}

impl Selector {
    /// The selector over the job's cluster model; `segment_bytes` is the job's segment
    /// rule, which the predictions lower with.
    pub fn new(model: &crate::model::ClusterModel, segment_bytes: usize) -> Selector {
        Selector {
            cluster: model.cluster.clone(),
            about: model.about.clone(),
            segment_bytes,
            elem: 4,
            table: Mutex::default(),
        }
    }

    /// Predictions for `coll` at the size class of `bytes`, fastest first, among `cands`
    /// (computed once per class: by the init-time fill, or here if the fill has not reached
    /// the class yet; the simulator is deterministic, so either gives the same table).
    pub fn predictions(
        &self,
        coll: Collective,
        bytes: usize,
        cands: &[Algorithm],
    ) -> Result<Vec<Prediction>> {
        let Some(class) = Class::of(coll, bytes) else {
            return Ok(Vec::new());
        };
        self.predict_class(coll, Key::of(class, bytes), cands, None)
    }

    fn predict_class(
        &self,
        coll: Collective,
        key: Key,
        cands: &[Algorithm],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<Prediction>> {
        let cell = self.lock().entry(key).or_default().clone();
        cell.get_or_init(|| {
            // Predict at the entry's largest size: the same for every call it covers.
            let b = key.bytes().max(self.elem);
            let seg = acspeed_algorithms::select::sim_segment_bytes(self.segment_bytes, b);
            let run = || rank_candidates(coll, &self.cluster, cands, b, self.elem, seg);
            match pool {
                Some(p) => p.install(run),
                None => run(),
            }
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::invalid)
    }

    /// Fills the cost table for every `(collective, candidates)` in `work` and every size
    /// class up to 1 GiB, smallest first, until `stop` is set. Returns how many classes it
    /// covered and the seconds it took.
    ///
    /// Stops early, too, once `budget` has passed (checked between classes): the classes it
    /// has not reached are predicted at their first call, with the same result. Returns how
    /// many classes it covered, the seconds it took, and whether it covered them all.
    pub fn fill(
        &self,
        work: &[(Collective, Vec<Algorithm>)],
        stop: &AtomicBool,
        budget: Duration,
    ) -> Result<(usize, f64, bool)> {
        let t0 = Instant::now();
        // One thread: the background fill must not take every core from the job.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "acspeed-select-sim".into())
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| Error::invalid(format!("selector: no thread for the table fill: {e}")))?;
        let mut n = 0;
        for log2 in 0..=FILL_MAX_LOG2 {
            for (coll, cands) in work.iter().filter(|(_, c)| c.len() >= 2) {
                if stop.load(Ordering::Relaxed) || t0.elapsed() >= budget {
                    return Ok((n, t0.elapsed().as_secs_f64(), false));
                }
                let Some(class) = Class::of(*coll, 1usize << log2) else {
                    continue;
                };
                for quarter in if log2 < QUARTERS_FROM_LOG2 {
                    4..=4
                } else {
                    1..=4
                } {
                    if stop.load(Ordering::Relaxed) || t0.elapsed() >= budget {
                        return Ok((n, t0.elapsed().as_secs_f64(), false));
                    }
                    self.predict_class(*coll, Key { class, quarter }, cands, Some(&pool))?;
                    n += 1;
                }
            }
        }
        Ok((n, t0.elapsed().as_secs_f64(), true))
    }

    /// The classes up to 1 GiB whose predictions are in the table now.
    pub fn filled(&self) -> usize {
        self.lock()
            .iter()
            .filter(|(k, c)| k.class.log2() <= FILL_MAX_LOG2 && c.get().is_some())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cell>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The context the model describes (for checks: it must be the job's).
    pub fn context(&self) -> PlanContext {
        context_of(&self.cluster)
    }
}

/// The init-time fill of a selector's cost table, on a thread of its own so init does not
/// wait for it. Dropping it stops the fill after the class in progress and joins the thread.
pub struct Fill {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Fill {
    /// Starts filling `sel`'s table for `work`; logs at INFO when done (or a warning if a
    /// prediction failed: those classes fall back to `auto`'s fixed rule, alike on every rank).
    pub fn start(
        sel: Arc<Selector>,
        work: Vec<(Collective, Vec<Algorithm>)>,
        log: crate::log::Logger,
    ) -> Fill {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("acspeed-select".into())
            .spawn(move || match sel.fill(&work, &flag, FILL_BUDGET) {
                Ok((n, secs, true)) => log.info(&format!(
                    "selector: cost table filled at init: {n} (collective, quarter of a size class) entries, 1 B to 1 GiB, in {secs:.2} s"
                )),
                Ok((n, secs, false)) if !flag.load(Ordering::Relaxed) => log.info(&format!(
                    "selector: cost table fill stopped after {secs:.0} s (its budget) with {n} entries; larger classes are predicted at their first call"
                )),
                Ok(_) => {}
                Err(e) => log.warn(&format!("selector: table fill stopped: {e}")),
            })
            .ok();
        Fill { stop, handle }
    }

    /// Waits for the fill to end (tests, explanations that want the whole table).
    pub fn wait(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wait();
    }
}

/// Nice 10 for the calling thread: the table fill runs beside the job's own threads and must
/// yield to them on a busy host.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread; a failure only leaves the priority as is.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}
