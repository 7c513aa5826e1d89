//! `auto` by prediction on GPU hosts: with a topology file (`ACSPEED_TOPO_FILE`) that
//! describes GPUs, the communicator models the job as that host times the agreed host shape,
//! and it simulates every candidate algorithm on the very plans the executor would run. The
//! fastest prediction per collective and power-of-two size class is what `auto` runs.
//!
//! Without a topology file there is no model of the devices, and `auto` keeps its measured
//! fixed rule (or `ACSPEED_AUTOTUNE`). The CPU model of these machines is not accurate enough
//! to choose with (docs/PERFORMANCE.md, "Simulator against measurement").
//!
//! Every rank must build the same table. The inputs are the agreed context, the settings
//! compared at rendezvous and the topology file, whose fingerprint init compares too. The
//! simulator is deterministic.

use crate::autotune::Class;
use acspeed_algorithms::select::{context_of, rank_candidates, Prediction};
use acspeed_algorithms::Algorithm;
use acspeed_core::plan::Collective;
use acspeed_core::sim::{Cluster, HostModel, NetModel};
use acspeed_core::topology::TopoDescription;
use acspeed_core::{Config, PlanContext, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// Network rate assumed when the topology file gives no NIC speed, Gbit/s (a common cloud
/// instance NIC; said in every explanation, so nobody mistakes it for a measurement).
pub const DEFAULT_NET_GBIT: f64 = 25.0;
/// One inter-host message's fixed cost assumed by the model, microseconds.
const NET_LATENCY_US: f64 = 30.0;
/// Predictions use segments of at least 1/256 of the message: the pipeline's fill is
/// negligible there, and the simulation of a 1 GiB class stays well under a second.
const SIM_SEGMENTS_MAX: usize = 256;

/// The model and the predictions made so far.
pub struct Selector {
    cluster: Cluster,
    /// What the model is, for explanations.
    pub about: String,
    segment_bytes: usize,
    elem: usize,
    table: Mutex<HashMap<Class, Vec<Prediction>>>,
}

impl Selector {
    /// The selector for a job, or `None` (with the reason) when there is nothing to model:
    /// no topology file, no GPU in it, more ranks on a host than GPUs, or ranks not numbered
    /// host by host (the model numbers them so).
    pub fn for_job(
        cfg: &Config,
        ctx: &PlanContext,
    ) -> Result<std::result::Result<Selector, String>> {
        let Some(file) = &cfg.topo_file else {
            return Ok(Err("no ACSPEED_TOPO_FILE".into()));
        };
        let d = crate::probe::discover(cfg)?;
        if d.gpus.is_empty() {
            return Ok(Err(format!("{file} describes no GPU")));
        }
        let shape = ctx.shape();
        if let Some(m) = shape.iter().find(|m| **m as usize > d.gpus.len()) {
            return Ok(Err(format!(
                "a host has {m} ranks but {file} describes {} GPUs",
                d.gpus.len()
            )));
        }
        if ctx.host_of.windows(2).any(|w| w[1] < w[0]) {
            return Ok(Err("ranks are not numbered host by host".into()));
        }
        let (net, net_note) = net_of(&d, cfg);
        let host = HostModel::gpu(&d)?;
        let cluster = Cluster::new(vec![host; shape.len()], &shape, net)?;
        Ok(Ok(Selector {
            about: format!(
                "simulated on {file} x {} host(s) {shape:?}, {net_note}",
                shape.len()
            ),
            cluster,
            segment_bytes: cfg.segment_bytes,
            elem: 4,
            table: Mutex::new(HashMap::new()),
        }))
    }

    /// Predictions for `coll` at the size class of `bytes`, fastest first, among `cands`
    /// (computed once per class).
    pub fn predictions(
        &self,
        coll: Collective,
        bytes: usize,
        cands: &[Algorithm],
    ) -> Result<Vec<Prediction>> {
        let Some(class) = Class::of(coll, bytes) else {
            return Ok(Vec::new());
        };
        if let Some(p) = self.lock().get(&class) {
            return Ok(p.clone());
        }
        // Predict at the class's largest size: the same for every call of the class.
        let b = (1usize << class.log2()).max(self.elem);
        let seg = self.segment_bytes.max(b / SIM_SEGMENTS_MAX);
        let preds = rank_candidates(coll, &self.cluster, cands, b, self.elem, seg)?;
        self.lock().insert(class, preds.clone());
        Ok(preds)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Class, Vec<Prediction>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The context the model describes (for checks: it must be the job's).
    pub fn context(&self) -> PlanContext {
        context_of(&self.cluster)
    }
}

/// The network model: the fastest NIC of the description, else [`DEFAULT_NET_GBIT`]; sockets
/// per peer as the TCP transport opens them.
fn net_of(d: &TopoDescription, cfg: &Config) -> (NetModel, String) {
    let nic = d.nics.iter().filter_map(|n| n.speed_mbps).max();
    let (gbit, note) = match nic {
        Some(m) => (
            m as f64 / 1000.0,
            format!("network {} Gbit/s (its fastest NIC)", m / 1000),
        ),
        None => (
            DEFAULT_NET_GBIT,
            format!("network {DEFAULT_NET_GBIT} Gbit/s (assumed: the file gives no NIC speed)"),
        ),
    };
    (
        NetModel {
            nic_gbit: gbit,
            flow_gbit: None,
            streams: cfg.nstreams.unwrap_or(4),
            latency_us: NET_LATENCY_US,
        },
        note,
    )
}

/// A fingerprint of the topology file's contents that plans and predictions depend on, for
/// the rendezvous comparison ("" without a file).
pub fn topo_fingerprint(cfg: &Config) -> Result<String> {
    if cfg.topo_file.is_none() {
        return Ok(String::new());
    }
    let d = crate::probe::discover(cfg)?;
    let text = format!(
        "{:?} {:?} {:?} {}",
        d.paths,
        d.nics.iter().map(|n| n.speed_mbps).collect::<Vec<_>>(),
        d.gpus.len(),
        d.cores
    );
    Ok(format!("{:016x}", crate::autotune::fnv64(&text)))
}
