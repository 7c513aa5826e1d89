//! CPU-Reduce: the ranks of a host allreduce through one shared staging area in host memory
//! (`Op::HostReduce`: copy in, reduce on the CPU, copy out, pipelined over slots; see
//! acspeed-transports' `HostStaging`), instead of passing every byte around a ring.
//!
//! On one host that is the whole plan: one `HostReduce` of the buffer among all ranks. Each
//! rank writes its bytes once, reduces 1/L of them from all L inputs, and reads the result
//! once, in one pipelined step instead of 2(L-1) ring steps of receive, reduce and forward.
//!
//! Across hosts and sockets (the seed's multi-host CPU-Reduce): ranks are grouped into
//! staging domains, one per (host, socket) — a dual-socket box keeps a staging area on each
//! side, so only partial sums cross the inter-socket link, never every GPU's copies. The
//! buffer is striped as for hybrid (`C x D` chunks for `D` domains; local rank `q` of a domain
//! of `m` owns the stripes `c % m == q`). Each domain host-reduces every chunk, and only the
//! chunk's owner copies the result out: the reduced shard goes straight to the exchange. Each
//! stripe's owners then allreduce it between domains (ring: over shared memory between the
//! sockets of a host, over the network between hosts, each local rank driving its own stripes
//! over its own sockets), and each domain allgathers the finished stripes (ring). Domains of
//! one rank skip the staging step.
//!
//! Limits: a `HostReduce` group holds at most 8 ranks (`Peers::MAX`, the size of the 8-GPU
//! boxes CPU-Reduce is for); with a larger domain the plan is the ring (one host) or hybrid
//! (several), the same on every rank ([`fallback_reason`] says why).

use crate::compose::{allreduce_plan, owned_stripes, ring_allgather, ring_allreduce, Steps};
use crate::hybrid::stripes;
use acspeed_core::plan::{ChunkRef, Collective, Op, Peers, RankPlan};
use acspeed_core::{PlanContext, Rank};

/// Why CPU-Reduce's plan on `ctx` is not a CPU-Reduce plan, or `None`.
pub fn fallback_reason(ctx: &PlanContext) -> Option<String> {
    let domains = ctx.domains();
    if let Some(d) = domains.iter().find(|d| d.len() > Peers::MAX) {
        return Some(format!(
            "{} ranks share a staging area; a host reduce group holds at most {}",
            d.len(),
            Peers::MAX
        ));
    }
    if domains.iter().all(|d| d.len() == 1) {
        return Some("no host (or socket) has two ranks to share a staging area".into());
    }
    None
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReduce;

impl CpuReduce {
    pub fn serves(coll: Collective) -> bool {
        coll == Collective::AllReduce
    }

    /// Rank `rank`'s plan, or `None` when CPU-Reduce falls back (see [`fallback_reason`]).
    pub fn plan_for_rank(
        &self,
        coll: Collective,
        rank: Rank,
        ctx: &PlanContext,
    ) -> Option<RankPlan> {
        if fallback_reason(ctx).is_some() || coll != Collective::AllReduce {
            return None;
        }
        let domains = ctx.domains();
        let dom = domains
            .iter()
            .find(|d| d.contains(&rank))
            .expect("every rank is in a domain");
        let group = Peers::new(dom);
        let mut s = Steps::default();
        let chunks = if domains.len() == 1 {
            s.0.push(
                Op::HostReduce {
                    dst: ChunkRef::out(0),
                    group,
                    to: group,
                }
                .into(),
            );
            1
        } else {
            let d_count = domains.len() as u32;
            let shape: Vec<u32> = domains.iter().map(|d| d.len() as u32).collect();
            let c_count = stripes(&shape);
            let chunk = |c: u32, s: u32| ChunkRef::out(c * d_count + s);
            let owner = |d: &[Rank], c: u32| d[(c % d.len() as u32) as usize];
            if dom.len() > 1 {
                for c in 0..c_count {
                    let to = Peers::new(&[owner(dom, c)]);
                    for k in 0..d_count {
                        s.0.push(
                            Op::HostReduce {
                                dst: chunk(c, k),
                                group,
                                to,
                            }
                            .into(),
                        );
                    }
                }
            }
            let m = dom.len() as u32;
            let q = dom
                .iter()
                .position(|r| *r == rank)
                .expect("rank in its domain") as u32;
            for c in (0..c_count).filter(|c| c % m == q) {
                let owners: Vec<Rank> = domains.iter().map(|d| owner(d, c)).collect();
                let g: Vec<Vec<ChunkRef>> = (0..d_count).map(|k| vec![chunk(c, k)]).collect();
                ring_allreduce(&mut s, &owners, rank, &g);
            }
            let groups = owned_stripes(m, c_count, d_count);
            ring_allgather(&mut s, dom, rank, &groups, false);
            c_count * d_count
        };
        Some(allreduce_plan(
            "cpu_reduce".into(),
            rank,
            ctx.nranks,
            chunks,
            s,
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::Algorithm;
    use acspeed_core::plan::Collective;

    /// CPU-Reduce on a GPU host in closed form: every member moves its buffer down to the
    /// staging area and the result up again over its own PCIe link (12 GB/s each way for the
    /// default V100's Gen3 x16), the two directions at once, and both copies pass through the
    /// staging socket's DRAM (128 GB/s for an unnamed CPU): 8 members x 2 copies x r <= 128
    /// caps each copy at 8 GB/s, so S bytes take S / min(12, 8) GB/s. A ring moves 2(n-1)/n x S
    /// over each hop, and its hops between the sockets run at the sockets' link (10 GB/s each
    /// way for an unnamed CPU), which sets its pace.
    #[test]
    fn cpu_reduce_and_ring_on_pcie_in_closed_form() {
        use acspeed_core::sim::{Cluster, HostKind, HostModel, NetModel};
        let d = acspeed_core::topology::nvsmi::parse(include_str!(
            "../../tests/fixtures/nvsmi/04-savio4-8gpu-pcie-pxb-pix.txt"
        ))
        .unwrap();
        let net = NetModel {
            nic_gbit: 25.0,
            flow_gbit: None,
            streams: 4,
            latency_us: 30.0,
        };
        let predict = |sockets: Option<Vec<u32>>, algo: Algorithm, bytes: usize| {
            let mut h = HostModel::gpu(&d).unwrap();
            if let (Some(s), HostKind::Gpu { sockets, .. }) = (sockets, &mut h.kind) {
                *sockets = s;
            }
            let cl = Cluster::new(vec![h], &[8], net.clone()).unwrap();
            crate::select::predict(algo, Collective::AllReduce, &cl, bytes, 4, 256 << 10).unwrap()
        };
        let bytes = 128usize << 20;
        let us = |gbps: f64| bytes as f64 / (gbps * 1e3);
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got / want - 1.0).abs() < 0.1,
                "{what}: {got:.0} us, closed form {want:.0} us"
            )
        };
        close(
            predict(Some(vec![0; 8]), Algorithm::CpuReduce, bytes),
            us(8.0),
            "CPU-Reduce, one socket",
        );
        close(
            predict(None, Algorithm::Ring, bytes),
            2.0 * 7.0 / 8.0 * us(10.0),
            "ring, two sockets",
        );
    }

    /// The plans whose input a device can feed straight into the staging area: CPU-Reduce's,
    /// for every rank that shares a staging area; not a rank alone on its host, nor other
    /// algorithms' plans (their first steps send).
    #[test]
    fn cpu_reduce_plans_take_a_fed_input_where_a_rank_shares_a_staging_area() {
        use acspeed_core::executor::feeds_host_reduce;
        use acspeed_core::{PlanContext, Rank};
        for shape in [&[4u32][..], &[2, 2], &[3, 1, 2], &[8, 8]] {
            let ctx = PlanContext::from_shape(shape).unwrap();
            for r in 0..ctx.nranks {
                let alone = shape[ctx.host_of[r as usize] as usize] == 1;
                let plan = Algorithm::CpuReduce
                    .plan(Collective::AllReduce, Rank(r), &ctx)
                    .unwrap();
                assert_eq!(feeds_host_reduce(&plan), !alone, "{shape:?} rank {r}");
                for a in [
                    Algorithm::Ring,
                    Algorithm::Tree,
                    Algorithm::Hybrid(crate::InterHost::Ring),
                ] {
                    let p = a.plan(Collective::AllReduce, Rank(r), &ctx).unwrap();
                    assert!(!feeds_host_reduce(&p), "{shape:?} rank {r} {a:?}");
                }
            }
        }
    }
}
