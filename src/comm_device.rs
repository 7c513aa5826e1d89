//! Collectives on device memory: the communicator's plan, lowered as for the CPU executor,
//! run by a device executor ([`acspeed_core::device`]). The communicator decides whether a
//! call is device work; what it is not (CPU-Reduce chosen, ranks on other hosts, a GPU pair
//! without P2P) is answered with the reason, and the caller stages the call through host
//! memory instead (docs/CUDA.md).

use super::Communicator;
use acspeed_algorithms::Algorithm;
use acspeed_core::device::{
    self, DevBuffers, DevCall, DeviceEngine, DeviceExecutor, PeerExchange, SlotShape,
};
use acspeed_core::plan::Collective;
use acspeed_core::{DType, Error, Rank, ReduceOp, Result};
use std::sync::Arc;

/// What [`Communicator::run_device`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceRun {
    /// The collective ran on the device.
    Ran,
    /// Not device work, and why: stage it through host memory.
    Staged(String),
}

impl Communicator {
    /// A device executor for `engine` with this communicator's pipeline: its depth, slots that
    /// hold its segments, its timeout.
    pub fn device_executor<E: DeviceEngine>(&self, engine: E) -> DeviceExecutor<E> {
        DeviceExecutor::new(
            engine,
            SlotShape {
                depth: self.cfg.exec.pipeline_depth.max(1),
                // Segments are at most the requested size rounded up to 64 bytes.
                slot_bytes: self.cfg.exec.segment_bytes.next_multiple_of(64),
            },
            self.cfg.job.timeout,
        )
    }

    /// Whether CUDA collectives may take the device path here (`ACSPEED_CUDA_PATH`).
    pub fn cuda_device_path(&self) -> bool {
        self.cfg.exec.cuda_device_path
    }

    /// Why a call the policy gives to `algo` is not device work here (`None`: it is).
    fn device_refusal(&self, algo: Algorithm) -> Option<String> {
        if algo == Algorithm::CpuReduce {
            return Some("the policy chose CPU-Reduce (reduction on the host's CPUs)".into());
        }
        if self.ctx.nhosts() > 1 {
            return Some(format!(
                "the job spans {} hosts; the device executor runs within one host",
                self.ctx.nhosts()
            ));
        }
        let p2p = self.gpu_p2p.as_ref()?;
        let local = self.ctx.local_index();
        for a in 0..self.nranks as usize {
            for b in 0..self.nranks as usize {
                let (ga, gb) = (local[a], local[b]);
                if a != b
                    && !p2p
                        .get(ga)
                        .and_then(|r| r.get(gb))
                        .copied()
                        .unwrap_or(false)
                {
                    return Some(format!(
                        "GPUs {ga} and {gb} (ranks {a} and {b}) have no peer-to-peer path in the topology"
                    ));
                }
            }
        }
        None
    }

    /// Runs `coll` on device buffers through `dev`: the algorithm the policy picks for the
    /// size, its verified plan, its schedule compiled for device queues. Returns
    /// [`DeviceRun::Staged`] with the reason when the call is not device work; the same
    /// answer on every rank, since it follows from the agreed job only. `Avg` ends with the
    /// engine's average epilogue.
    pub fn run_device<E: DeviceEngine>(
        &self,
        dev: &DeviceExecutor<E>,
        coll: Collective,
        dtype: DType,
        op: Option<ReduceOp>,
        count: usize,
        bufs: DevBuffers,
    ) -> Result<DeviceRun> {
        self.check_usable()?;
        if let Some(op) = op {
            op.check_dtype(dtype)?;
        }
        match coll {
            Collective::Broadcast { root } | Collective::Reduce { root } => {
                self.check_root(coll.name(), root.0)?
            }
            Collective::Barrier => {
                return Ok(DeviceRun::Staged("a barrier moves no device data".into()))
            }
            _ => {}
        }
        let algo = self.decide(coll, bufs.output_len).algorithm;
        if let Some(why) = self.device_refusal(algo) {
            return Ok(DeviceRun::Staged(why));
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.plan(&mut st, coll, algo, bufs.output_len)?;
        // Compiled once per size, as the CPU path lowers once per size.
        let rounds = algo.rounds_for(coll, bufs.output_len, &self.ctx);
        let key = (coll, algo, rounds, count, dtype.size());
        let prog = match st.programs.get(&key) {
            Some(p) => p.clone(),
            None => {
                let sched =
                    acspeed_core::schedule::lower(&plan, count, dtype.size(), self.exec.lowering());
                let p = match device::compile(&sched) {
                    Ok(p) => Ok(Arc::new(p)),
                    Err(Error::InvalidArgument(why)) => Err(why),
                    Err(e) => return Err(e),
                };
                if st.programs.len() >= super::MAX_SCHEDULES {
                    st.programs.clear();
                }
                st.programs.insert(key, p.clone());
                p
            }
        };
        let prog = match prog {
            Ok(p) => p,
            Err(why) => return Ok(DeviceRun::Staged(why)),
        };
        let what = (coll, algo, dtype, op, count, bufs.output_len);
        self.tracked(&mut st, what, |call, _| {
            dev.run(
                &prog,
                bufs,
                DevCall {
                    seq: call.seq,
                    dtype,
                    op,
                    tag: DevCall::tag_of(
                        call.seq,
                        &[
                            coll.code() as u64,
                            count as u64,
                            dtype as u64,
                            op.map_or(u64::MAX, |o| o as u64),
                        ],
                    ),
                },
            )
        })?;
        if op == Some(ReduceOp::Avg) {
            let root_only = matches!(coll, Collective::Reduce { root } if root.0 != self.rank);
            if !root_only {
                dev.engine().scale_avg(
                    bufs.output,
                    bufs.output_len,
                    dtype,
                    self.nranks as usize,
                )?;
            }
        }
        Ok(DeviceRun::Ran)
    }
}

/// Handles traded over a communicator's point-to-point stream (the engines' set-up; both ends
/// call it at the same point of the same collective).
pub struct CommExchange(pub Arc<Communicator>);

/// The point-to-point tag of connection handles.
const EXCHANGE_TAG: u64 = 0xACDE_0001;

impl PeerExchange for CommExchange {
    fn exchange(&self, mine: &[(Rank, Vec<u8>)]) -> Result<Vec<Vec<u8>>> {
        let c = &self.0;
        // Each side sends one entry per connection between the two, so the peer's message is
        // as long as ours.
        let mut replies: Vec<Vec<u8>> = mine.iter().map(|(_, m)| vec![0u8; m.len()]).collect();
        let mut handles = Vec::with_capacity(2 * mine.len());
        for (peer, m) in mine {
            // SAFETY: `mine` outlives the waits below.
            handles.push(unsafe { c.post_send(peer.0, EXCHANGE_TAG, m.as_ptr(), m.len())? });
        }
        for ((peer, _), r) in mine.iter().zip(&mut replies) {
            // SAFETY: `replies` outlives the waits below and is not touched until then.
            handles.push(unsafe { c.post_recv(peer.0, EXCHANGE_TAG, r.as_mut_ptr(), r.len())? });
        }
        for h in &handles {
            c.wait(h)?;
        }
        Ok(replies)
    }
}
