//! The facts the GPU model is built from, in one place, each with its source. Nothing here is
//! fitted to a machine: link rates are what NCCL itself plans with (its `src/graph/topo.h`,
//! read 2026-12-04 at commit 5067397c), the link counts come from the topology (`NV#`), the
//! GPU from the probe (NVML name), a topology-file field (`gpu_name`) or `--gpu`, and the
//! per-step costs from NCCL's tuning model (`src/graph/tuning.cc`, same commit).
//!
//! Rates are GB/s each way, usable by collectives (NCCL's figures are below the signalling
//! rates: an NVLink2 link signals 25 GB/s each way and NCCL plans 20 on it).

/// One NVLink generation: signalling rate per link each way (NVIDIA's datasheets) and the
/// rate NCCL plans per link (`SMxx_NVLINK_BW` in NCCL's topo.h).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NvlinkGen {
    pub generation: u32,
    pub signal_gbps: f64,
    pub usable_gbps: f64,
    pub source: &'static str,
}

/// NVLink 1-5. The GeForce/RTX bridges of Ampere workstations (sm86) run their NVLink3 links
/// at about half rate: NCCL plans 12 GB/s per link there (`SM86_NVLINK_BW`).
#[rustfmt::skip]
pub const NVLINK: &[NvlinkGen] = &[
    NvlinkGen {
        generation: 1,
        signal_gbps: 20.0,
        usable_gbps: 18.0,
        source: "P100 datasheet (4 links, 160 GB/s bidirectional); NCCL SM60_NVLINK_BW",
    },
    NvlinkGen {
        generation: 2,
        signal_gbps: 25.0,
        usable_gbps: 20.0,
        source: "V100 datasheet (6 links, 300 GB/s bidirectional); NCCL SM70_NVLINK_BW",
    },
    NvlinkGen {
        generation: 3,
        signal_gbps: 25.0,
        usable_gbps: 20.0,
        source: "A100 datasheet (12 links, 600 GB/s bidirectional); NCCL SM80_NVLINK_BW",
    },
    NvlinkGen {
        generation: 4,
        signal_gbps: 25.0,
        usable_gbps: 20.6,
        source: "H100 SXM datasheet (18 links, 900 GB/s bidirectional); NCCL SM90_NVLINK_BW",
    },
    NvlinkGen {
        generation: 5,
        signal_gbps: 50.0,
        usable_gbps: 40.1,
        source: "B200 datasheet (18 links, 1.8 TB/s bidirectional); NCCL SM100_NVLINK_BW",
    },
];

/// Per-link rate of the NVLink bridges of PCIe boards (RTX 2080 Ti, RTX 3090, A40, A6000):
/// NCCL plans 12 GB/s per link on the sm86 ones (`SM86_NVLINK_BW`; 4 links x 14.06 GB/s
/// signalling each way, RTX 3090 datasheet). NCCL has no separate figure for Turing's bridge
/// and plans it as an SXM2 V100's (20); the published 2x RTX 2080 Ti run (nccl-tests#44,
/// 21.4 GB/s over 2 links) shows the bridge at about the sm86 rate, so every bridge uses it.
pub const BRIDGE_NVLINK_USABLE_GBPS: f64 = 12.0;

/// A GPU model as the model needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuSpec {
    /// What the NVML name contains (case-insensitive), most specific first in [`GPUS`].
    pub key: &'static str,
    /// Compute capability x 10 (70 = sm_70).
    pub sm: u32,
    /// NVLink generation (0: none).
    pub nvlink: u32,
    /// Its NVLinks are a bridge between two boards, not SXM links.
    pub bridge: bool,
    /// PCIe generation and lanes of the GPU's own link.
    pub pcie_gen: u32,
    pub pcie_lanes: u32,
    /// Peer-to-peer over PCIe. GeForce boards have none with NVIDIA's stock driver: their
    /// transfers go through host memory even under one PCIe switch (nccl#1309).
    pub pcie_p2p: bool,
}

/// GPU models, most specific key first (datasheets for PCIe generation and NVLink).
#[rustfmt::skip]
pub const GPUS: &[GpuSpec] = &[
    // key, sm, NVLink generation, bridge, PCIe generation, lanes, P2P over PCIe
    gpu("B200", 100, 5, false, 5, 16, true),
    gpu("H200", 90, 4, false, 5, 16, true),
    gpu("H100", 90, 4, false, 5, 16, true),
    gpu("H800", 90, 4, false, 5, 16, true),
    gpu("A100", 80, 3, false, 4, 16, true),
    gpu("A800", 80, 3, false, 4, 16, true),
    gpu("RTX 4090", 89, 0, false, 4, 16, false),
    gpu("L40", 89, 0, false, 4, 16, true),
    gpu("L4", 89, 0, false, 4, 16, true),
    gpu("RTX 3090", 86, 3, true, 4, 16, false),
    gpu("A6000", 86, 3, true, 4, 16, true),
    gpu("A40", 86, 3, true, 4, 16, true),
    gpu("A10", 86, 0, false, 4, 16, true),
    gpu("RTX 2080 Ti", 75, 2, true, 3, 16, false),
    gpu("T4", 75, 0, false, 3, 16, true),
    gpu("V100", 70, 2, false, 3, 16, true),
    gpu("P100", 60, 1, false, 3, 16, true),
    gpu("TITAN X", 52, 0, false, 3, 16, false),
];

const fn gpu(
    key: &'static str,
    sm: u32,
    nvlink: u32,
    bridge: bool,
    pcie_gen: u32,
    pcie_lanes: u32,
    pcie_p2p: bool,
) -> GpuSpec {
    GpuSpec {
        key,
        sm,
        nvlink,
        bridge,
        pcie_gen,
        pcie_lanes,
        pcie_p2p,
    }
}

/// What an unnamed GPU is taken to be: a V100 (the NVLink2 / PCIe Gen3 machine the seed's
/// figures were made on). Explanations say when this default was used.
pub const DEFAULT_GPU: &str = "V100";

/// The spec whose key the name contains (case-insensitive), if any.
pub fn gpu_spec(name: &str) -> Option<&'static GpuSpec> {
    let n = name.to_ascii_uppercase();
    GPUS.iter()
        .find(|g| n.contains(&g.key.to_ascii_uppercase()))
}

impl GpuSpec {
    /// The rate per NVLink of this GPU: NCCL's by compute capability (topo.h), or a bridge's.
    pub fn nvlink_gbps(&self) -> f64 {
        if self.bridge {
            return BRIDGE_NVLINK_USABLE_GBPS;
        }
        let generation = match self.sm {
            100.. => 5,
            90..=99 => 4,
            80..=89 => 3,
            70..=79 => 2,
            _ => 1,
        };
        NVLINK
            .iter()
            .find(|g| g.generation == generation)
            .map_or(20.0, |g| g.usable_gbps)
    }

    /// The GPU's own PCIe link: NCCL's rule, lanes x per-lane rate / 80 with 60 (x 100 Mbit/s)
    /// per lane at Gen3, doubling per generation (topo.cc `kvDictPciGen`): Gen3 x16 = 12 GB/s
    /// (`PCI_BW`), Gen4 x16 = 24, Gen5 x16 = 48.
    pub fn pcie_gbps(&self) -> f64 {
        pcie_gbps(self.pcie_gen, self.pcie_lanes)
    }
}

/// NCCL's usable rate of a PCIe link of `generation` and `lanes` (see [`GpuSpec::pcie_gbps`]).
pub fn pcie_gbps(generation: u32, lanes: u32) -> f64 {
    let per_lane = 60.0 * 2f64.powi(generation.max(1) as i32 - 3);
    lanes as f64 * per_lane / 80.0
}

/// The link between CPU sockets as NCCL plans it (topo.cc `ncclTopoGetInterCpuBw`): AMD
/// Infinity Fabric 16 GB/s (`AMD_BW`), Intel Skylake and later UPI 10 (`SKL_QPI_BW`), older
/// Intel QPI 6 (`BDW_QPI_BW`). An unnamed CPU is taken as Intel Skylake or later.
pub fn inter_socket_gbps(cpu: Option<&str>) -> (f64, &'static str) {
    let c = cpu.unwrap_or("").to_ascii_uppercase();
    if c.contains("AMD") || c.contains("EPYC") {
        (16.0, "AMD Infinity Fabric (NCCL AMD_BW)")
    } else if c.contains("E5-") || c.contains("E7-") {
        (6.0, "Intel QPI before Skylake (NCCL BDW_QPI_BW)")
    } else {
        (10.0, "Intel UPI, Skylake or later (NCCL SKL_QPI_BW)")
    }
}

/// One socket's DRAM bandwidth, GB/s: channels x transfer rate x 8 bytes from the CPU
/// vendors' specifications (AMD EPYC 7002/7003: 8 x DDR4-3200 = 204.8; EPYC 9004: 12 x
/// DDR5-4800 = 460.8; Intel Xeon Ice Lake SP (x3xx): 8 x DDR4-3200 = 204.8; Sapphire Rapids
/// (x4xx): 8 x DDR5-4800 = 307.2; Skylake/Cascade Lake SP and unnamed CPUs: 6 x DDR4-2666 =
/// 128). The path through host memory writes each byte there once and reads it once.
pub fn host_memory_gbps(cpu: Option<&str>) -> (f64, &'static str) {
    let c = cpu.unwrap_or("").to_ascii_uppercase();
    let xeon_gen = |digit: char| {
        ["PLATINUM 8", "GOLD 6", "GOLD 5", "SILVER 4"]
            .iter()
            .any(|p| {
                c.find(p)
                    .and_then(|i| c[i + p.len()..].chars().next())
                    .is_some_and(|d| d == digit)
            })
    };
    if c.contains("EPYC 9") {
        (460.8, "12 x DDR5-4800 (AMD EPYC 9004)")
    } else if c.contains("EPYC") {
        (204.8, "8 x DDR4-3200 (AMD EPYC 7002/7003)")
    } else if xeon_gen('4') {
        (307.2, "8 x DDR5-4800 (Intel Xeon Sapphire Rapids)")
    } else if xeon_gen('3') {
        (204.8, "8 x DDR4-3200 (Intel Xeon Ice Lake SP)")
    } else {
        (
            128.0,
            "6 x DDR4-2666 (Intel Xeon Skylake SP; assumed when unnamed)",
        )
    }
}

/// NCCL's per-collective and per-step costs of its ring with the Simple protocol, us
/// (tuning.cc: `baseLatencies` ring/Simple 8.4; `hwLatencies` ring/Simple 3.4 over NVLink,
/// 5.7 over PCIe). A ring allreduce of n ranks takes 2(n-1) steps.
pub const RING_BASE_US: f64 = 8.4;
pub const RING_STEP_NVLINK_US: f64 = 3.4;
pub const RING_STEP_PCIE_US: f64 = 5.7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_their_spec_most_specific_first() {
        assert_eq!(gpu_spec("Tesla V100-SXM2-16GB").unwrap().sm, 70);
        assert_eq!(gpu_spec("NVIDIA A100-SXM4-80GB").unwrap().nvlink, 3);
        assert_eq!(gpu_spec("NVIDIA GeForce RTX 4090").unwrap().key, "RTX 4090");
        assert_eq!(gpu_spec("NVIDIA L40S").unwrap().key, "L40");
        assert_eq!(gpu_spec("NVIDIA A10").unwrap().key, "A10");
        assert!(gpu_spec("Radeon").is_none());
    }

    #[test]
    fn link_rates_follow_nccls_rules() {
        assert_eq!(pcie_gbps(3, 16), 12.0);
        assert_eq!(pcie_gbps(4, 16), 24.0);
        assert_eq!(pcie_gbps(5, 16), 48.0);
        assert_eq!(pcie_gbps(4, 8), 12.0);
        let v100 = gpu_spec("V100").unwrap();
        assert_eq!((v100.nvlink_gbps(), v100.pcie_gbps()), (20.0, 12.0));
        assert_eq!(gpu_spec("H100").unwrap().nvlink_gbps(), 20.6);
        assert_eq!(gpu_spec("RTX 3090").unwrap().nvlink_gbps(), 12.0);
        assert_eq!(gpu_spec("GeForce RTX 2080 Ti").unwrap().nvlink_gbps(), 12.0);
        // Every generation's usable rate is below its signalling rate.
        assert!(NVLINK.iter().all(|g| g.usable_gbps < g.signal_gbps));
        assert_eq!(inter_socket_gbps(Some("AMD EPYC 7542")).0, 16.0);
        assert_eq!(inter_socket_gbps(None).0, 10.0);
        assert_eq!(host_memory_gbps(Some("AMD EPYC 7542 32-Core")).0, 204.8);
        assert_eq!(
            host_memory_gbps(Some("Intel(R) Xeon(R) Platinum 8380")).0,
            204.8
        );
        assert_eq!(
            host_memory_gbps(Some("Intel(R) Xeon(R) Platinum 8480+")).0,
            307.2
        );
        assert_eq!(host_memory_gbps(None).0, 128.0);
    }
}
