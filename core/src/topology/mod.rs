//! Topology: what the machine looks like, as data, and the model the selector and simulator use.
//!
//! Three layers, like NCCL's XML topology but in JSON:
//! * [`TopoDescription`] — a serializable description of one host: GPUs, NICs, CPUs/NUMA and
//!   the path class of every device pair. The probe (in the `acspeed` crate, the only part
//!   that touches the OS) produces it from sysfs and NVML; [`nvsmi::parse`] produces it from a
//!   saved `nvidia-smi topo -m`; users can write one by hand (`ACSPEED_TOPO_FILE`).
//! * [`PathClass`] — the classes `nvidia-smi topo -m` prints (X, NV#, PIX, PXB, PHB, NODE, SYS).
//! * [`TopoModel`] — a pure function of the description: bandwidth and latency per device
//!   pair from the facts of one documented place ([`gpus`]).

pub mod gpus;
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
    /// The GPUs' model as NVML names it ("Tesla V100-SXM2-16GB"); the link rates follow it
    /// ([`gpus::GPUS`]). `None`: [`gpus::DEFAULT_GPU`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
    /// The CPU model ("AMD EPYC 7542"): the inter-socket link's rate follows its vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_name: Option<String>,
    /// Whether GPU i can read GPU j's memory directly, as the driver says (probed through
    /// NVML's P2P status, or written in a topology file). `None`: not known, the path rule
    /// alone decides. A pair the rule allows but the driver refuses (P2P disabled in a VM,
    /// consumer GPUs) goes through host memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<Vec<Vec<bool>>>,
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
        if let Some(p) = &self.p2p {
            let g = self.gpus.len();
            if p.len() != g || p.iter().any(|r| r.len() != g) {
                return bad(format!("p2p matrix must be {g}x{g} for {g} GPUs"));
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

/// Bandwidth and latency between every pair of devices, from a description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopoModel {
    pub devices: Vec<String>,
    pub classes: Vec<Vec<PathClass>>,
    /// GB/s, one direction.
    pub bandwidth: Vec<Vec<f64>>,
    /// Microseconds per ring step (NCCL's tuning constants).
    pub latency: Vec<Vec<f64>>,
    /// Whether a pair talks device to device (NVLink, or PCIe P2P up to a switch); the others
    /// go through host memory (NCCL's SHM transport).
    #[serde(default)]
    pub p2p: Vec<Vec<bool>>,
    /// Each device's own PCIe link, GB/s each way.
    #[serde(default)]
    pub pcie_gbps: Vec<f64>,
    /// The link between CPU sockets, GB/s each way.
    #[serde(default)]
    pub socket_gbps: f64,
    /// One socket's DRAM bandwidth, GB/s (shared by everything that passes through host
    /// memory there).
    #[serde(default)]
    pub host_memory_gbps: f64,
}

impl TopoModel {
    /// Pure: the same description always gives the same model. Rates are what NCCL plans on
    /// each kind of path ([`gpus`]): `NV#` is # links at the GPU's per-link rate; a PCIe path
    /// (P2P under switches, or through host memory where the GPUs have no P2P or the path
    /// crosses the host bridge) runs at the slower GPU's own PCIe link, and `SYS` also at most
    /// at the inter-socket link's rate.
    pub fn from_description(d: &TopoDescription) -> crate::Result<TopoModel> {
        d.validate()?;
        let n = d.paths.len();
        let spec = d.gpu_spec();
        let (socket_gbps, _) = gpus::inter_socket_gbps(d.cpu_name.as_deref());
        // A GPU's own link: the probed one when known, else its model's.
        let pcie: Vec<f64> = (0..n)
            .map(|i| match d.gpus.get(i) {
                Some(g) => match (g.link_gts, g.link_width) {
                    (Some(gts), Some(w)) => gpus::pcie_gbps(gen_of(gts), w),
                    _ => spec.pcie_gbps(),
                },
                None => spec.pcie_gbps(),
            })
            .collect();
        let mut bandwidth = vec![vec![0.0; n]; n];
        let mut latency = vec![vec![0.0; n]; n];
        let mut p2p = vec![vec![false; n]; n];
        for i in 0..n {
            for j in 0..n {
                let up = pcie[i].min(pcie[j]);
                let (bw, lat, direct) = match d.paths[i][j] {
                    PathClass::X => (f64::INFINITY, 0.0, true),
                    PathClass::NV(k) => (
                        k as f64 * spec.nvlink_gbps(),
                        gpus::RING_STEP_NVLINK_US,
                        true,
                    ),
                    // NCCL's default P2P level is PXB: beyond it, through host memory.
                    PathClass::PIX | PathClass::PXB => (up, gpus::RING_STEP_PCIE_US, spec.pcie_p2p),
                    PathClass::PHB | PathClass::NODE => (up, gpus::RING_STEP_PCIE_US, false),
                    PathClass::SYS => (up.min(socket_gbps), gpus::RING_STEP_PCIE_US, false),
                };
                let allowed = d
                    .p2p
                    .as_ref()
                    .and_then(|p| p.get(i).and_then(|r| r.get(j)))
                    .copied()
                    .unwrap_or(true);
                bandwidth[i][j] = bw;
                latency[i][j] = lat;
                p2p[i][j] = direct && allowed;
            }
        }
        Ok(TopoModel {
            devices: d.device_names(),
            classes: d.paths.clone(),
            bandwidth,
            latency,
            p2p,
            pcie_gbps: pcie,
            socket_gbps,
            host_memory_gbps: gpus::host_memory_gbps(d.cpu_name.as_deref()).0,
        })
    }
}

/// The PCIe generation of a link rate in GT/s (2.5, 5, 8, 16, 32, 64).
fn gen_of(gts: f64) -> u32 {
    match gts {
        g if g >= 60.0 => 6,
        g if g >= 30.0 => 5,
        g if g >= 15.0 => 4,
        g if g >= 7.5 => 3,
        g if g >= 4.5 => 2,
        _ => 1,
    }
}

impl TopoDescription {
    /// Only the GPUs `picked` (by index, in the order given, as CUDA_VISIBLE_DEVICES numbers
    /// them), renumbered from 0; NICs stay.
    pub fn select_gpus(&self, picked: &[u32]) -> crate::Result<TopoDescription> {
        let g = self.gpus.len();
        let mut seen = vec![false; g];
        for p in picked {
            let i = *p as usize;
            if i >= g || std::mem::replace(&mut seen[i], true) {
                return Err(crate::Error::invalid(format!(
                    "GPU selection {picked:?}: GPU {p} is {} (the topology has GPUs 0..{})",
                    if i >= g { "not there" } else { "named twice" },
                    g.saturating_sub(1)
                )));
            }
        }
        if picked.is_empty() {
            return Err(crate::Error::invalid("GPU selection is empty"));
        }
        let keep: Vec<usize> = picked
            .iter()
            .map(|p| *p as usize)
            .chain(g..self.paths.len())
            .collect();
        let mut d = self.clone();
        d.gpus = picked
            .iter()
            .enumerate()
            .map(|(k, p)| Gpu {
                index: k as u32,
                ..self.gpus[*p as usize].clone()
            })
            .collect();
        d.paths = keep
            .iter()
            .map(|a| keep.iter().map(|b| self.paths[*a][*b]).collect())
            .collect();
        d.p2p = self.p2p.as_ref().map(|m| {
            picked
                .iter()
                .map(|a| picked.iter().map(|b| m[*a as usize][*b as usize]).collect())
                .collect()
        });
        d.validate()?;
        Ok(d)
    }

    /// The GPUs' spec: their name's, else [`gpus::DEFAULT_GPU`]'s.
    pub fn gpu_spec(&self) -> &'static gpus::GpuSpec {
        self.gpu_name
            .as_deref()
            .and_then(gpus::gpu_spec)
            .or_else(|| gpus::gpu_spec(gpus::DEFAULT_GPU))
            .expect("the default GPU is in the table")
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

    /// A GPU selection keeps the chosen GPUs' paths among themselves and to the NICs,
    /// renumbered in the order given; a repeated, missing or empty selection is refused.
    #[test]
    fn gpu_selection_renumbers_and_refuses_bad_lists() {
        let d = nvsmi::parse(include_str!(
            "../../../tests/fixtures/nvsmi/03-p100-dgx1-8gpu-sheffield.txt"
        ))
        .unwrap();
        let s = d.select_gpus(&[5, 0, 2]).unwrap();
        assert_eq!(s.gpus.len(), 3);
        assert_eq!(
            s.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(s.nics.len(), d.nics.len());
        assert_eq!(s.paths[0][1], d.paths[5][0]);
        assert_eq!(s.paths[1][2], d.paths[0][2]);
        assert_eq!(s.paths[0][3], d.paths[5][8], "GPU to the first NIC");
        s.validate().unwrap();
        for (bad, why) in [
            (&[0u32, 0][..], "named twice"),
            (&[8], "not there"),
            (&[], "empty"),
        ] {
            let e = d.select_gpus(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
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
            gpu_name: None,
            cpu_name: None,
            p2p: None,
        };
        let m = TopoModel::from_description(&d).unwrap();
        // Gen4 x16 against Gen3 x16: the slower end's 12 GB/s (NCCL's PCI_BW).
        assert_eq!((m.pcie_gbps[0], m.pcie_gbps[1]), (24.0, 12.0));
        assert_eq!(m.bandwidth[0][1], 12.0);
        // An unnamed GPU is a V100: P2P under the switch.
        assert!(m.p2p[0][1]);
        let mut nv = d.clone();
        nv.paths[0][1] = PathClass::NV(2);
        nv.paths[1][0] = PathClass::NV(2);
        // Two NVLink2 links at the 20 GB/s NCCL plans per link.
        assert_eq!(
            TopoModel::from_description(&nv).unwrap().bandwidth[0][1],
            40.0
        );
        // Named GPUs: an A100's NVLink3 links, a GeForce board's missing P2P, the socket link.
        nv.gpu_name = Some("NVIDIA A100-SXM4-80GB".into());
        nv.paths[0][1] = PathClass::NV(12);
        nv.paths[1][0] = PathClass::NV(12);
        assert_eq!(
            TopoModel::from_description(&nv).unwrap().bandwidth[0][1],
            240.0
        );
        let mut geforce = d.clone();
        geforce.gpu_name = Some("NVIDIA GeForce RTX 4090".into());
        geforce.gpus[1].link_gts = Some(16.0);
        geforce.paths[0][1] = PathClass::SYS;
        geforce.paths[1][0] = PathClass::SYS;
        geforce.cpu_name = Some("AMD EPYC 7542 32-Core Processor".into());
        let m = TopoModel::from_description(&geforce).unwrap();
        assert!(!m.p2p[0][1]);
        assert_eq!((m.bandwidth[0][1], m.socket_gbps), (16.0, 16.0));
        geforce.cpu_name = Some("Intel(R) Xeon(R) Platinum 8380".into());
        assert_eq!(
            TopoModel::from_description(&geforce).unwrap().bandwidth[0][1],
            10.0
        );
        let mut asym = d.clone();
        asym.paths[0][1] = PathClass::SYS;
        assert!(TopoModel::from_description(&asym)
            .unwrap_err()
            .to_string()
            .contains("GPU0 to GPU1 is SYS but GPU1 to GPU0 is PIX"));
        // What the driver says overrides the path rule: NVLink with P2P refused (a VM).
        let mut refused = nv.clone();
        refused.p2p = Some(vec![vec![true, false], vec![false, true]]);
        assert!(!TopoModel::from_description(&refused).unwrap().p2p[0][1]);
        assert!(refused.select_gpus(&[1, 0]).unwrap().p2p == refused.p2p);
        assert!(refused.select_gpus(&[1]).unwrap().p2p == Some(vec![vec![true]]));
        refused.p2p = Some(vec![vec![true]]);
        assert!(TopoModel::from_description(&refused)
            .unwrap_err()
            .to_string()
            .contains("p2p matrix must be 2x2"));
    }
}
