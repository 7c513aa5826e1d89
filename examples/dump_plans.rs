//! Writes every ring plan for `n` ranks as JSON (one file per collective, a list of per-rank
//! plans) — the format plan files and the plan fuzzer use.
//!
//!     cargo run --example dump_plans -- 4 /tmp/plans

use acspeed_algorithms::{all_plans, Algorithm};
use acspeed_core::plan::Collective;
use acspeed_core::Rank;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().unwrap_or_else(|| "4".into()).parse()?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "plans".into()));
    std::fs::create_dir_all(&dir)?;
    for coll in [
        Collective::AllReduce,
        Collective::Broadcast { root: Rank(n / 2) },
        Collective::Reduce { root: Rank(0) },
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Barrier,
    ] {
        let plans = all_plans(|r| Algorithm::Ring.plan_for_rank(coll, r, n), n);
        acspeed_core::verify::verify(&plans, None)?;
        let f = dir.join(format!("{}-ring-n{n}.json", coll.name()));
        std::fs::write(&f, serde_json::to_string(&plans)?)?;
        println!("{}", f.display());
    }
    Ok(())
}
