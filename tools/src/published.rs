//! NCCL's published figures by machine type (`benches/published/nccl.json`, the table
//! `benches/sim_published.py` validates the GPU model against), so `acspeed explain` can name
//! what NCCL is published at beside acspeed's pick on a machine of a known type.

use acspeed_core::sim::HostModel;
use acspeed_core::topology::TopoDescription;
use acspeed_core::Result;
use serde::Deserialize;
use std::collections::BTreeMap;

const TABLE: &str = include_str!("../../benches/published/nccl.json");

#[derive(Deserialize)]
struct Machine {
    machine: String,
    /// A GPU-table key (`topology::gpus::GPUS`).
    gpu: String,
    /// GPUs per host in the job.
    gpus: u32,
    /// "cube-mesh", "nvswitch", "pair" (two GPUs joined by NVLink), "none" or "any".
    links: String,
    hosts: usize,
    /// busbw GB/s per size in bytes (several sources: several figures).
    points: BTreeMap<String, Vec<f64>>,
}

/// The NVLink layout of a host's GPUs in the table's terms.
fn links_of(d: &TopoDescription) -> Result<&'static str> {
    let h = HostModel::gpu(d)?;
    let nv = h.nvlinks();
    let any = nv.iter().flatten().any(|n| *n > 0);
    Ok(match (any, nv.len()) {
        (false, _) => "none",
        (true, 2) => "pair",
        (true, _) if h.nvswitch() => "nvswitch",
        (true, _) => "cube-mesh",
    })
}

/// "NCCL published on this machine type ..." for a job of `shape` on hosts like `d`, if the
/// table has that type.
pub fn nccl_line(d: &TopoDescription, shape: &[u32]) -> Result<Option<String>> {
    let table: Vec<Machine> = serde_json::from_str(TABLE)
        .map_err(|e| acspeed_core::Error::invalid(format!("the published table: {e}")))?;
    let key = d.gpu_spec().key;
    let links = links_of(d)?;
    let per_host = shape.first().copied().unwrap_or(0);
    let even = shape.iter().all(|m| *m == per_host);
    let Some(m) = table.iter().find(|m| {
        m.gpu == key
            && even
            && m.gpus == per_host
            && m.hosts == shape.len()
            && (m.links == "any" || m.links == links)
    }) else {
        return Ok(None);
    };
    let mut points: Vec<(u64, &Vec<f64>)> = m
        .points
        .iter()
        .filter_map(|(b, v)| Some((b.parse().ok()?, v)))
        .collect();
    points.sort_by_key(|p| p.0);
    let each: Vec<String> = points
        .iter()
        .map(|(b, v)| {
            let figs: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
            let size = if *b >= 1 << 30 {
                format!("{} GiB", b >> 30)
            } else {
                format!("{} MiB", b >> 20)
            };
            format!("{} at {size}", figs.join("/"))
        })
        .collect();
    Ok(Some(format!(
        "NCCL published on this machine type ({}), busbw GB/s: {} (benches/published/nccl.json; \
         the model against them: docs/GPU_MODEL.md)",
        m.machine,
        each.join(", ")
    )))
}
