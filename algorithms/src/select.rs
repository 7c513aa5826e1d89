//! The policy's simulator adapter: the candidates for a collective on a job, and each one's
//! predicted time on a cluster model, from the very plans the executor would run. The
//! runtime's selector (`acspeed::selector`) keeps the table; the policy decides with it.
//!
//! No correction factors: what the simulator predicts is what the table holds. Overrides sit
//! above it (`ACSPEED_ALGO`, handled by the communicator).

use crate::{Algorithm, InterHost};
use acspeed_core::plan::Collective;
use acspeed_core::sim::{simulate, Cluster, SimParams};
use acspeed_core::{PlanContext, Result};
use rayon::prelude::*;

/// One candidate's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub algo: Algorithm,
    pub time_us: f64,
}

/// Algorithms worth predicting for `coll` on `ctx`: those that serve it, with hybrid only
/// when ranks span several hosts and some host has more than one (otherwise hybrid's plan is
/// a ring), and n-trees only where NVLinks carry them (otherwise their plan is the tree).
pub fn candidates(coll: Collective, ctx: &PlanContext) -> Vec<Algorithm> {
    let hierarchical = ctx.nhosts() > 1 && ctx.shape().iter().any(|m| *m > 1);
    Algorithm::ALL
        .into_iter()
        .filter(|a| a.serves(coll))
        .filter(|a| !matches!(a, Algorithm::Hybrid(_)) || hierarchical)
        .filter(|a| *a != Algorithm::Tree || ctx.nranks > 2)
        .filter(|a| *a != Algorithm::Ntree || crate::ntree::fallback_reason(ctx).is_none())
        .filter(|a| *a != Algorithm::CpuReduce || crate::cpu_reduce::fallback_reason(ctx).is_none())
        .collect()
}

/// The context a cluster model describes (ranks numbered host by host; the NVLinks of the
/// first host's GPUs when every host has the same ones, as plans assume).
pub fn context_of(cluster: &Cluster) -> PlanContext {
    let ctx = PlanContext {
        nranks: cluster.nranks() as u32,
        host_of: cluster.host_of.clone(),
        nvlinks: Vec::new(),
        device_of: Vec::new(),
        socket_of: Vec::new(),
    };
    let links: Vec<Vec<Vec<u8>>> = cluster.hosts.iter().map(|h| h.nvlinks()).collect();
    let sockets: Vec<Vec<u32>> = cluster.hosts.iter().map(|h| h.gpu_sockets()).collect();
    if links.iter().any(|l| *l != links[0]) || sockets.iter().any(|s| *s != sockets[0]) {
        return ctx;
    }
    let ctx = if sockets[0].is_empty() {
        ctx
    } else {
        ctx.with_sockets(&sockets[0])
    };
    let mut ctx = ctx
        .with_nvlinks(links[0].clone())
        .expect("a topology model's NVLink matrix is square and symmetric");
    if !ctx.device_of.is_empty() {
        ctx.device_of = cluster.local_of.clone();
    }
    ctx
}

/// Most segments per message a prediction simulates: the pipeline's fill is negligible
/// there, and a 1 GiB message on 64 ranks simulates in about a second per candidate instead
/// of several (n-trees over 8 hosts x 8 V100s: 7.4 s at 4096 segments of 256 KiB).
pub const SIM_SEGMENTS_MAX: usize = 256;

/// The segment size predictions use for a message of `bytes`: the executor's (`requested`),
/// or 1/[`SIM_SEGMENTS_MAX`] of the message when that is larger. The selector and
/// `acspeed simulate` both use it, so the algorithm the command marks is the one `auto` runs.
pub fn sim_segment_bytes(requested: usize, bytes: usize) -> usize {
    requested.max(bytes / SIM_SEGMENTS_MAX)
}

/// Predicted time of `algo` for `coll` with `bytes` of output per rank.
pub fn predict(
    algo: Algorithm,
    coll: Collective,
    cluster: &Cluster,
    bytes: usize,
    elem_bytes: usize,
    segment_bytes: usize,
) -> Result<f64> {
    let ctx = context_of(cluster);
    let plans = algo.all_plans_rounds(coll, &ctx, algo.rounds_for(coll, bytes, &ctx))?;
    let count = bytes / elem_bytes;
    Ok(simulate(
        &plans,
        cluster,
        SimParams {
            count,
            elem_bytes,
            segment_bytes,
        },
    )?
    .time_us)
}

/// Every candidate's prediction at one size, fastest first (ties keep the candidates' order,
/// so every rank breaks them the same way).
pub fn rank_candidates(
    coll: Collective,
    cluster: &Cluster,
    cands: &[Algorithm],
    bytes: usize,
    elem_bytes: usize,
    segment_bytes: usize,
) -> Result<Vec<Prediction>> {
    // Independent simulations: one per candidate, in parallel; `collect` keeps their order.
    let mut v = cands
        .par_iter()
        .map(|&algo| {
            Ok(Prediction {
                algo,
                time_us: predict(algo, coll, cluster, bytes, elem_bytes, segment_bytes)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    v.sort_by(|a, b| a.time_us.total_cmp(&b.time_us));
    Ok(v)
}

/// Spelling used by `--algo` and JSON rows (`hybrid:ring` for the default hybrid).
pub fn row_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Hybrid(InterHost::Ring) => "hybrid:ring",
        a => a.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acspeed_core::sim::{HostModel, NetModel};

    fn cluster(shape: &[u32], gbit: f64) -> Cluster {
        Cluster::new(
            vec![HostModel::cpu(8.0, 8.0, 6.0, 3.0); shape.len()],
            shape,
            NetModel {
                nic_gbit: gbit,
                flow_gbit: Some(gbit / 4.0),
                streams: 4,
                latency_us: 30.0,
            },
        )
        .unwrap()
    }

    #[test]
    fn hybrid_wins_large_messages_across_hosts() {
        let cl = cluster(&[4, 4], 10.0);
        let v = rank_candidates(
            Collective::AllReduce,
            &cl,
            &candidates(Collective::AllReduce, &context_of(&cl)),
            64 << 20,
            4,
            256 << 10,
        )
        .unwrap();
        assert!(matches!(v[0].algo, Algorithm::Hybrid(_)), "{v:?}");
        let ring = v.iter().find(|p| p.algo == Algorithm::Ring).unwrap();
        assert!(ring.time_us > 1.3 * v[0].time_us, "{v:?}");
    }

    /// Hybrid's rounds hide the intra-host phases behind the network in the model as on the
    /// wire: predicted faster than the same plan in one round, on uneven and even hosts.
    #[test]
    fn hybrid_rounds_are_predicted_faster_than_one_round() {
        // (On 2 x 2 the model's fast intra-host copies leave less to hide.)
        for (shape, gain) in [(&[3u32, 1, 2][..], 0.97), (&[2, 2], 0.99)] {
            let cl = cluster(shape, 2.0);
            let ctx = context_of(&cl);
            let algo = Algorithm::Hybrid(InterHost::Ring);
            let bytes = 64 << 20;
            assert_eq!(algo.rounds_for(Collective::AllReduce, bytes, &ctx), 4);
            let rounds = predict(algo, Collective::AllReduce, &cl, bytes, 4, 256 << 10).unwrap();
            let one = simulate(
                &algo.all_plans(Collective::AllReduce, &ctx).unwrap(),
                &cl,
                SimParams {
                    count: bytes / 4,
                    elem_bytes: 4,
                    segment_bytes: 256 << 10,
                },
            )
            .unwrap()
            .time_us;
            assert!(
                rounds < gain * one,
                "{shape:?}: {rounds} us in 4 rounds, {one} in 1"
            );
        }
    }

    #[test]
    fn rankings_are_deterministic() {
        let cl = cluster(&[2, 2], 2.0);
        let cands = candidates(Collective::AllReduce, &context_of(&cl));
        let rank =
            || rank_candidates(Collective::AllReduce, &cl, &cands, 64 << 20, 4, 256 << 10).unwrap();
        let a = rank();
        assert_eq!(a, rank());
        assert!(matches!(a[0].algo, Algorithm::Hybrid(_)), "{a:?}");
        // Flat hosts: hybrid is not a candidate.
        let flat = cluster(&[1, 1, 1], 2.0);
        assert!(!candidates(Collective::AllReduce, &context_of(&flat))
            .iter()
            .any(|a| matches!(a, Algorithm::Hybrid(_))));
    }
}
