//! Which transport reaches which peer. Every rank publishes what it can do (shared memory,
//! stream count, an RDMA address) and every rank applies the same rule to the published
//! facts, so both ends of every pair agree: shared memory on the same host, RDMA where both
//! ends have it, else TCP.

use acspeed_core::{Config, Error, Rank, Result, Transport};
use std::net::IpAddr;
use std::sync::Arc;

/// How this rank reaches a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Myself,
    Shm,
    Rdma,
    Tcp(u32),
}

/// What a rank published about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    pub shm: bool,
    /// Explicit TCP stream count (0 = automatic).
    pub nstreams: u32,
    /// RDMA endpoint address (empty: none).
    pub rdma: Vec<u8>,
}

impl Wants {
    /// Parses "shm nstreams rdma-hex" (missing fields = off).
    pub fn parse(s: &str) -> Wants {
        let mut it = s.split(' ');
        let shm = it.next() == Some("1");
        let nstreams = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let rdma = it
            .next()
            .map(|h| {
                (0..h.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .unwrap_or_default();
        Wants {
            shm,
            nstreams,
            rdma,
        }
    }
}

/// Sockets per remote peer when nobody asked: one TCP flow rarely fills a cloud NIC (per-flow
/// caps, single-core softirq), four usually do; on one host a single loopback flow is enough.
pub const AUTO_STREAMS_REMOTE: u32 = 4;

/// Picks the path to every peer from what all ranks published.
pub fn choose_paths(rank: u32, hosts: &[String], wants: &[Wants]) -> Vec<Path> {
    let me = rank as usize;
    (0..hosts.len())
        .map(|q| {
            if q == me {
                return Path::Myself;
            }
            let same = hosts[q] == hosts[me];
            if same && wants[q].shm && wants[me].shm {
                return Path::Shm;
            }
            if !wants[q].rdma.is_empty() && !wants[me].rdma.is_empty() {
                return Path::Rdma;
            }
            let explicit = wants[q].nstreams.max(wants[me].nstreams);
            Path::Tcp(if explicit > 0 {
                explicit
            } else if same {
                1
            } else {
                AUTO_STREAMS_REMOTE
            })
        })
        .collect()
}

/// First IPv4 address of an interface accepted by `ACSPEED_SOCKET_IFNAME`.
pub fn interface_ip(f: &acspeed_core::config::IfaceFilter) -> Result<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::io("listing network interfaces", e.into()))?;
    let mut seen = Vec::new();
    for a in addrs {
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| IpAddr::V4(s.ip()))
        else {
            continue;
        };
        seen.push(format!("{}={ip}", a.interface_name));
        if f.matches(&a.interface_name) {
            return Ok(ip);
        }
    }
    Err(Error::invalid(format!(
        "ACSPEED_SOCKET_IFNAME={f:?} matches no interface with an IPv4 address (have: {})",
        seen.join(", ")
    )))
}

#[cfg(feature = "rdma")]
pub use rdma_impl::*;

#[cfg(feature = "rdma")]
mod rdma_impl {
    use super::*;
    use acspeed_core::config::RdmaChoice;
    use acspeed_transports::rdma::{RdmaEndpoint, RdmaTransport};

    /// What `open_rdma` gives.
    pub type Endpoint = RdmaEndpoint;

    /// An RDMA endpoint if configured and available: `auto` takes hardware providers only
    /// (libfabric's socket emulations are slower than our multi-stream TCP), `1` any.
    pub fn open_rdma(cfg: &Config) -> Result<Option<RdmaEndpoint>> {
        match cfg.rdma {
            RdmaChoice::Off => Ok(None),
            RdmaChoice::On => RdmaEndpoint::open(cfg.rdma_provider.as_deref())
                .map(|e| Some(e.limit_cq_data(cfg.rdma_cq_data))),
            RdmaChoice::Auto => Ok(RdmaEndpoint::open(cfg.rdma_provider.as_deref())
                .ok()
                .filter(|e| !e.is_emulated())
                .map(|e| e.limit_cq_data(cfg.rdma_cq_data))),
        }
    }

    pub fn rdma_name_hex(ep: &Option<RdmaEndpoint>) -> Result<String> {
        Ok(match ep {
            Some(e) => e.name()?.iter().map(|b| format!("{b:02x}")).collect(),
            None => String::new(),
        })
    }

    pub fn connect_rdma(
        rank: Rank,
        ep: Option<RdmaEndpoint>,
        paths: &[Path],
        wants: &[Wants],
    ) -> Result<Option<Arc<dyn Transport>>> {
        let Some(ep) = ep else { return Ok(None) };
        if !paths.contains(&Path::Rdma) {
            return Ok(None);
        }
        let peers: Vec<Option<Vec<u8>>> = paths
            .iter()
            .zip(wants)
            .map(|(p, w)| (*p == Path::Rdma).then(|| w.rdma.clone()))
            .collect();
        Ok(Some(Arc::new(RdmaTransport::connect(rank, ep, &peers)?)))
    }
}

#[cfg(not(feature = "rdma"))]
pub use no_rdma::*;

#[cfg(not(feature = "rdma"))]
mod no_rdma {
    use super::*;

    /// Built without the `rdma` feature: never an endpoint; asking for one is an error.
    pub enum NoRdma {}

    /// What `open_rdma` gives.
    pub type Endpoint = NoRdma;

    pub fn open_rdma(cfg: &Config) -> Result<Option<NoRdma>> {
        match cfg.rdma {
            acspeed_core::config::RdmaChoice::On => Err(Error::invalid(
                "ACSPEED_RDMA=1, but acspeed was built without the 'rdma' feature",
            )),
            _ => Ok(None),
        }
    }

    pub fn rdma_name_hex(_: &Option<NoRdma>) -> Result<String> {
        Ok(String::new())
    }

    pub fn connect_rdma(
        _: Rank,
        _: Option<NoRdma>,
        _: &[Path],
        _: &[Wants],
    ) -> Result<Option<Arc<dyn Transport>>> {
        Ok(None)
    }
}
