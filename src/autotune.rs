//! Measured algorithm choice (`ACSPEED_AUTOTUNE=1`).
//!
//! Where `auto` decides, the first calls of each (collective, power-of-two size class) run the
//! candidates one after another, `TRIALS` consecutive calls each (consecutive, because an
//! algorithm's first call after another's pays for the switch: its caches, its threads
//! waking), timing every call locally. The ranks then agree:
//! one small MAX allreduce of the time vector gives each call's slowest rank, and every
//! rank picks the candidate with the lowest median of those. Every rank gets the same
//! vector, so all pick the same algorithm. The choice is saved to a cache file. A later job
//! that reads it first checks that every rank read the same choice (another small allreduce),
//! and re-measures if not. So a stale or missing file on one host costs a re-measurement,
//! never a mismatch.
//!
//! The trials are real calls on the caller's data: each one runs a complete, correct
//! algorithm, so nothing is run twice and no result is lost. This module only keeps the state;
//! the communicator runs the calls and the agreements.

use acspeed_algorithms::Algorithm;
use acspeed_core::plan::Collective;
use acspeed_core::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Calls per candidate; the median of the slowest rank's times decides, so one slow call
/// (a first touch of new memory, a noisy neighbour) does not.
pub const TRIALS: usize = 3;

/// A collective kind and power-of-two size class (messages of 2^(k-1)+1 ..= 2^k bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Class {
    kind: &'static str,
    log2: u32,
}

impl Class {
    /// The class of a call, for the collectives that have several algorithms to choose from.
    pub fn of(coll: Collective, bytes: usize) -> Option<Class> {
        let kind = match coll {
            Collective::AllReduce => "allreduce",
            Collective::Broadcast { .. } => "broadcast",
            Collective::Reduce { .. } => "reduce",
            _ => return None,
        };
        Some(Class {
            kind,
            log2: bytes.max(1).next_power_of_two().trailing_zeros(),
        })
    }

    /// log2 of the class's largest size.
    pub fn log2(&self) -> u32 {
        self.log2
    }

    /// `allreduce/1M`: the kind and the class's largest size.
    pub fn name(&self) -> String {
        let b = 1u64 << self.log2;
        let size = match b {
            b if b >= 1 << 30 => format!("{}G", b >> 30),
            b if b >= 1 << 20 => format!("{}M", b >> 20),
            b if b >= 1 << 10 => format!("{}K", b >> 10),
            b => b.to_string(),
        };
        format!("{}/{size}", self.kind)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Read from the cache file; every rank must confirm it before it runs.
    Cached(Algorithm),
    /// Call `i` of the class runs `cands[i / TRIALS]`; `times[i]` is its local time in
    /// seconds.
    Trying {
        cands: Vec<Algorithm>,
        times: Vec<f64>,
    },
    Decided {
        algo: Algorithm,
        /// Per candidate: the median over its trials of the slowest rank's time, in us.
        medians_us: Vec<(Algorithm, f64)>,
    },
}

/// What the communicator does for a call that `auto` decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Run `algo`; with `trial`, report the call's time with [`Tuner::record`].
    Run {
        algo: Algorithm,
        trial: bool,
        why: String,
    },
    /// Confirm the cached `algo` with every rank first ([`Tuner::confirm`]).
    Confirm(Algorithm),
}

/// The autotuner of one communicator.
pub struct Tuner {
    path: PathBuf,
    key: String,
    states: Mutex<HashMap<Class, State>>,
}

/// The cache file's contents.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct CacheFile {
    key: String,
    /// Class name -> (algorithm name, candidate medians in us).
    choices: BTreeMap<String, (String, BTreeMap<String, f64>)>,
}

impl Tuner {
    /// A tuner for the job described by `key` (its shape and settings). Its cache is `file`,
    /// or a file named after a hash of `key` in `dir` (the system's temporary directory
    /// without one). A cache that cannot be read, or is for another key, is ignored, with the
    /// reason in `warnings`.
    pub fn new(
        key: String,
        file: Option<&str>,
        dir: Option<&str>,
        warnings: &mut Vec<String>,
    ) -> Tuner {
        let path = match file {
            Some(f) => PathBuf::from(f),
            None => dir
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("acspeed"))
                .join(format!("autotune-{:016x}.json", crate::facts::fnv64(&key))),
        };
        let mut states = HashMap::new();
        match read_cache(&path) {
            Ok(Some(c)) if c.key == key => {
                for (class, (algo, _)) in c.choices {
                    match (parse_class(&class), Algorithm::from_name(&algo)) {
                        (Some(cl), Ok(a)) => {
                            states.insert(cl, State::Cached(a));
                        }
                        _ => warnings.push(format!(
                            "ACSPEED_AUTOTUNE: ignoring entry {class}={algo} of {}",
                            path.display()
                        )),
                    }
                }
            }
            Ok(Some(_)) => warnings.push(format!(
                "ACSPEED_AUTOTUNE: {} was written for another job shape or settings; measuring again",
                path.display()
            )),
            Ok(None) => {}
            Err(e) => warnings.push(format!(
                "ACSPEED_AUTOTUNE: ignoring {}: {e}; measuring again",
                path.display()
            )),
        }
        Tuner {
            path,
            key,
            states: Mutex::new(states),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Class, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to run for the next call of `class`, given the candidates (in a fixed order, the
    /// same on every rank). With fewer than two candidates there is nothing to measure.
    pub fn next(&self, class: Class, cands: &[Algorithm]) -> Option<Next> {
        if cands.len() < 2 {
            return None;
        }
        let mut st = self.lock();
        let s = st.entry(class).or_insert_with(|| State::Trying {
            cands: cands.to_vec(),
            times: Vec::new(),
        });
        Some(match s {
            State::Cached(a) => Next::Confirm(*a),
            State::Trying { cands, times } => {
                let i = times.len();
                let algo = cands[i / TRIALS];
                Next::Run {
                    algo,
                    trial: true,
                    why: format!(
                        "ACSPEED_AUTOTUNE: measuring {} (call {} of {}: {} candidates x {TRIALS})",
                        class.name(),
                        i + 1,
                        cands.len() * TRIALS,
                        cands.len()
                    ),
                }
            }
            State::Decided { algo, medians_us } => Next::Run {
                algo: *algo,
                trial: false,
                why: format!(
                    "ACSPEED_AUTOTUNE: {} {}",
                    class.name(),
                    if medians_us.is_empty() {
                        "confirmed from the cache by every rank".to_string()
                    } else {
                        format!("measured {}", medians_text(medians_us))
                    }
                ),
            },
        })
    }

    /// Records a trial's local time. Returns the class's local times once every trial ran:
    /// the communicator then MAX-allreduces them and calls [`Tuner::decide`].
    pub fn record(&self, class: Class, seconds: f64) -> Option<Vec<f64>> {
        let mut st = self.lock();
        match st.get_mut(&class) {
            Some(State::Trying { cands, times }) => {
                times.push(seconds);
                (times.len() == cands.len() * TRIALS).then(|| times.clone())
            }
            _ => None,
        }
    }

    /// Decides `class` from every call's slowest-rank time (`maxed`, identical on every
    /// rank) and saves the choice.
    pub fn decide(&self, class: Class, maxed: &[f64]) -> Result<Decision> {
        let (algo, medians_us) = {
            let mut st = self.lock();
            let Some(State::Trying { cands, .. }) = st.get(&class) else {
                return Err(Error::invalid(format!(
                    "autotune: {} is not being measured",
                    class.name()
                )));
            };
            let cands = cands.clone();
            if maxed.len() != cands.len() * TRIALS {
                return Err(Error::invalid(format!(
                    "autotune: {} times for {} trials of {}",
                    maxed.len(),
                    cands.len() * TRIALS,
                    class.name()
                )));
            }
            let medians_us: Vec<(Algorithm, f64)> = cands
                .iter()
                .enumerate()
                .map(|(k, a)| {
                    let mut t: Vec<f64> =
                        (0..TRIALS).map(|j| maxed[k * TRIALS + j] * 1e6).collect();
                    t.sort_by(f64::total_cmp);
                    (*a, t[TRIALS / 2])
                })
                .collect();
            // Strictly faster only: ties keep the earlier candidate, on every rank alike.
            let best = medians_us
                .iter()
                .fold(medians_us[0], |b, x| if x.1 < b.1 { *x } else { b });
            st.insert(
                class,
                State::Decided {
                    algo: best.0,
                    medians_us: medians_us.clone(),
                },
            );
            (best.0, medians_us)
        };
        let summary = format!(
            "ACSPEED_AUTOTUNE: {} runs {}; measured {}",
            class.name(),
            algo.name(),
            medians_text(&medians_us)
        );
        Ok(Decision {
            algo,
            summary,
            saved: self.save(class, algo, &medians_us),
        })
    }

    /// After the confirmation allreduce: every rank had `agreed`'s cached choice, or (false)
    /// some rank had another or none, and the class is measured again.
    pub fn confirm(&self, class: Class, cands: &[Algorithm], agreed: bool) {
        let mut st = self.lock();
        let next = match st.get(&class) {
            Some(State::Cached(a)) if agreed => State::Decided {
                algo: *a,
                medians_us: Vec::new(),
            },
            _ => State::Trying {
                cands: cands.to_vec(),
                times: Vec::new(),
            },
        };
        st.insert(class, next);
    }

    /// Merges this choice into the cache file: written to a temporary file and renamed, so
    /// ranks of one host saving at once never leave a torn file.
    fn save(&self, class: Class, algo: Algorithm, medians_us: &[(Algorithm, f64)]) -> Result<()> {
        let mut c = match read_cache(&self.path) {
            Ok(Some(c)) if c.key == self.key => c,
            _ => CacheFile {
                key: self.key.clone(),
                ..CacheFile::default()
            },
        };
        c.choices.insert(
            class.name(),
            (
                acspeed_algorithms::select::row_name(algo).to_string(),
                medians_us
                    .iter()
                    .map(|(a, t)| (acspeed_algorithms::select::row_name(*a).to_string(), *t))
                    .collect(),
            ),
        );
        let io = |what: &str, e: std::io::Error| {
            Error::io(
                format!("ACSPEED_AUTOTUNE: {what} {}", self.path.display()),
                e,
            )
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let tmp = self.path.with_extension(format!(
            "tmp{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let text = serde_json::to_string_pretty(&c).expect("the cache serialises");
        std::fs::write(&tmp, text).map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replacing", e))
    }

    /// The class's algorithm once decided (or confirmed from the cache).
    pub fn decided(&self, class: Class) -> Option<Algorithm> {
        match self.lock().get(&class) {
            Some(State::Decided { algo, .. }) => Some(*algo),
            _ => None,
        }
    }
}

/// The outcome of [`Tuner::decide`].
pub struct Decision {
    pub algo: Algorithm,
    /// One line for the log: the winner and every candidate's time.
    pub summary: String,
    /// Saving to the cache file (a failure only costs later jobs a new measurement).
    pub saved: Result<()>,
}

fn medians_text(m: &[(Algorithm, f64)]) -> String {
    let t: Vec<String> = m
        .iter()
        .map(|(a, t)| format!("{} {t:.0} us", a.name()))
        .collect();
    format!("{} (median of {TRIALS} calls, slowest rank)", t.join(", "))
}

fn read_cache(path: &Path) -> std::result::Result<Option<CacheFile>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| format!("not an autotune cache ({e})")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_class(name: &str) -> Option<Class> {
    let (kind, size) = name.split_once('/')?;
    let kind = ["allreduce", "broadcast", "reduce"]
        .into_iter()
        .find(|k| *k == kind)?;
    let b = acspeed_core::config::parse_size(size)?;
    b.is_power_of_two().then(|| Class {
        kind,
        log2: b.trailing_zeros(),
    })
}

#[cfg(test)]
#[path = "autotune_tests.rs"]
mod tests;
