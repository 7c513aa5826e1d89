//! Property tests: every ring plan verifies symbolically for nranks 1..=17, several chunk
//! counts and concrete element counts (including 0, 1 and odd ones).

use super::*;
use acspeed_core::verify::verify;
use proptest::prelude::*;

fn collectives(n: u32) -> Vec<Collective> {
    let mut v = vec![
        Collective::AllReduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Barrier,
    ];
    for root in [0, n / 2, n - 1] {
        v.push(Collective::Broadcast { root: Rank(root) });
        v.push(Collective::Reduce { root: Rank(root) });
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn ring_plans_verify(n in 1u32..=17, k in 1u32..=4, count in prop_oneof![Just(0usize), Just(1), Just(7), 0usize..5000]) {
        for coll in collectives(n) {
            let ring = Ring { chunks_per_rank: k };
            let plans = all_plans(|r| ring.plan_for_rank(coll, r, n), n);
            verify(&plans, Some(count)).map_err(|e| TestCaseError::fail(format!("{coll:?} n={n} k={k} count={count}: {e}")))?;
        }
    }
}

#[test]
fn verifier_catches_a_broken_ring() {
    // Drop the last allgather step of rank 0: its last chunk stays partial.
    let n = 4;
    let mut plans = all_plans(
        |r| Algorithm::Ring.plan_for_rank(Collective::AllReduce, r, n),
        n,
    );
    plans[0].lanes[0].steps.pop();
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(e.contains("never received") || e.contains("rank 0"), "{e}");

    // Double reduction: turn a copy into a reduce.
    let mut plans = all_plans(
        |r| Algorithm::Ring.plan_for_rank(Collective::AllReduce, r, n),
        n,
    );
    let s = plans[1].lanes[0]
        .steps
        .iter_mut()
        .find(|s| matches!(s.op, acspeed_core::Op::RecvCopySend { .. }))
        .unwrap();
    if let acspeed_core::Op::RecvCopySend { from, to, dst } = s.op {
        s.op = acspeed_core::Op::RecvReduceSend { from, to, dst };
    }
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(e.contains("x2") || e.contains("must be"), "{e}");

    // Swapped order of two receives: a deadlock or wrong data.
    let mut plans = all_plans(
        |r| Algorithm::Ring.plan_for_rank(Collective::Broadcast { root: Rank(0) }, r, n),
        n,
    );
    plans[2].lanes[0].steps.clear();
    let e = verify(&plans, None).unwrap_err().to_string();
    assert!(
        e.contains("never received") || e.contains("deadlock") || e.contains("must be"),
        "{e}"
    );
}

#[test]
fn algorithm_names() {
    assert_eq!(Algorithm::from_name("RING").unwrap(), Algorithm::Ring);
    assert!(Algorithm::from_name("tree")
        .unwrap_err()
        .to_string()
        .contains("available"));
}
