//! The job's model, built once at init and passed forward: [`discover`] reads what each rank
//! knows alone (the topology file, the CPU host model, the [`JobFacts`] it publishes), and
//! [`Discovery::agree`] adds what rendezvous agreed (which ranks share a host) to give the
//! [`JobModel`]: the description, the plan context and the simulator's cluster. Agreement,
//! the policy and the communicator all read this one value; nothing re-reads a file.

use crate::facts::JobFacts;
use acspeed_core::sim::{Cluster, HostModel, NetModel};
use acspeed_core::topology::TopoDescription;
use acspeed_core::{Config, Error, PlanContext, Result};

/// Network rate assumed when nothing gives one, Gbit/s (a common cloud instance NIC; said in
/// every explanation, so nobody mistakes it for a measurement).
pub const DEFAULT_NET_GBIT: f64 = 25.0;
/// One inter-host message's fixed cost assumed by the model, microseconds.
pub const NET_LATENCY_US: f64 = 30.0;

/// What a rank knows before rendezvous: read once, published as its facts.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// `ACSPEED_TOPO_FILE` as read (and dumped to `ACSPEED_TOPO_DUMP_FILE`), if set.
    pub description: Option<TopoDescription>,
    /// `ACSPEED_HOST_MODEL` as read, if set.
    pub host_model: Option<HostModel>,
    /// What this rank publishes and compares at rendezvous.
    pub facts: JobFacts,
}

/// The simulator's model of the job, with what it is (for explanations).
#[derive(Clone, Debug)]
pub struct ClusterModel {
    pub cluster: Cluster,
    pub about: String,
}

/// The job as every layer after rendezvous sees it.
#[derive(Clone, Debug)]
pub struct JobModel {
    pub description: Option<TopoDescription>,
    pub facts: JobFacts,
    /// Each rank's host identity (for grouping and logs).
    pub hosts: Vec<String>,
    /// The context every rank agreed on: hosts, GPUs, sockets, NVLinks.
    pub context: PlanContext,
    /// The simulator's cluster, or why there is none (no model given, or a job the model
    /// cannot describe); the policy's selector predicts on it.
    pub cluster: std::result::Result<ClusterModel, String>,
}

/// Reads this rank's description, host model and facts (once per communicator).
pub fn discover(cfg: &Config) -> Result<Discovery> {
    let description = cfg
        .model
        .topo_file
        .as_ref()
        .map(|_| crate::probe::discover(cfg))
        .transpose()?;
    Discovery::of(cfg, description)
}

impl Discovery {
    /// The discovery for a description given by the caller (`acspeed explain` describes a
    /// machine it is not on); the host model still comes from `cfg`.
    pub fn of(cfg: &Config, description: Option<TopoDescription>) -> Result<Discovery> {
        let host_model = cfg
            .model
            .host_model
            .as_deref()
            .map(read_host_model)
            .transpose()?;
        let facts = JobFacts::of(cfg, description.as_ref(), host_model.as_ref())?;
        Ok(Discovery {
            description,
            host_model,
            facts,
        })
    }

    /// The job's model once rendezvous has given every rank's host.
    pub fn agree(self, cfg: &Config, hosts: Vec<String>) -> Result<JobModel> {
        let context = self.context(PlanContext::from_host_names(&hosts))?;
        self.into_model(cfg, hosts, context)
    }

    /// The job's model for a host shape (`acspeed explain`, tests): hosts are named by index.
    pub fn agree_shape(self, cfg: &Config, shape: &[u32]) -> Result<JobModel> {
        let context = self.context(PlanContext::from_shape(shape)?)?;
        let hosts = context.host_of.iter().map(|h| format!("host{h}")).collect();
        self.into_model(cfg, hosts, context)
    }

    /// The agreed host grouping with the description's GPU facts: NVLink counts and each
    /// GPU's socket (both empty without a file). acspeed moves bytes over shared memory and
    /// sockets, never GPU to GPU, so probed links are not planned on: a topology file is the
    /// user saying which links plans should treat as fast and which GPUs sit on which socket.
    fn context(&self, hosts: PlanContext) -> Result<PlanContext> {
        Ok(match &self.description {
            Some(d) => hosts
                .with_nvlinks(d.nvlink_matrix())?
                .with_sockets(&d.gpu_sockets()),
            None => hosts,
        })
    }

    fn into_model(
        self,
        cfg: &Config,
        hosts: Vec<String>,
        context: PlanContext,
    ) -> Result<JobModel> {
        context.check()?;
        let cluster = cluster_of(cfg, self.description.as_ref(), self.host_model, &context)?;
        Ok(JobModel {
            description: self.description,
            facts: self.facts,
            hosts,
            context,
            cluster,
        })
    }
}

impl JobModel {
    /// Discovery and agreement at once, for a job whose host map is known without a store
    /// (one process over a given transport, tests).
    pub fn new(cfg: &Config, hosts: Vec<String>) -> Result<JobModel> {
        discover(cfg)?.agree(cfg, hosts)
    }
}

/// The cluster for a job, or why there is none: no topology file or host model, no GPU in
/// the file, more ranks on a host than GPUs, or ranks not numbered host by host (the model
/// numbers them so).
fn cluster_of(
    cfg: &Config,
    d: Option<&TopoDescription>,
    host_model: Option<HostModel>,
    ctx: &PlanContext,
) -> Result<std::result::Result<ClusterModel, String>> {
    let shape = ctx.shape();
    let by_host = !ctx.host_of.windows(2).any(|w| w[1] < w[0]);
    let file = cfg
        .model
        .topo_file
        .as_deref()
        .or(d.map(|d| d.source.as_str()));
    let gpu = d.filter(|d| !d.gpus.is_empty());
    let (host, about, net) = match (gpu, host_model) {
        (Some(d), _) => {
            let file = file.unwrap_or("the topology");
            if let Some(m) = shape.iter().find(|m| **m as usize > d.gpus.len()) {
                return Ok(Err(format!(
                    "a host has {m} ranks but {file} describes {} GPUs",
                    d.gpus.len()
                )));
            }
            let nic = d.nics.iter().filter_map(|n| n.speed_mbps).max();
            let nic = nic.map(|m| (m as f64 / 1000.0, "its fastest NIC"));
            let (net, note) = net_of(cfg, nic, "the file gives no NIC speed");
            let about = format!(
                "simulated on {file} x {} host(s) {shape:?}, {note}",
                shape.len()
            );
            (HostModel::gpu(d)?, about, net)
        }
        (None, Some(host)) => {
            let m = cfg.model.host_model.as_deref().unwrap_or("the host model");
            let (net, note) = net_of(cfg, None, "set ACSPEED_NET_GBPS");
            let about = if shape.len() > 1 {
                let flow = cfg
                    .model
                    .flow_gbps
                    .map(|f| format!(", {f} Gbit/s per flow"))
                    .unwrap_or_default();
                format!(
                    "simulated on host model {m} x {} hosts {shape:?}, {note}{flow}",
                    shape.len()
                )
            } else {
                format!(
                    "simulated on host model {m}, one host of {} ranks",
                    shape[0]
                )
            };
            (host, about, net)
        }
        (None, None) => {
            return Ok(Err(match file {
                Some(f) if d.is_some() => format!("{f} describes no GPU"),
                _ => "no ACSPEED_TOPO_FILE or ACSPEED_HOST_MODEL".into(),
            }))
        }
    };
    if !by_host {
        return Ok(Err("ranks are not numbered host by host".into()));
    }
    let cluster = Cluster::new(vec![host; shape.len()], &shape, net)?;
    Ok(Ok(ClusterModel { cluster, about }))
}

/// The network model: `ACSPEED_NET_GBPS`, else `nic` (a rate and where it came from), else
/// [`DEFAULT_NET_GBIT`] (`assumed` says why); `ACSPEED_FLOW_GBPS`; sockets per peer as the TCP
/// transport opens them.
fn net_of(cfg: &Config, nic: Option<(f64, &str)>, assumed: &str) -> (NetModel, String) {
    let (gbit, note) = match (cfg.model.net_gbps, nic) {
        (Some(g), _) => (g, format!("network {g} Gbit/s (ACSPEED_NET_GBPS)")),
        (None, Some((g, src))) => (g, format!("network {g} Gbit/s ({src})")),
        (None, None) => (
            DEFAULT_NET_GBIT,
            format!("network {DEFAULT_NET_GBIT} Gbit/s (assumed: {assumed})"),
        ),
    };
    let net = NetModel {
        nic_gbit: gbit,
        flow_gbit: cfg.model.flow_gbps,
        streams: cfg.transport.remote_streams(),
        latency_us: NET_LATENCY_US,
    };
    (net, note)
}

/// A CPU host model as `acspeed simulate --here --json` prints it (its `host` object), or
/// the bare object.
pub fn read_host_model(file: &str) -> Result<HostModel> {
    let bad = |why: String| Error::invalid(format!("ACSPEED_HOST_MODEL={file}: {why}"));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let h = v.get("host").cloned().unwrap_or(v);
    let m: HostModel = serde_json::from_value(h).map_err(|e| {
        bad(format!(
            "not a host model ({e}); write one with `acspeed simulate --here --json --sizes 4K > {file}`"
        ))
    })?;
    if !matches!(m.kind, acspeed_core::sim::HostKind::Cpu) {
        return Err(bad(
            "describes a GPU host: use ACSPEED_TOPO_FILE for GPUs".into()
        ));
    }
    let rates = [m.cores, m.copy_gbps, m.reduce_gbps];
    if rates.iter().any(|r| !r.is_finite() || *r <= 0.0) || !m.latency_us.is_finite() {
        return Err(bad(format!(
            "cores, copy_gbps and reduce_gbps must be positive (got {rates:?})"
        )));
    }
    Ok(m)
}
