//! Topology: what the machine looks like, as data, and the model the selector and simulator use.
//!
//! Three layers, like NCCL's XML topology but in JSON:
//! * [`TopoDescription`] — a serializable description of one host: GPUs, NICs, CPUs/NUMA and
//!   the path class of every device pair. The probe (in the `acspeed` crate, the only part
//!   that touches the OS) produces it from sysfs and NVML; [`nvsmi::parse`] produces it from a
//!   saved `nvidia-smi topo -m`; users can write one by hand (`ACSPEED_TOPO_FILE`).
//! * [`PathClass`] — the classes `nvidia-smi topo -m` prints (X, NV#, PIX, PXB, PHB, NODE, SYS).
//! * [`TopoModel`] — a pure function of the description: bandwidth and latency per device
//!   pair from one documented table ([`LINK_TABLE`]).

pub mod nvsmi;
pub mod pci;

use serde::{Deserialize, Serialize};
use std::fmt;

/// How two devices are connected, in `nvidia-smi topo -m` terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathClass {
    /// The device itself.
    X,
    /// A bonded set of this many NVLinks.
    NV(u8),
    /// At most one PCIe switch (bridge) between them.
    PIX,
    /// Several PCIe switches, not through the host bridge.
    PXB,
    /// Through a PCIe host bridge (the CPU).
    PHB,
    /// Between PCIe host bridges of one NUMA node.
    NODE,
    /// Across the SMP interconnect between NUMA nodes (QPI/UPI); older drivers say SOC.
    SYS,
}

impl PathClass {
    /// Parses a matrix cell; `SOC` (older drivers) is `SYS`.
    pub fn parse(s: &str) -> Option<PathClass> {
        Some(match s.trim() {
            "X" => PathClass::X,
            "PIX" => PathClass::PIX,
            "PXB" => PathClass::PXB,
            "PHB" => PathClass::PHB,
            "NODE" => PathClass::NODE,
            "SYS" | "SOC" => PathClass::SYS,
            t => {
                let n: u8 = t.strip_prefix("NV")?.parse().ok()?;
                (1..=64).contains(&n).then_some(PathClass::NV(n))?
            }
        })
    }
}

impl fmt::Display for PathClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathClass::NV(n) => write!(f, "NV{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A GPU of the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// PCIe link generation speed in GT/s and width, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_gts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_width: Option<u32>,
    /// CPUs close to the GPU, as nvidia-smi prints them ("0-31").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_affinity: Option<String>,
}

/// A network interface (Ethernet or InfiniBand/RoCE HCA).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// Link speed in Mb/s, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u64>,
}

/// A NUMA node and its CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    pub cpulist: String,
}

/// Everything acspeed knows about one host. Device order: GPUs (by index), then NICs; `paths`
/// is the full matrix over that order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopoDescription {
    /// Where it came from: "sysfs", "nvidia-smi", "file", ...
    pub source: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub sockets: u32,
    #[serde(default)]
    pub cores: u32,
    #[serde(default)]
    pub numa: Vec<NumaNode>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// paths[i][j] between device i and j (GPUs then NICs).
    #[serde(default)]
    pub paths: Vec<Vec<PathClass>>,
}

impl TopoDescription {
    pub fn device_names(&self) -> Vec<String> {
        self.gpus
            .iter()
            .map(|g| format!("GPU{}", g.index))
            .chain((0..self.nics.len()).map(|i| format!("NIC{i}")))
            .collect()
    }

    /// NVLink count between each pair of GPUs (0 where they are joined otherwise).
    pub fn nvlink_matrix(&self) -> Vec<Vec<u8>> {
        let g = self.gpus.len().min(self.paths.len());
        (0..g)
            .map(|i| {
                (0..g)
                    .map(|j| match self.paths[i].get(j) {
                        Some(PathClass::NV(n)) => *n,
                        _ => 0,
                    })
                    .collect()
            })
            .collect()
    }

    /// The socket (NUMA side) of each GPU, numbered from 0 in order of the lowest GPU: from
    /// the NUMA affinity when every GPU has one (VMs print `SYS` between GPUs of one node);
    /// else GPUs share a socket when their path is a PCIe one short of `SYS`, or both reach a
    /// NIC that way (an `NV#` path hides the PCIe placement: DGX-1 has NVLinks across its
    /// sockets). All zeros when nothing tells.
    pub fn gpu_sockets(&self) -> Vec<u32> {
        let g = self.gpus.len().min(self.paths.len());
        let numa: Vec<Option<u32>> = self.gpus.iter().take(g).map(|x| x.numa_node).collect();
        if numa.iter().all(Option::is_some) {
            return sockets_from(g, |i, j| numa[i] != numa[j]);
        }
        let pcie_near = |a: usize, b: usize| {
            matches!(
                self.paths[a].get(b),
                Some(PathClass::PIX | PathClass::PXB | PathClass::PHB | PathClass::NODE)
            )
        };
        let n = self.paths.len();
        let near = |i: usize, j: usize| {
            pcie_near(i, j) || (g..n).any(|k| pcie_near(i, k) && pcie_near(j, k))
        };
        let s = sockets_from(g, |i, j| i != j && !near(i, j));
        // Every GPU alone: the matrix said nothing about placement.
        if g > 1 && s.iter().max().map_or(0, |m| *m as usize + 1) == g {
            return vec![0; g];
        }
        s
    }

    /// Checks the matrix is square, has X exactly on the diagonal and is symmetric.
    pub fn validate(&self) -> crate::Result<()> {
        let n = self.gpus.len() + self.nics.len();
        let bad = |m: String| Err(crate::Error::invalid(format!("topology: {m}")));
        if self.paths.len() != n || self.paths.iter().any(|r| r.len() != n) {
            return bad(format!(
                "path matrix must be {n}x{n} for {} GPUs and {} NICs",
                self.gpus.len(),
                self.nics.len()
            ));
        }
        let names = self.device_names();
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (self.paths[i][j], self.paths[j][i]);
                if (i == j) != (a == PathClass::X) {
                    return bad(format!("{} to {} is {a}", names[i], names[j]));
                }
                if a != b {
                    return bad(format!(
                        "{} to {} is {a} but {} to {} is {b}",
                        names[i], names[j], names[j], names[i]
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("descriptions serialise")
    }

    pub fn from_json(s: &str) -> crate::Result<Self> {
        let d: TopoDescription = serde_json::from_str(s)
            .map_err(|e| crate::Error::invalid(format!("topology file: {e}")))?;
        d.validate()?;
        Ok(d)
    }
}

/// Groups `g` GPUs into sockets: `i` and `j` share one unless `far(i, j)` (transitively).
pub fn sockets_from(g: usize, far: impl Fn(usize, usize) -> bool) -> Vec<u32> {
    let mut socket = vec![u32::MAX; g];
    let mut next = 0;
    for i in 0..g {
        if socket[i] != u32::MAX {
            continue;
        }
        let mut stack = vec![i];
        socket[i] = next;
        while let Some(a) = stack.pop() {
            for (b, sb) in socket.iter_mut().enumerate() {
                if *sb == u32::MAX && !far(a, b) {
                    *sb = next;
                    stack.push(b);
                }
            }
        }
        next += 1;
    }
    socket
}

/// Bandwidth (GB/s, one direction) and latency (us) per path class: the one table the model,
/// the selector and the simulator share. NVLink counts per link (NV2 = 2 x the NV1 figure).
/// PCIe classes assume Gen3 x16 and are scaled by the probed link speed when known.
pub const LINK_TABLE: &[(&str, f64, f64)] = &[
    ("NV# (per link)", 22.0, 1.0),
    ("PIX", 12.0, 2.0),
    ("PXB", 11.0, 2.5),
    ("PHB", 9.0, 3.0),
    ("NODE", 8.0, 4.0),
    ("SYS", 6.0, 5.0),
];

fn table(class: PathClass) -> (f64, f64) {
    let row = |k: &str| {
        LINK_TABLE
            .iter()
            .find(|r| r.0 == k)
            .map(|r| (r.1, r.2))
            .unwrap()
    };
    match class {
        PathClass::X => (f64::INFINITY, 0.0),
        PathClass::NV(n) => {
            let (bw, lat) = row("NV# (per link)");
            (bw * n as f64, lat)
        }
        PathClass::PIX => row("PIX"),
        PathClass::PXB => row("PXB"),
        PathClass::PHB => row("PHB"),
        PathClass::NODE => row("NODE"),
        PathClass::SYS => row("SYS"),
    }
}

/// Bandwidth and latency between every pair of devices, from a description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopoModel {
    pub devices: Vec<String>,
    pub classes: Vec<Vec<PathClass>>,
    /// GB/s, one direction.
    pub bandwidth: Vec<Vec<f64>>,
    /// Microseconds.
    pub latency: Vec<Vec<f64>>,
}

impl TopoModel {
    /// Pure: the same description always gives the same model.
    pub fn from_description(d: &TopoDescription) -> crate::Result<TopoModel> {
        d.validate()?;
        let n = d.paths.len();
        let pcie_scale = |i: usize| -> f64 {
            // Gen3 x16 = 8 GT/s x 16 lanes; scale PCIe figures by the slower end's link.
            d.gpus
                .get(i)
                .and_then(|g| Some(g.link_gts? * g.link_width? as f64 / 128.0))
                .unwrap_or(1.0)
        };
        let mut bandwidth = vec![vec![0.0; n]; n];
        let mut latency = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in 0..n {
                let (mut bw, lat) = table(d.paths[i][j]);
                if !matches!(d.paths[i][j], PathClass::NV(_) | PathClass::X) {
                    bw *= pcie_scale(i).min(pcie_scale(j));
                }
                bandwidth[i][j] = bw;
                latency[i][j] = lat;
            }
        }
        Ok(TopoModel {
            devices: d.device_names(),
            classes: d.paths.clone(),
            bandwidth,
            latency,
        })
    }
}

/// Renders the matrix the way `nvidia-smi topo -m` does, plus NIC and NUMA legends.
pub fn render(d: &TopoDescription) -> String {
    let names = d.device_names();
    let mut s = String::new();
    let w = 8;
    s.push_str(&format!("{:w$}", ""));
    for n in &names {
        s.push_str(&format!("{n:<w$}"));
    }
    s.push_str("CPU Affinity    NUMA Affinity\n");
    for (i, n) in names.iter().enumerate() {
        s.push_str(&format!("{n:<w$}"));
        for c in &d.paths[i] {
            let c = if *c == PathClass::X {
                " X".to_string()
            } else {
                c.to_string()
            };
            s.push_str(&format!("{c:<w$}"));
        }
        if let Some(g) = d.gpus.get(i) {
            let numa = g
                .numa_node
                .map(|x| x.to_string())
                .unwrap_or_else(|| "N/A".into());
            let aff = g.cpu_affinity.clone().or_else(|| {
                d.numa
                    .iter()
                    .find(|m| Some(m.id) == g.numa_node)
                    .map(|m| m.cpulist.clone())
            });
            s.push_str(&format!(
                "{:<16}{numa}",
                aff.unwrap_or_else(|| "N/A".into())
            ));
        }
        s.push('\n');
    }
    if !d.nics.is_empty() {
        s.push_str("\nNIC Legend:\n\n");
        for (i, nic) in d.nics.iter().enumerate() {
            let speed = nic
                .speed_mbps
                .map(|m| format!(" ({m} Mb/s)"))
                .unwrap_or_default();
            let numa = nic
                .numa_node
                .map(|m| format!(", NUMA {m}"))
                .unwrap_or_default();
            s.push_str(&format!("  NIC{i}: {}{speed}{numa}\n", nic.name));
        }
    }
    s.push_str(&format!(
        "\nHost: {} ({}), {} socket(s), {} core(s)\n",
        if d.hostname.is_empty() {
            "?"
        } else {
            &d.hostname
        },
        d.source,
        d.sockets,
        d.cores
    ));
    for m in &d.numa {
        s.push_str(&format!("  NUMA node{}: CPUs {}\n", m.id, m.cpulist));
    }
    if d.gpus.is_empty() {
        s.push_str("No GPUs found: collectives run on CPU memory (shared memory within the host, TCP across hosts).\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_classes_parse_and_print() {
        for t in [
            "X", "NV1", "NV12", "NV18", "PIX", "PXB", "PHB", "NODE", "SYS",
        ] {
            assert_eq!(PathClass::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(PathClass::parse("SOC"), Some(PathClass::SYS));
        assert_eq!(PathClass::parse("NV0"), None);
        assert_eq!(PathClass::parse("NVX"), None);
        assert_eq!(PathClass::parse("QPI"), None);
    }

    #[test]
    fn model_uses_the_table_and_link_speed() {
        let d = TopoDescription {
            source: "test".into(),
            hostname: "h".into(),
            sockets: 1,
            cores: 2,
            numa: vec![],
            gpus: vec![
                Gpu {
                    index: 0,
                    pci_bus_id: None,
                    numa_node: None,
                    link_gts: Some(16.0),
                    link_width: Some(16),
                    cpu_affinity: None,
                },
                Gpu {
                    index: 1,
                    pci_bus_id: None,
                    numa_node: None,
                    link_gts: Some(8.0),
                    link_width: Some(16),
                    cpu_affinity: None,
                },
            ],
            nics: vec![],
            paths: vec![
                vec![PathClass::X, PathClass::PIX],
                vec![PathClass::PIX, PathClass::X],
            ],
        };
        let m = TopoModel::from_description(&d).unwrap();
        assert_eq!(m.bandwidth[0][1], 12.0); // limited by the Gen3 end
        let mut nv = d.clone();
        nv.paths[0][1] = PathClass::NV(2);
        nv.paths[1][0] = PathClass::NV(2);
        assert_eq!(
            TopoModel::from_description(&nv).unwrap().bandwidth[0][1],
            44.0
        );
        let mut asym = d.clone();
        asym.paths[0][1] = PathClass::SYS;
        assert!(TopoModel::from_description(&asym)
            .unwrap_err()
            .to_string()
            .contains("GPU0 to GPU1 is SYS but GPU1 to GPU0 is PIX"));
    }
}
