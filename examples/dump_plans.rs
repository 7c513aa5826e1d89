//! Writes every plan of every algorithm for `n` ranks as JSON (one file per algorithm and
//! collective, a list of per-rank plans) — the format plan files and the plan fuzzer use.
//! An optional host shape (`3,1,2`) lays the ranks out over hosts for the hybrid plans.
//!
//!     cargo run --example dump_plans -- 4 /tmp/plans [2,2]

use acspeed_algorithms::Algorithm;
use acspeed_core::plan::Collective;
use acspeed_core::{PlanContext, Rank};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().unwrap_or_else(|| "4".into()).parse()?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "plans".into()));
    std::fs::create_dir_all(&dir)?;
    let ctx = match args.next() {
        Some(shape) => PlanContext::from_shape(
            &shape
                .split(',')
                .map(|x| x.trim().parse())
                .collect::<Result<Vec<u32>, _>>()?,
        )?,
        None => PlanContext::single_host(n),
    };
    if ctx.nranks != n {
        return Err(format!("shape {:?} has {} ranks, not {n}", ctx.shape(), ctx.nranks).into());
    }
    for coll in [
        Collective::AllReduce,
        Collective::Broadcast { root: Rank(n / 2) },
        Collective::Reduce { root: Rank(0) },
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Barrier,
    ] {
        for algo in Algorithm::ALL.into_iter().filter(|a| a.serves(coll)) {
            let plans = algo.all_plans(coll, &ctx)?;
            acspeed_core::verify::verify_all_models(&plans, None)?;
            let name = algo.name().replace(':', "-");
            let f = dir.join(format!("{}-{name}-n{n}.json", coll.name()));
            std::fs::write(&f, serde_json::to_string(&plans)?)?;
            println!("{}", f.display());
        }
    }
    Ok(())
}
