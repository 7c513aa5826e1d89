//! How a communicator applies its [`Policy`](crate::policy::Policy) to each call: the
//! autotuner's trials and their agreement across ranks, the explanation of a choice
//! (`explain`, the table at init), and the facts of the job the policy depends on.

use super::*;

impl Communicator {
    pub(super) fn log_init(&self) {
        // A forced algorithm whose plan falls back is worth a warning: the user asked for it.
        if let Some(note) = self
            .forced()
            .and_then(|a| a.fallback(Collective::AllReduce, &self.ctx, self.cfg.transport.shm))
        {
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
            self.cfg.exec.segment_bytes,
            self.cfg.exec.pipeline_depth,
            self.cfg.job.timeout
        ));
        self.log
            .info(&match (self.policy.tuner(), self.policy.selector()) {
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
        self.decide(coll, bytes).algorithm
    }

    /// The policy's decision for a collective of `bytes` (output buffer size): what runs,
    /// which layer decided and why, as data.
    pub fn decide(&self, coll: Collective, bytes: usize) -> Arc<crate::policy::Decision> {
        self.policy.decide(coll, bytes)
    }

    /// Waits for the selector's init-time table fill to end and returns how many (collective,
    /// size class) entries the table holds: every class up to 1 GiB of allreduce, broadcast
    /// and reduce once the fill is done; 0 without a selector (no model to predict with).
    pub fn selector_table(&self) -> usize {
        if let Some(f) = self.fill.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.wait();
        }
        self.policy.selector().map(|s| s.filled()).unwrap_or(0)
    }

    /// Which algorithm a collective of `bytes` (output size) runs and why, in one line.
    pub fn explain(&self, coll: Collective, bytes: usize) -> String {
        crate::policy::explain_line(&self.ctx, coll, bytes, &self.decide(coll, bytes))
    }

    /// The algorithm of the next call, and the class whose trial it is (autotune).
    pub(super) fn pick(
        &self,
        coll: Collective,
        bytes: usize,
    ) -> Result<(Algorithm, Option<Class>)> {
        let d = self.decide(coll, bytes);
        let (a, auto) = (d.algorithm, d.layer.is_auto());
        let (Some(t), true, Some(class)) = (self.policy.tuner(), auto, Class::of(coll, bytes))
        else {
            return Ok((a, None));
        };
        let cands = self.policy.candidates(coll);
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
