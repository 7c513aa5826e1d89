//! The topology probe: the only code that reads the machine. It turns sysfs (GPUs, NICs,
//! PCIe bridges, link speeds, NUMA nodes, CPU packages) and NVML's NVLink report into a
//! [`TopoDescription`]; everything after that is pure (`acspeed_core::topology`).
//!
//! `root` is `/` on a real machine and a captured tree in tests, so every fixture machine is
//! probed by exactly this code. On a fake root, NVLinks come from `<root>/nvlinks.json`
//! (what NVML reported on that machine); on `/` from NVML itself, loaded at run time: no
//! library means no NVLink, not an error.

mod nvml;

use acspeed_core::topology::pci::{path_class, PciPlace};
use acspeed_core::topology::{Gpu, Nic, NumaNode, TopoDescription};
use acspeed_core::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const NVIDIA: &str = "0x10de";

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn is_bdf(s: &str) -> bool {
    // dddd:bb:dd.f
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .filter(|c| *c != ':' && *c != '.')
            .all(|c| c.is_ascii_hexdigit())
}

/// Where a PCI device sits, from its canonical sysfs path.
fn place(root: &Path, bdf: &str) -> Option<(PciPlace, PathBuf)> {
    let link = root.join("sys/bus/pci/devices").join(bdf);
    let real = std::fs::canonicalize(&link).ok()?;
    let parts: Vec<String> = real
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let hb_at = parts
        .iter()
        .position(|p| p.starts_with("pci") && p.contains(':'))?;
    let chain: Vec<String> = parts[hb_at + 1..]
        .iter()
        .filter(|p| is_bdf(p))
        .cloned()
        .collect();
    let (dev, bridges) = chain.split_last()?;
    let numa = read(&real.join("numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(|n| n as u32);
    Some((
        PciPlace {
            bdf: dev.clone(),
            host_bridge: parts[hb_at].clone(),
            bridges: bridges.to_vec(),
            numa,
        },
        real,
    ))
}

/// The PCI device a net or infiniband class entry belongs to (nearest BDF above it).
fn owner_bdf(real: &Path) -> Option<String> {
    real.ancestors()
        .filter_map(|a| a.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .find(|f| is_bdf(f))
}

fn link_gts(s: &str) -> Option<f64> {
    // "8.0 GT/s PCIe", "16 GT/s", "Unknown"
    s.split_whitespace().next()?.parse().ok()
}

fn cpulist_len(s: &str) -> u32 {
    s.split(',')
        .filter_map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            Some(b.trim().parse::<u32>().ok()? - a.trim().parse::<u32>().ok()? + 1)
        })
        .sum()
}

/// NVLink counts between GPUs, keyed by (bdf, bdf) in either order.
type NvLinks = HashMap<(String, String), u8>;

fn nvlinks_for(root: &Path, gpus: &[String]) -> Result<NvLinks> {
    let mut m = NvLinks::new();
    if root == Path::new("/") {
        for (a, b, n) in nvml::nvlinks(gpus) {
            m.insert((a.clone(), b.clone()), n);
            m.insert((b, a), n);
        }
        return Ok(m);
    }
    let f = root.join("nvlinks.json");
    let Some(text) = read(&f) else { return Ok(m) };
    let v: Vec<(String, String, u8)> =
        serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", f.display())))?;
    for (a, b, n) in v {
        m.insert((a.clone(), b.clone()), n);
        m.insert((b, a), n);
    }
    Ok(m)
}

/// Probes the machine under `root` ("/" for this one).
pub fn probe(root: &Path) -> Result<TopoDescription> {
    let devdir = root.join("sys/bus/pci/devices");
    let mut bdfs: Vec<String> = match std::fs::read_dir(&devdir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("reading {}", devdir.display()), e)),
    };
    bdfs.sort();
    let mut gpu_places = Vec::new();
    let mut gpus = Vec::new();
    for bdf in &bdfs {
        let Some((pl, real)) = place(root, bdf) else {
            continue;
        };
        let class = read(&real.join("class")).unwrap_or_default();
        let vendor = read(&real.join("vendor")).unwrap_or_default();
        // 0x0300xx VGA, 0x0302xx 3D controller (data-centre GPUs).
        if vendor == NVIDIA && (class.starts_with("0x0300") || class.starts_with("0x0302")) {
            let link_gts = read(&real.join("current_link_speed"))
                .as_deref()
                .and_then(link_gts);
            let link_width = read(&real.join("current_link_width")).and_then(|s| s.parse().ok());
            gpus.push(Gpu {
                index: gpus.len() as u32,
                pci_bus_id: Some(bdf.clone()),
                numa_node: pl.numa,
                link_gts,
                link_width,
                cpu_affinity: None,
            });
            gpu_places.push(pl);
        }
    }
    // NICs: network interfaces and RDMA devices that sit on a PCI device.
    let mut nics = Vec::new();
    let mut nic_places = Vec::new();
    let mut seen = BTreeSet::new();
    for class in ["sys/class/infiniband", "sys/class/net"] {
        let Ok(rd) = std::fs::read_dir(root.join(class)) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let Ok(real) = std::fs::canonicalize(root.join(class).join(&name)) else {
                continue;
            };
            let Some(bdf) = owner_bdf(&real) else {
                continue;
            }; // virtual interfaces
            if !seen.insert(bdf.clone()) {
                continue; // the netdev of an HCA already listed
            }
            let Some((pl, _)) = place(root, &bdf) else {
                continue;
            };
            let speed = read(&real.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .map(|s| s as u64);
            nics.push(Nic {
                name,
                pci_bus_id: Some(bdf),
                numa_node: pl.numa,
                speed_mbps: speed,
            });
            nic_places.push(pl);
        }
    }
    let nv = nvlinks_for(
        root,
        &gpus
            .iter()
            .filter_map(|g| g.pci_bus_id.clone())
            .collect::<Vec<_>>(),
    )?;
    let places: Vec<&PciPlace> = gpu_places.iter().chain(nic_places.iter()).collect();
    let paths = places
        .iter()
        .map(|a| {
            places
                .iter()
                .map(|b| {
                    path_class(
                        a,
                        b,
                        nv.get(&(a.bdf.clone(), b.bdf.clone()))
                            .copied()
                            .unwrap_or(0),
                    )
                })
                .collect()
        })
        .collect();

    // CPUs and NUMA nodes.
    let mut numa = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("sys/devices/system/node")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = n.strip_prefix("node").and_then(|x| x.parse::<u32>().ok()) {
                numa.push(NumaNode {
                    id,
                    cpulist: read(&e.path().join("cpulist")).unwrap_or_default(),
                });
            }
        }
    }
    numa.sort_by_key(|n| n.id);
    let mut packages = BTreeSet::new();
    let mut cores = 0;
    if let Ok(rd) = std::fs::read_dir(root.join("sys/devices/system/cpu")) {
        for e in rd.flatten() {
            if let Some(p) = read(&e.path().join("topology/physical_package_id")) {
                packages.insert(p);
                cores += 1;
            }
        }
    }
    if cores == 0 {
        cores = numa.iter().map(|n| cpulist_len(&n.cpulist)).sum();
    }
    for g in &mut gpus {
        g.cpu_affinity = numa
            .iter()
            .find(|n| Some(n.id) == g.numa_node)
            .map(|n| n.cpulist.clone());
    }
    let d = TopoDescription {
        source: if root == Path::new("/") {
            "sysfs".into()
        } else {
            format!("sysfs at {}", root.display())
        },
        hostname: read(&root.join("proc/sys/kernel/hostname")).unwrap_or_default(),
        sockets: packages.len().max(1) as u32,
        cores,
        numa,
        gpu_name: (root == Path::new("/") && !gpus.is_empty())
            .then(nvml::gpu_name)
            .flatten(),
        p2p: (root == Path::new("/") && !gpus.is_empty())
            .then(|| {
                let bus: Option<Vec<String>> = gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
                bus.and_then(|b| nvml::p2p(&b))
            })
            .flatten(),
        gpus,
        nics,
        paths,
        cpu_name: read(&root.join("proc/cpuinfo")).and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        }),
    };
    d.validate()?;
    Ok(d)
}

/// This host's topology as configured: loaded from `ACSPEED_TOPO_FILE` if set, else probed;
/// written to `ACSPEED_TOPO_DUMP_FILE` if set.
pub fn discover(cfg: &acspeed_core::Config) -> Result<TopoDescription> {
    let d = match &cfg.model.topo_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("ACSPEED_TOPO_FILE: reading {f}"), e))?;
            let mut d = TopoDescription::from_json(&text)
                .map_err(|e| Error::invalid(format!("ACSPEED_TOPO_FILE {f}: {e}")))?;
            d.source = format!("file {f}");
            d
        }
        None => probe(Path::new("/"))?,
    };
    if let Some(f) = &cfg.model.topo_dump_file {
        std::fs::write(f, d.to_json())
            .map_err(|e| Error::io(format!("ACSPEED_TOPO_DUMP_FILE: writing {f}"), e))?;
    }
    Ok(d)
}
