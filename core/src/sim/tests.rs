//! Closed-form checks: one link, a ring on n equal links, k flows contending for one
//! receiver's link, a per-flow cap and streams, cores shared by more ranks than there are.

use super::*;
use crate::plan::{ChunkRef, Collective, Lane, Op, Peers, Rank};

const MIB: usize = 1 << 20;

/// Fast CPUs (so only the network counts) with no latency.
fn fast_host() -> HostModel {
    HostModel::cpu(64.0, 1e6, 1e6, 0.0)
}

fn net(gbit: f64, flow: Option<f64>, streams: u32, lat: f64) -> NetModel {
    NetModel {
        nic_gbit: gbit,
        flow_gbit: flow,
        streams,
        latency_us: lat,
    }
}

fn plan(rank: u32, n: u32, chunks: u32, steps: Vec<Op>) -> RankPlan {
    RankPlan {
        collective: Collective::AllReduce,
        algorithm: "test".into(),
        rank: Rank(rank),
        nranks: n,
        input_chunks: 0,
        output_chunks: chunks,
        scratch_factor: 0,
        weights: vec![],
        lanes: vec![Lane::new(steps.into_iter().map(Into::into).collect())],
    }
}

/// Rank 0 sends its one chunk to rank 1.
fn one_message() -> Vec<RankPlan> {
    let c = ChunkRef::out(0);
    vec![
        plan(
            0,
            2,
            1,
            vec![Op::Send {
                to: Rank(1),
                src: c,
            }],
        ),
        plan(
            1,
            2,
            1,
            vec![Op::Recv {
                from: Rank(0),
                dst: c,
            }],
        ),
    ]
}

fn params(bytes: usize, seg: usize) -> SimParams {
    SimParams {
        count: bytes / 4,
        elem_bytes: 4,
        segment_bytes: seg,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn one_message_over_one_link() {
    // 8 Gbit/s = 1 GB/s = 1000 bytes/us; 1 MiB takes 1048.576 us plus 30 us latency.
    let cl = Cluster::new(
        vec![fast_host(), fast_host()],
        &[1, 1],
        net(8.0, None, 1, 30.0),
    )
    .unwrap();
    let plans = one_message();
    let r = simulate(&plans, &cl, params(MIB, MIB)).unwrap();
    assert!(close(r.time_us, 1048.576 + 30.0), "{r:?}");
    // Four segments pipeline: latency is paid once at the end (messages follow one another).
    let r = simulate(&plans, &cl, params(MIB, MIB / 4)).unwrap();
    assert!(close(r.time_us, 1048.576 + 30.0), "{r:?}");
}

#[test]
fn per_flow_cap_times_streams() {
    let plans = one_message();
    for (streams, want) in [(1u32, 4.0 * 1048.576), (2, 2.0 * 1048.576), (8, 1048.576)] {
        // NIC 1 GB/s, each stream 0.25 GB/s: 1, 2 streams are capped; 8 hit the NIC.
        let cl = Cluster::new(
            vec![fast_host(), fast_host()],
            &[1, 1],
            net(8.0, Some(2.0), streams, 0.0),
        )
        .unwrap();
        let r = simulate(&plans, &cl, params(MIB, MIB)).unwrap();
        assert!(close(r.time_us, want), "streams {streams}: {r:?}");
    }
}

#[test]
fn ring_allreduce_on_n_equal_links_is_2_n_minus_1_over_n() {
    for n in [2u32, 3, 4, 7] {
        let hosts = vec![fast_host(); n as usize];
        let cl = Cluster::new(hosts, &vec![1; n as usize], net(8.0, None, 1, 0.0)).unwrap();
        let plans: Vec<RankPlan> = (0..n)
            .map(|r| {
                let mut p = crate::plan::RankPlan {
                    algorithm: "ring".into(),
                    ..plan(r, n, n, vec![])
                };
                // The ring's allreduce, built here without the algorithms crate.
                let (next, prev) = (Rank((r + 1) % n), Rank((r + n - 1) % n));
                let g = |off: i64| ChunkRef::out(((r as i64 + off).rem_euclid(n as i64)) as u32);
                let mut steps = vec![Op::Send {
                    to: next,
                    src: g(0),
                }];
                for j in 1..n as i64 {
                    steps.push(Op::RecvReduceSend {
                        from: prev,
                        to: next,
                        dst: g(-j),
                    });
                }
                for j in 1..n as i64 - 1 {
                    steps.push(Op::RecvCopySend {
                        from: prev,
                        to: next,
                        dst: g(1 - j),
                    });
                }
                steps.push(Op::Recv {
                    from: prev,
                    dst: g(2),
                });
                p.lanes[0].steps = steps.into_iter().map(Into::into).collect();
                p
            })
            .collect();
        crate::verify::verify(&plans, Some(n as usize * 1000)).unwrap();
        let bytes = n as usize * 1000 * 4;
        let r = simulate(&plans, &cl, params(bytes, bytes)).unwrap();
        // 1000 bytes/us per link; each of the 2(n-1) steps moves bytes/n.
        let want = 2.0 * (n as f64 - 1.0) * (bytes as f64 / n as f64) / 1000.0;
        assert!(
            (r.time_us - want).abs() / want < 1e-3,
            "n={n}: {} vs {want}",
            r.time_us
        );
    }
}

#[test]
fn k_senders_share_one_receivers_link() {
    for k in 1u32..=4 {
        let n = k + 1;
        let cl = Cluster::new(
            vec![fast_host(); n as usize],
            &vec![1; n as usize],
            net(8.0, None, 1, 0.0),
        )
        .unwrap();
        let c = ChunkRef::out(0);
        let mut plans = vec![plan(
            0,
            n,
            1,
            vec![Op::Fan {
                from: Peers::new(&(1..n).map(Rank).collect::<Vec<_>>()),
                to: Peers::none(),
                dst: c,
                reduce: true,
            }],
        )];
        for r in 1..n {
            plans.push(plan(
                r,
                n,
                1,
                vec![Op::Send {
                    to: Rank(0),
                    src: c,
                }],
            ));
        }
        let r = simulate(&plans, &cl, params(MIB, MIB)).unwrap();
        let want = k as f64 * 1048.576;
        assert!((r.time_us - want).abs() / want < 1e-3, "k={k}: {r:?}");
    }
}

#[test]
fn cores_are_shared_by_the_ranks_of_a_host() {
    // 4 ranks on one host with 2 cores of 1 GB/s copy: two pairs exchange 1 MiB each way.
    // A stream keeps two cores busy (sender copying in, receiver copying out): 4 messages x
    // 2 cores' work x 1 MiB over 2 GB/s of cores = 8 MiB / (2000 bytes/us).
    let cl = Cluster::new(
        vec![HostModel::cpu(2.0, 1.0, 1.0, 0.0)],
        &[4],
        net(8.0, None, 1, 0.0),
    )
    .unwrap();
    let c = ChunkRef::out(0);
    let d = ChunkRef::out(1);
    let plans: Vec<RankPlan> = (0..4u32)
        .map(|r| {
            let peer = Rank(r ^ 1);
            plan(
                r,
                4,
                2,
                vec![
                    Op::Send { to: peer, src: c },
                    Op::Recv { from: peer, dst: d },
                ],
            )
        })
        .collect();
    let r = simulate(&plans, &cl, params(2 * MIB, MIB)).unwrap();
    let want = 8.0 * 1048.576 / 2.0;
    assert!((r.time_us - want).abs() / want < 1e-3, "{r:?} vs {want}");
}

#[test]
fn mismatched_inputs_are_errors() {
    let cl = Cluster::new(vec![fast_host()], &[2], net(8.0, None, 1, 0.0)).unwrap();
    assert!(simulate(&[], &cl, params(4, 4)).is_err());
    assert!(Cluster::new(vec![fast_host()], &[0], net(8.0, None, 1, 0.0)).is_err());
    assert!(Cluster::new(vec![fast_host()], &[1], net(8.0, None, 0, 0.0)).is_err());
}

#[test]
fn nvswitch_gpus_share_their_links_to_the_switch() {
    // GPU 0 sends 4 MiB to GPUs 1 and 2 at once. Behind a switch (every pair NV2) both
    // flows share GPU 0's two links; in a mesh (1-2 not NVLinked) each pair has its own.
    let host = |row12: &str| {
        let text = format!(
            "\tGPU0\tGPU1\tGPU2\tCPU Affinity\nGPU0\t X \tNV2\tNV2\t0-1\nGPU1\tNV2\t X \t{row12}\t0-1\nGPU2\tNV2\t{row12}\t X \t0-1\n"
        );
        HostModel::gpu(&crate::topology::nvsmi::parse(&text).unwrap()).unwrap()
    };
    let fan = |h: HostModel| {
        assert_eq!(h.nvswitch(), h.nvlinks()[1][2] > 0);
        let cl = Cluster::new(vec![h], &[3], net(8.0, None, 1, 0.0)).unwrap();
        let c = ChunkRef::out(0);
        let mut plans = vec![plan(
            0,
            3,
            1,
            vec![Op::Fan {
                from: Peers::none(),
                to: Peers::new(&[Rank(1), Rank(2)]),
                dst: c,
                reduce: false,
            }],
        )];
        for r in 1..3 {
            plans.push(plan(
                r,
                3,
                1,
                vec![Op::Recv {
                    from: Rank(0),
                    dst: c,
                }],
            ));
        }
        simulate(&plans, &cl, params(4 * MIB, 4 * MIB))
            .unwrap()
            .time_us
    };
    let (switch, mesh) = (fan(host("NV2")), fan(host("PHB")));
    assert!(
        switch > 1.9 * mesh && switch < 2.1 * mesh,
        "{switch} vs {mesh}"
    );
}

/// Cache-resident collectives get the cache rates, host by host: while the ranks' buffers
/// (about 3 x the message each) fit in the last-level cache, and not beyond.
#[test]
fn cache_rates_apply_while_the_buffers_fit() {
    let h = HostModel::cpu(2.0, 10.0, 8.0, 5.0).with_cache(32 << 20, 40.0, 30.0);
    assert_eq!(h.at_size(1 << 20, 2).copy_gbps, 40.0);
    assert_eq!(h.at_size(1 << 20, 2).reduce_gbps, 30.0);
    assert_eq!(
        h.at_size(8 << 20, 2).copy_gbps,
        10.0,
        "48 MiB does not fit in 32"
    );
    assert_eq!(h.at_size(4 << 20, 2).copy_gbps, 40.0, "24 MiB fits");
    let unknown = HostModel::cpu(2.0, 10.0, 8.0, 5.0);
    assert_eq!(unknown.at_size(64, 2).copy_gbps, 10.0);
    let cl = Cluster::new(vec![h.clone(), h], &[1, 4], net(10.0, None, 1, 1.0)).unwrap();
    let sized = cl.at_size(4 << 20);
    assert_eq!(sized.hosts[0].copy_gbps, 40.0, "one rank: 12 MiB fits");
    assert_eq!(
        sized.hosts[1].copy_gbps, 10.0,
        "four ranks: 48 MiB does not"
    );
}

#[test]
fn host_reduce_runs_at_the_measured_staging_rates() {
    // Two members on two cores, one host reduce of S bytes each: S / (measured rate) plus
    // one message's latency, below the streaming size and from it.
    let host = HostModel::cpu(2.0, 10.0, 10.0, 5.0).with_stage(2.0, 5.0, 4 * MIB);
    let cl = Cluster::new(vec![host.clone()], &[2], net(8.0, None, 1, 0.0)).unwrap();
    let all = Peers::new(&[Rank(0), Rank(1)]);
    let plans: Vec<RankPlan> = (0..2u32)
        .map(|r| {
            plan(
                r,
                2,
                1,
                vec![Op::HostReduce {
                    dst: ChunkRef::out(0),
                    group: all,
                    to: all,
                }],
            )
        })
        .collect();
    for (bytes, gbps) in [(MIB, 2.0), (16 * MIB, 5.0)] {
        let r = simulate(&plans, &cl, params(bytes, bytes)).unwrap();
        let want = bytes as f64 / (gbps * 1e3) + 5.0;
        assert!(
            (r.time_us - want).abs() / want < 1e-3,
            "{bytes}: {r:?} vs {want}"
        );
    }
    // Unmeasured: costed from the copy and reduce rates (two copies and a reduce per byte).
    let cl = Cluster::new(
        vec![HostModel::cpu(2.0, 10.0, 10.0, 0.0)],
        &[2],
        net(8.0, None, 1, 0.0),
    )
    .unwrap();
    let r = simulate(&plans, &cl, params(MIB, MIB)).unwrap();
    let want = MIB as f64 * 3.0 / 10e3;
    assert!((r.time_us - want).abs() / want < 1e-3, "{r:?} vs {want}");
}
