//! Property tests of the executor: ring plans with several chunk counts, run for real over the
//! in-memory transport for nranks 1..=17 and counts including 0, 1 and odd ones, with
//! exact closed-form results (i64 data, so any misrouted or double-counted chunk shows).

use acspeed_algorithms::Ring;
use acspeed_core::executor::{Buffers, CallInfo, ExecParams, Executor};
use acspeed_core::plan::Collective;
use acspeed_core::{DType, Rank, ReduceOp};
use acspeed_testkit::MemoryTransport;
use proptest::prelude::*;
use std::time::Duration;

fn x(r: usize, i: usize) -> i64 {
    (r as i64 + 1) * 1000 + (i as i64 % 997)
}

/// Runs `coll` on n threads; `input(r)` / output length per rank; returns outputs.
fn exec(
    coll: Collective,
    n: u32,
    k: u32,
    count: usize,
    seg: usize,
    op: Option<ReduceOp>,
    fused: bool,
) -> Vec<Vec<i64>> {
    let ts = MemoryTransport::fabric_with(n, fused);
    let (ie, oe) = coll.buffer_elems(n as usize, count);
    let exe = Executor::new(ExecParams {
        segment_bytes: seg,
        depth: 2,
        timeout: Duration::from_secs(30),
        stall_warn: Duration::ZERO,
        // As across hosts: chunks of 128 KiB or more are split into up to four segments.
        min_segments: 4,
    });
    std::thread::scope(|s| {
        let hs: Vec<_> = ts
            .iter()
            .enumerate()
            .map(|(r, t)| {
                let exe = &exe;
                s.spawn(move || {
                    let plan = Ring { chunks_per_rank: k }.plan_for_rank(coll, Rank(r as u32), n);
                    let input: Vec<i64> = (0..ie).map(|i| x(r, i)).collect();
                    let mut out: Vec<i64> = if coll.has_input() {
                        vec![-1; oe]
                    } else {
                        (0..oe).map(|i| x(r, i)).collect()
                    };
                    let bufs = Buffers {
                        input: input.as_ptr() as *const u8,
                        input_len: ie * 8,
                        output: out.as_mut_ptr() as *mut u8,
                        output_len: oe * 8,
                    };
                    let call = CallInfo {
                        seq: 1,
                        dtype: DType::I64,
                        op,
                        count,
                    };
                    exe.run(&plan, t, call, bufs).unwrap();
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The buffers and call of an in-place i64 sum allreduce of `v`, call number `seq`.
fn in_place_sum(v: &mut [i64], seq: u64) -> (Buffers, CallInfo) {
    let bufs = Buffers {
        input: std::ptr::null(),
        input_len: 0,
        output: v.as_mut_ptr() as *mut u8,
        output_len: v.len() * 8,
    };
    let call = CallInfo {
        seq,
        dtype: DType::I64,
        op: Some(ReduceOp::Sum),
        count: v.len(),
    };
    (bufs, call)
}

/// Chunks long enough to be split into four segments (as across hosts), with lengths that
/// are not multiples of the piece: every element still arrives once and sums exactly.
#[test]
fn chunks_split_into_four_segments_execute_exactly() {
    for (n, count) in [(2u32, 100_003usize), (3, 65_536 * 3 + 5), (4, 200_000)] {
        let nn = n as usize;
        let out = exec(
            Collective::AllReduce,
            n,
            1,
            count,
            256 << 10,
            Some(ReduceOp::Sum),
            false,
        );
        for o in &out {
            for (i, v) in o.iter().enumerate() {
                assert_eq!(
                    *v,
                    (0..nn).map(|q| x(q, i)).sum::<i64>(),
                    "n={n} element {i}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn ring_collectives_execute_exactly(
        n in 1u32..=17,
        k in 1u32..=3,
        count in prop_oneof![Just(0usize), Just(1), Just(3), 0usize..700],
        seg in prop_oneof![Just(8usize), Just(64), Just(1 << 16)],
        fused in any::<bool>(),
    ) {
        let nn = n as usize;
        let sum = |i: usize| (0..nn).map(|q| x(q, i)).sum::<i64>();

        let out = exec(Collective::AllReduce, n, k, count, seg, Some(ReduceOp::Sum), fused);
        for o in &out { prop_assert!(o.iter().enumerate().all(|(i, v)| *v == sum(i))); }

        let root = (count % nn) as u32;
        let out = exec(Collective::Broadcast { root: Rank(root) }, n, k, count, seg, None, fused);
        for o in &out { prop_assert!(o.iter().enumerate().all(|(i, v)| *v == x(root as usize, i))); }

        let out = exec(Collective::Reduce { root: Rank(root) }, n, k, count, seg, Some(ReduceOp::Sum), fused);
        prop_assert!(out[root as usize].iter().enumerate().all(|(i, v)| *v == sum(i)));

        let out = exec(Collective::AllGather, n, k, count, seg, None, fused);
        for o in &out { prop_assert!(o.iter().enumerate().all(|(j, v)| *v == x(j / count.max(1), j % count.max(1)))); }

        let out = exec(Collective::ReduceScatter, n, k, count, seg, Some(ReduceOp::Sum), fused);
        for (r, o) in out.iter().enumerate() { prop_assert!(o.iter().enumerate().all(|(i, v)| *v == sum(r * count + i))); }

        let out = exec(Collective::AllToAll, n, k, count, seg, None, fused);
        for (r, o) in out.iter().enumerate() {
            prop_assert!(o.iter().enumerate().all(|(j, v)| *v == x(j / count.max(1), r * count + j % count.max(1))));
        }

        let out = exec(Collective::Barrier, n, k, 0, seg, None, fused);
        prop_assert!(out.iter().all(|o| o.is_empty()));
    }
}

/// A rank that joins late is reported by the ranks waiting for it every `stall_warn` (with
/// the call, the algorithm and the rank's number), and the collective then completes: the
/// report does not end the wait, only the timeout does.
#[test]
fn a_late_rank_is_reported_while_the_others_wait() {
    use std::sync::{Arc, Mutex};
    let ts = MemoryTransport::fabric_with(2, false);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let exe = Executor::new(ExecParams {
        segment_bytes: 1 << 16,
        depth: 2,
        timeout: Duration::from_secs(30),
        stall_warn: Duration::from_millis(150),
        min_segments: 1,
    })
    .with_stall_sink(Arc::new(move |m: &str| {
        sink.lock().unwrap().push(m.to_string())
    }));
    std::thread::scope(|s| {
        for (r, t) in ts.iter().enumerate() {
            let exe = &exe;
            s.spawn(move || {
                if r == 1 {
                    std::thread::sleep(Duration::from_millis(700));
                }
                let plan = Ring::default().plan_for_rank(Collective::AllReduce, Rank(r as u32), 2);
                let mut v = vec![1i64; 1000];
                let (bufs, call) = in_place_sum(&mut v, 7);
                exe.run(&plan, t, call, bufs).unwrap();
                assert!(v.iter().all(|x| *x == 2));
            });
        }
    });
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|m| m.contains("rank 1") && m.contains("allreduce #7") && m.contains("ring")),
        "{seen:?}"
    );
}

/// An input fed through the staging area is refused, with a clear error and before any
/// traffic, for a plan whose first steps are not host reduces covering the buffer (a ring).
#[test]
fn a_fed_input_is_refused_for_plans_that_do_not_start_with_host_reduces() {
    use acspeed_core::executor::StageUse;
    use acspeed_core::{HostStage, StageCall, StageIo};
    struct Unused;
    impl HostStage for Unused {
        fn group(&self) -> &[Rank] {
            &[]
        }
        unsafe fn host_reduce(&self, _: *mut u8, _: &StageCall) -> acspeed_core::Result<()> {
            unreachable!("refused before")
        }
        unsafe fn host_reduce_io(
            &self,
            _: &dyn StageIo,
            _: &StageCall,
        ) -> acspeed_core::Result<()> {
            unreachable!("refused before")
        }
        fn area(&self) -> (*mut u8, usize) {
            (std::ptr::null_mut(), 0)
        }
        fn abort(&self, _: &str) {}
    }
    struct NoIo;
    impl StageIo for NoIo {
        unsafe fn fill(&self, _: *mut u8, _: usize, _: usize) -> acspeed_core::Result<()> {
            unreachable!("refused before")
        }
        unsafe fn drain(&self, _: *const u8, _: usize, _: usize) -> acspeed_core::Result<()> {
            unreachable!("refused before")
        }
    }
    let ts = MemoryTransport::fabric(2);
    let exe = Executor::new(ExecParams {
        segment_bytes: 1 << 16,
        depth: 2,
        timeout: Duration::from_secs(5),
        stall_warn: Duration::ZERO,
        min_segments: 1,
    });
    let plan = Ring { chunks_per_rank: 1 }.plan_for_rank(Collective::AllReduce, Rank(0), 2);
    let mut out = vec![0i64; 8];
    let (bufs, call) = in_place_sum(&mut out, 1);
    let fed = StageUse {
        area: &Unused,
        input: Some(&NoIo),
    };
    let t: &dyn acspeed_core::Transport = &ts[0];
    let e = exe
        .run_with(&plan, &[t], Some(fed), call, bufs, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host reduces come first"), "{e}");
}

/// A schedule lowered from another plan is refused before any traffic, naming the plan.
#[test]
fn a_schedule_from_another_plan_is_refused() {
    use acspeed_core::schedule::lower;
    let ts = MemoryTransport::fabric(2);
    let exe = Executor::new(ExecParams {
        segment_bytes: 1 << 16,
        depth: 2,
        timeout: Duration::from_secs(5),
        stall_warn: Duration::ZERO,
        min_segments: 1,
    });
    let plan = Ring { chunks_per_rank: 1 }.plan_for_rank(Collective::AllReduce, Rank(0), 2);
    let other = Ring { chunks_per_rank: 1 }.plan_for_rank(Collective::AllReduce, Rank(1), 2);
    let mut out = vec![0i64; 8];
    let (bufs, call) = in_place_sum(&mut out, 1);
    let sched = lower(&other, call.count, 8, exe.lowering());
    let t: &dyn acspeed_core::Transport = &ts[0];
    let e = exe
        .run_lowered(&plan, &sched, &[t], None, call, bufs, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lowered from another plan") && e.contains("ring"),
        "{e}"
    );
}
