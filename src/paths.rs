//! Which transport reaches which peer. Every rank publishes what it can do (shared memory,
//! stream count, an RDMA address) and every rank applies the same rule to the published
//! facts, so both ends of every pair agree: shared memory on the same host, RDMA where both
//! ends have it, else TCP.

use acspeed_core::config::TransportSettings;
use acspeed_core::{Error, Rank, Result, Transport};
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
    /// What this rank publishes: "shm nstreams rdma-hex" (nstreams 0 = automatic).
    pub fn publish(shm: bool, nstreams: Option<u32>, rdma_hex: &str) -> String {
        format!("{} {} {rdma_hex}", u8::from(shm), nstreams.unwrap_or(0))
    }

    /// Reads what rank `rank` published ([`Wants::publish`]); anything else is an error naming
    /// the rank, never a silent "automatic".
    pub fn parse(rank: u32, s: &str) -> Result<Wants> {
        let bad = || {
            Error::Remote {
            rank,
            detail: format!(
                "published transport settings '{s}' this version cannot read: is every rank the same acspeed?"
            ),
        }
        };
        let mut it = s.split(' ');
        let shm = match it.next() {
            Some("1") => true,
            Some("0") => false,
            _ => return Err(bad()),
        };
        let nstreams = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let h = it.next().unwrap_or_default();
        if h.len() % 2 != 0 || it.next().is_some() {
            return Err(bad());
        }
        let rdma = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>>>()?;
        Ok(Wants {
            shm,
            nstreams,
            rdma,
        })
    }
}

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
                TransportSettings::AUTO_STREAMS_REMOTE
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
    pub fn open_rdma(cfg: &TransportSettings) -> Result<Option<RdmaEndpoint>> {
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

    pub fn open_rdma(cfg: &TransportSettings) -> Result<Option<NoRdma>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_settings_round_trip_and_bad_ones_name_the_rank() {
        let w = Wants::parse(3, &Wants::publish(true, Some(8), "0aff")).unwrap();
        assert_eq!(
            w,
            Wants {
                shm: true,
                nstreams: 8,
                rdma: vec![0x0a, 0xff]
            }
        );
        let w = Wants::parse(0, &Wants::publish(false, None, "")).unwrap();
        assert_eq!((w.shm, w.nstreams, w.rdma.len()), (false, 0, 0));
        for bad in ["", "1", "1 x", "2 4 ", "1 4 abc", "1 4 zz", "1 4 00 extra"] {
            let e = Wants::parse(5, bad).unwrap_err().to_string();
            assert!(
                e.contains("rank 5") && e.contains("cannot read"),
                "{bad:?}: {e}"
            );
        }
        // Both ends agree on the path: the explicit count wins, else 1 on a host, 4 across.
        let hosts = vec!["a".to_string(), "a".into(), "b".into()];
        let auto = Wants::parse(0, "0 0 ").unwrap();
        let paths = choose_paths(0, &hosts, &[auto.clone(), auto.clone(), auto]);
        assert_eq!(
            paths,
            vec![
                Path::Myself,
                Path::Tcp(1),
                Path::Tcp(TransportSettings::AUTO_STREAMS_REMOTE)
            ]
        );
    }
}
