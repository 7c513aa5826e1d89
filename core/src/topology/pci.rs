//! Path classes from the PCI tree (pure; the probe fills [`PciPlace`] from sysfs).
//!
//! ```text
//!  pci0000:00 (host bridge, NUMA 0)          pci0000:80 (host bridge, NUMA 1)
//!   └─ root port ── switch up ─┬─ down ── GPU0       └─ root port ── ... ── GPU4
//!                              └─ down ── GPU1
//!  GPU0-GPU1: one switch between them            -> PIX
//!  two switches, same root port                   -> PXB
//!  different root ports of one host bridge        -> PHB
//!  different host bridges, same NUMA node         -> NODE
//!  different NUMA nodes                           -> SYS
//!  any NVLink between the two GPUs                -> NV<links>
//! ```

use super::PathClass;
use serde::{Deserialize, Serialize};

/// Where a PCI device sits: its host bridge, the bridges above it (root port first) and its
/// NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciPlace {
    pub bdf: String,
    pub host_bridge: String,
    pub bridges: Vec<String>,
    pub numa: Option<u32>,
}

/// The class of the path between two devices (`nvlinks` NVLinks join them, 0 if none).
pub fn path_class(a: &PciPlace, b: &PciPlace, nvlinks: u8) -> PathClass {
    if a.bdf == b.bdf {
        return PathClass::X;
    }
    if nvlinks > 0 {
        return PathClass::NV(nvlinks);
    }
    if a.host_bridge != b.host_bridge {
        return match (a.numa, b.numa) {
            (Some(x), Some(y)) if x == y => PathClass::NODE,
            // Unknown NUMA (single-node machines report -1): assume one node.
            (None, None) => PathClass::NODE,
            _ => PathClass::SYS,
        };
    }
    let common = a
        .bridges
        .iter()
        .zip(&b.bridges)
        .take_while(|(x, y)| x == y)
        .count();
    if common == 0 {
        return PathClass::PHB;
    }
    // Within a switch the path is downstream port -> upstream port -> downstream port: a
    // single bridge below the shared one on each side.
    let (ra, rb) = (a.bridges.len() - common, b.bridges.len() - common);
    if ra <= 1 && rb <= 1 {
        PathClass::PIX
    } else {
        PathClass::PXB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bdf: &str, hb: &str, bridges: &[&str], numa: Option<u32>) -> PciPlace {
        PciPlace {
            bdf: bdf.into(),
            host_bridge: hb.into(),
            bridges: bridges.iter().map(|s| s.to_string()).collect(),
            numa,
        }
    }

    #[test]
    fn classes_follow_the_tree() {
        let g0 = at("g0", "pci0000:00", &["rp", "up", "d0"], Some(0));
        let g1 = at("g1", "pci0000:00", &["rp", "up", "d1"], Some(0));
        let g2 = at(
            "g2",
            "pci0000:00",
            &["rp", "up", "d2", "up2", "d3"],
            Some(0),
        );
        let g3 = at("g3", "pci0000:00", &["rp2"], Some(0));
        let g4 = at("g4", "pci0000:40", &["rp3"], Some(0));
        let g5 = at("g5", "pci0000:80", &["rp4"], Some(1));
        assert_eq!(path_class(&g0, &g0, 0), PathClass::X);
        assert_eq!(path_class(&g0, &g1, 0), PathClass::PIX);
        assert_eq!(path_class(&g0, &g2, 0), PathClass::PXB);
        assert_eq!(path_class(&g0, &g3, 0), PathClass::PHB);
        assert_eq!(path_class(&g0, &g4, 0), PathClass::NODE);
        assert_eq!(path_class(&g0, &g5, 0), PathClass::SYS);
        assert_eq!(path_class(&g0, &g5, 2), PathClass::NV(2));
    }
}
