//! Bootstrapping a communicator: rendezvous through a [`Store`], then connect the mesh.
//!
//! With torchrun's variables, rank 0 hosts a [`TcpStoreServer`] on `MASTER_ADDR:MASTER_PORT`
//! and everyone (rank 0 included) talks to it as a client. [`init_with_store`] is the part
//! that only needs *a* store, which is how the PyTorch backend reuses torch's Store.
//! Everything is bounded by `ACSPEED_TIMEOUT_SECS`; every failure names what was wrong.

use crate::comm::Communicator;
use crate::paths::{choose_paths, interface_ip, Path};
use crate::store::{resolve_master, Store, TcpStoreClient, TcpStoreServer};
use acspeed_core::config::{ExecSettings, LogLevel, TransportSettings};
use acspeed_core::{Config, Error, LaunchEnv, Rank, Result};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

/// Reads `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` and `ACSPEED_*` and connects.
pub fn init_from_env() -> Result<Communicator> {
    init(&LaunchEnv::from_env()?, Config::from_env()?)
}

/// Connects using launcher variables and a config.
pub fn init(launch: &LaunchEnv, cfg: Config) -> Result<Communicator> {
    let master = resolve_master(&launch.master_addr, launch.master_port)?;
    let _server = if launch.rank == 0 {
        Some(TcpStoreServer::start(SocketAddr::new(
            bind_ip_for(master.ip()),
            launch.master_port,
        ))?)
    } else {
        None
    };
    let store = TcpStoreClient::connect(&launch.master_addr, launch.master_port, cfg.job.timeout)?;
    let ip = store.local_ip()?;
    init_with_store(&store, "acspeed", launch.rank, launch.world_size, ip, cfg)
}

/// Rank 0 binds the store to the master address itself when it is local, else to all
/// interfaces (MASTER_ADDR may be a name or a NAT'd address).
fn bind_ip_for(master: IpAddr) -> IpAddr {
    if std::net::TcpListener::bind(SocketAddr::new(master, 0)).is_ok() {
        master
    } else {
        IpAddr::from([0, 0, 0, 0])
    }
}

/// The local address that routes towards `target` (no packet is sent: a UDP "connect" only
/// asks the kernel for a route).
pub fn route_ip(target: SocketAddr) -> Result<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind)
        .map_err(|e| Error::io("opening a UDP socket to find the route", e))?;
    s.connect(target)
        .map_err(|e| Error::io(format!("no route to {target}"), e))?;
    Ok(s.local_addr()
        .map_err(|e| Error::io("reading the routed address", e))?
        .ip())
}

/// The host identity used to group ranks: `ACSPEED_HOST_ID`, else the (UTS namespace's)
/// hostname. Never derived from shared memory, which separate hosts may share under netsim.
pub fn host_id(cfg: &Config) -> String {
    if let Some(h) = &cfg.job.host_id {
        return h.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Rendezvous through `store` (keys under `prefix/`), listen on `ip`, connect to every rank.
pub fn init_with_store(
    store: &dyn Store,
    prefix: &str,
    rank: u32,
    nranks: u32,
    ip: IpAddr,
    cfg: Config,
) -> Result<Communicator> {
    if nranks == 0 || rank >= nranks {
        return Err(Error::invalid(format!(
            "rank {rank} is out of range for world size {nranks}"
        )));
    }
    let t = cfg.job.timeout;
    let key = |k: &str| format!("{prefix}/{k}");
    // Two processes claiming the same rank would otherwise deadlock later, confusingly.
    let claims = store.add(&key(&format!("claim/{rank}")), 1)?;
    if claims != 1 {
        return Err(Error::invalid(format!("rank {rank} was claimed by {claims} processes: check RANK of each process (or a previous job still uses this MASTER_PORT)")));
    }
    if rank == 0 {
        let mut secret = [0u8; 16];
        getrandom::getrandom(&mut secret).map_err(|e| {
            Error::io(
                "generating the job secret",
                std::io::Error::other(e.to_string()),
            )
        })?;
        store.set(&key("secret"), &secret)?;
        store.set(&key("world_size"), nranks.to_string().as_bytes())?;
    }
    let ws = store.get(&key("world_size"), t)?;
    let ws = String::from_utf8_lossy(&ws).to_string();
    if ws != nranks.to_string() {
        return Err(Error::invalid(format!(
            "WORLD_SIZE mismatch: rank {rank} has {nranks} but rank 0 has {ws}"
        )));
    }
    let ip = match &cfg.transport.ifname {
        Some(f) => interface_ip(f)?,
        None => ip,
    };
    let listener = acspeed_transports::listen(SocketAddr::new(ip, 0), cfg.transport.socket_buffer)?;
    let me = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listener address", e))?;
    let rdma = crate::paths::open_rdma(&cfg.transport)?;
    let published = crate::paths::Wants::publish(
        cfg.transport.shm,
        cfg.transport.nstreams,
        &crate::paths::rdma_name_hex(&rdma)?,
    );
    // Agreement: plans must be derived from the same settings everywhere. The host map comes
    // from the store itself, so only the settings each rank reads locally are compared.
    // The topology file and host model are read (and dumped) once; agreement, plans and the
    // policy share them through the job model.
    let found = crate::model::discover(&cfg)?;
    let record = serde_json::json!({
        "addr": me.to_string(),
        "host": host_id(&cfg),
        "transport": published,
        "facts": found.facts.to_json(),
    })
    .to_string();
    // Rank 0 leaves out the facts that equal its own (usually all of them): the book every
    // rank reads stays small at scale.
    let facts0 = found.facts.to_json();
    let compact = |r: &str| -> String {
        let mut v: serde_json::Value = serde_json::from_str(r).unwrap_or_default();
        if v.get("facts").and_then(|f| f.as_str()) == Some(facts0.as_str()) {
            if let Some(o) = v.as_object_mut() {
                o.remove("facts");
            }
        }
        v.to_string()
    };
    let book = crate::book::gather(store, &key("book"), rank, nranks, &record, t, &compact)?;
    let secret: [u8; 16] = store
        .get(&key("secret"), t)?
        .try_into()
        .map_err(|_| Error::Remote {
            rank: 0,
            detail: "published a malformed job secret".into(),
        })?;
    let mut addrs = Vec::with_capacity(nranks as usize);
    let mut hosts = Vec::with_capacity(nranks as usize);
    let mut wants = Vec::with_capacity(nranks as usize);
    let mut facts0: Option<crate::facts::JobFacts> = None;
    for (q, r) in (0..nranks).zip(&book) {
        let bad = |what: &str| Error::Remote {
            rank: q,
            detail: format!("published a malformed rendezvous record ({what}): {r}"),
        };
        let v: serde_json::Value = serde_json::from_str(r).map_err(|_| bad("not JSON"))?;
        let field = |f: &str| v.get(f).and_then(|x| x.as_str());
        let a = field("addr").ok_or_else(|| bad("no address"))?;
        addrs.push(a.parse::<SocketAddr>().map_err(|_| Error::Remote {
            rank: q,
            detail: format!("published a bad address '{a}'"),
        })?);
        hosts.push(field("host").ok_or_else(|| bad("no host"))?.to_string());
        wants.push(crate::paths::Wants::parse(
            q,
            field("transport").ok_or_else(|| bad("no transports"))?,
        )?);
        // Facts left out are rank 0's.
        let theirs = match field("facts") {
            Some(f) => crate::facts::JobFacts::from_json(q, f)?,
            None => match &facts0 {
                Some(f) => f.clone(),
                None => return Err(bad("no facts")),
            },
        };
        found.facts.check(rank, q, &theirs)?;
        if q == 0 {
            facts0 = Some(theirs);
        }
    }
    let paths = choose_paths(rank, &hosts, &wants);
    let mesh = Mesh {
        rank,
        nranks,
        addrs: &addrs,
        paths: &paths,
        secret,
        settings: &cfg.transport,
        timeout: cfg.job.timeout,
        log: cfg.job.log,
    };
    let transport = mesh.connect(listener, rdma, &wants, true)?;
    // More channels when the agreed context's plans need them (n-trees sharing rank pairs,
    // hybrid's stripe lanes on uneven hosts): each a mesh of its own (sockets and
    // shared-memory rings), connected in the same order on every rank.
    let model = found.agree(&cfg, hosts)?;
    let ctx = &model.context;
    let want = acspeed_algorithms::channels_needed(ctx);
    let mut channels: Vec<Arc<dyn acspeed_core::Transport>> = Vec::new();
    for c in 1..want {
        let l = acspeed_transports::listen(SocketAddr::new(ip, 0), cfg.transport.socket_buffer)?;
        let a = l
            .local_addr()
            .map_err(|e| Error::io("reading the listener address", e))?;
        let book = crate::book::gather(
            store,
            &key(&format!("ch{c}")),
            rank,
            nranks,
            &a.to_string(),
            t,
            &|r| r.to_string(),
        )?;
        let mut ch_addrs = Vec::with_capacity(nranks as usize);
        for (q, a) in (0..nranks).zip(&book) {
            ch_addrs.push(a.parse::<SocketAddr>().map_err(|_| Error::Remote {
                rank: q,
                detail: format!("published a bad channel {c} address '{a}'"),
            })?);
        }
        // Another secret per channel keeps the shared-memory rendezvous sockets apart.
        let mut ch_secret = secret;
        ch_secret[0] ^= c as u8;
        ch_secret[1] ^= 0xa5;
        // RDMA stays on channel 0; other channels reach those peers over TCP.
        let ch_paths: Vec<Path> = paths
            .iter()
            .map(|p| match p {
                Path::Rdma => {
                    Path::Tcp(acspeed_core::config::TransportSettings::AUTO_STREAMS_REMOTE)
                }
                p => *p,
            })
            .collect();
        let m = Mesh {
            addrs: &ch_addrs,
            paths: &ch_paths,
            secret: ch_secret,
            ..mesh
        };
        channels.push(Arc::new(m.connect(l, None, &wants, false)?));
    }
    // CPU-Reduce's staging area, shared by the ranks of this rank's domain (its host's
    // ranks on its socket) over shared memory.
    let local: Vec<u32> = ctx
        .domains()
        .into_iter()
        .find(|d| d.contains(&Rank(rank)))
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.0)
        .filter(|q| *q == rank || paths[*q as usize] == Path::Shm)
        .collect();
    let staging: Option<Arc<dyn acspeed_core::HostStage>> = if local.len() > 1 {
        Some(Arc::new(acspeed_transports::HostStaging::connect(
            Rank(rank),
            &local,
            &secret,
            staging_params(&cfg.exec),
            t,
        )?))
    } else {
        None
    };
    let (warn, log) = (
        cfg.job.stall_warn,
        crate::log::Logger::new(cfg.job.log, rank),
    );
    let comm = Communicator::with_channels(Arc::new(transport), channels, staging, cfg, model)?;
    if warn.is_zero() || nranks < 2 {
        return Ok(comm);
    }
    let sink: crate::control::Sink = Arc::new(move |m: &str| log.warn(m));
    let note: crate::control::Sink = Arc::new(move |m: &str| log.info(m));
    let ctl = crate::control::Control::start(
        store,
        &key("ctl"),
        rank,
        nranks,
        ip,
        secret,
        warn,
        t,
        comm.wait_probe(),
        sink,
        note,
    )?;
    Ok(comm.with_control(ctl))
}

/// The staging area's shape from the configuration (the same on every rank).
pub fn staging_params(exec: &ExecSettings) -> acspeed_transports::StagingParams {
    acspeed_transports::StagingParams {
        pipelines: exec.cpu_reduce_pipelines,
        threads: exec.cpu_reduce_threads,
        seg_bytes: acspeed_core::schedule::stage_segment_bytes(exec.segment_bytes),
        ..Default::default()
    }
}

/// What connecting one mesh (one channel) needs.
#[derive(Clone, Copy)]
struct Mesh<'a> {
    rank: u32,
    nranks: u32,
    addrs: &'a [SocketAddr],
    paths: &'a [Path],
    secret: [u8; 16],
    /// The transport layer's settings; the job's timeout and log level.
    settings: &'a TransportSettings,
    timeout: std::time::Duration,
    log: LogLevel,
}

impl Mesh<'_> {
    /// Connects TCP to every remote peer, shared memory to local ones and RDMA where both
    /// ends have it; `log` reports the shared-memory mode (once, for channel 0).
    fn connect(
        &self,
        listener: std::net::TcpListener,
        rdma: Option<crate::paths::Endpoint>,
        wants: &[crate::paths::Wants],
        log: bool,
    ) -> Result<acspeed_transports::Multi> {
        let (rank, nranks, paths, cfg) = (self.rank, self.nranks, self.paths, self.settings);
        let (addrs, secret, t) = (self.addrs, &self.secret, self.timeout);
        let streams: Vec<u32> = paths
            .iter()
            .map(|p| if let Path::Tcp(k) = p { *k } else { 0 })
            .collect();
        let tcp = acspeed_transports::establish(
            Rank(rank),
            listener,
            addrs,
            &streams,
            secret,
            t,
            cfg.socket_buffer,
        )?;
        let local: Vec<u32> = (0..nranks)
            .filter(|q| *q == rank || paths[*q as usize] == Path::Shm)
            .collect();
        let mut parts: Vec<Arc<dyn acspeed_core::Transport>> = vec![Arc::new(tcp)];
        if local.len() > 1 {
            let shm = acspeed_transports::ShmTransport::connect(
                Rank(rank),
                nranks,
                &local,
                secret,
                acspeed_transports::ShmParams {
                    mode: cfg.shm_mode,
                    cma_min_collective: cfg.shm_cma_min,
                    // ACSPEED_SHM_CMA_MIN=0 sends every message by CMA (tests use it).
                    cma_min: cfg.shm_cma_min.clamp(1, 64 << 10),
                    ..Default::default()
                },
                t,
            )?;
            let (cma, copy): (Vec<_>, Vec<_>) = shm.cma_readable().into_iter().partition(|x| x.1);
            let names = |v: &[(Rank, bool)]| v.iter().map(|x| x.0.to_string()).collect::<Vec<_>>();
            let how = if cfg.shm_mode == acspeed_core::config::ShmMode::Cma {
                format!(
                    "cross-memory attach from ranks {:?}, slot copies from ranks {:?}",
                    names(&cma),
                    names(&copy)
                )
            } else if cfg.shm_mode == acspeed_core::config::ShmMode::Auto {
                "slot rings, streaming stores".to_string()
            } else {
                "slot rings, ordinary stores".to_string()
            };
            if log {
                let shm_path = "shm large-message path";
                crate::log::Logger::new(self.log, rank).info(&format!(
                    "{shm_path} (ACSPEED_SHM_MODE={:?}, collectives >= {} bytes): {how}",
                    cfg.shm_mode, cfg.shm_cma_min
                ));
            }
            parts.push(Arc::new(shm));
        }
        let rdma_part = crate::paths::connect_rdma(Rank(rank), rdma, paths, wants)?;
        let rdma_index = parts.len();
        if let Some(r) = rdma_part {
            parts.push(r);
        }
        let route = paths
            .iter()
            .map(|p| match p {
                Path::Tcp(_) => Some(0),
                Path::Shm => Some(1),
                Path::Rdma => Some(rdma_index),
                Path::Myself => None,
            })
            .collect();
        acspeed_transports::Multi::new(Rank(rank), parts, route)
    }
}
