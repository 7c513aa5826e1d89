//! `acspeed-bench`: the allreduce benchmark, nccl-tests style.
//!
//! `-n N` starts N local ranks (child processes of this binary) and prints the table from
//! rank 0; without `-n` the process joins a job described by torchrun's variables (RANK,
//! WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which is how it runs across hosts. Exits non-zero
//! when any result is wrong or any rank fails.

use acspeed::{Config, DType, LaunchEnv, ReduceOp};
use acspeed_tools::bench::{format_table, run_sweep, BenchParams};
use anyhow::{bail, Context, Result};
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

fn size(s: &str) -> Result<usize, String> {
    acspeed_core::config::parse_size(s)
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 4096, 4K, 64M, 1G)"))
}

#[derive(Parser, Debug)]
#[command(
    name = "acspeed-bench",
    version,
    about = "Allreduce benchmark (nccl-tests columns): time, algbw, busbw, #wrong"
)]
struct Args {
    /// Smallest message size in bytes (accepts 4K, 64M, ...).
    #[arg(short = 'b', long = "minbytes", default_value = "4K", value_parser = size)]
    min_bytes: usize,
    /// Largest message size in bytes.
    #[arg(short = 'e', long = "maxbytes", default_value = "64M", value_parser = size)]
    max_bytes: usize,
    /// Multiplication factor between sizes.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 2)]
    factor: usize,
    /// Start this many local ranks (omit to join a job from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT).
    #[arg(short = 'n', long = "nranks")]
    nranks: Option<u32>,
    /// Element type: f32, f64, f16, bf16, i32, i64, i8, u8.
    #[arg(short = 'd', long = "datatype", default_value = "f32")]
    dtype: DType,
    /// Reduction: sum, prod, min, max, avg (band, bor, bxor for integers).
    #[arg(short = 'o', long = "op", default_value = "sum")]
    op: ReduceOp,
    /// Algorithm: auto, ring, tree, ntree, hybrid (= hybrid:ring), hybrid:tree,
    /// hybrid:butterfly, hybrid:ps, cpu_reduce; same as ACSPEED_ALGO. With auto the algo
    /// column says which one ran at each size.
    #[arg(long = "algo", default_value = "auto")]
    algo: String,
    /// With -n: group the local ranks into emulated hosts of these sizes, e.g. 3,1,2 (each
    /// gets its own ACSPEED_HOST_ID, so ranks of different "hosts" talk over TCP loopback
    /// instead of shared memory). Lets hybrid plans run on one machine.
    #[arg(long = "hosts", value_name = "SHAPE", requires = "nranks")]
    hosts: Option<String>,
    /// Untimed iterations per size.
    #[arg(short = 'w', long = "warmup", default_value_t = 5)]
    warmup: usize,
    /// Timed iterations per size.
    #[arg(long = "iters", default_value_t = 20)]
    iters: usize,
    /// Check every result against an independent reference (counts go in #wrong): bit for
    /// bit where the arithmetic is exact, else within a relative tolerance (AVG, float sums
    /// of many ranks).
    #[arg(short = 'c', long = "check")]
    check: bool,
    /// Self-test of --check: rank R corrupts one element of each checked result, so the run
    /// must report #wrong > 0 and exit 1.
    #[arg(long = "corrupt-rank", value_name = "R", requires = "check")]
    corrupt_rank: Option<u32>,
    /// Print one JSON array of rows instead of the table.
    #[arg(long = "json")]
    json: bool,
    /// Also report every call of each size in order, warm-up included (the slowest rank's
    /// time): how far from steady state the first calls are (JSON `calls_us`; the table adds
    /// a line per size).
    #[arg(long = "per-call")]
    per_call: bool,
    /// Seconds the whole run may take before ranks are killed (with -n).
    #[arg(long = "time-limit", default_value_t = 1800)]
    time_limit: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("acspeed-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn validate(a: &Args) -> Result<()> {
    if a.min_bytes == 0 {
        bail!("-b/--minbytes must be at least one element, got 0");
    }
    if a.max_bytes < a.min_bytes {
        bail!(
            "-e/--maxbytes ({}) is smaller than -b/--minbytes ({})",
            a.max_bytes,
            a.min_bytes
        );
    }
    if a.min_bytes < a.dtype.size() {
        bail!(
            "-b/--minbytes ({}) is smaller than one {} element ({} bytes)",
            a.min_bytes,
            a.dtype,
            a.dtype.size()
        );
    }
    if a.factor < 2 {
        bail!("-f/--stepfactor must be at least 2");
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.nranks == Some(0) {
        bail!("-n/--nranks must be at least 1");
    }
    a.op.check_dtype(a.dtype)?;
    if let (Some(shape), Some(n)) = (&a.hosts, a.nranks) {
        let sizes = host_shape(shape)?;
        if sizes.iter().sum::<u32>() != n {
            bail!(
                "--hosts {shape} places {} ranks but -n is {n}",
                sizes.iter().sum::<u32>()
            );
        }
    }
    acspeed_algorithms::Algorithm::from_name(&a.algo)
        .map(|_| ())
        .or_else(|e| if a.algo == "auto" { Ok(()) } else { Err(e) })?;
    Ok(())
}

fn run(a: Args) -> Result<bool> {
    validate(&a)?;
    if let Some(n) = a.nranks {
        return spawn_local(&a, n);
    }
    let launch = LaunchEnv::from_env()?;
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    if a.algo != "auto" {
        vars.push(("ACSPEED_ALGO".into(), a.algo.clone()));
    }
    let cfg = Config::from_vars(&vars)?;
    let comm = acspeed::init(&launch, cfg).context("joining the job")?;
    let params = BenchParams {
        min_bytes: a.min_bytes,
        max_bytes: a.max_bytes,
        factor: a.factor,
        dtype: a.dtype,
        op: a.op,
        warmup: a.warmup,
        iters: a.iters,
        check: a.check,
        corrupt_rank: a.corrupt_rank,
        per_call: a.per_call,
    };
    let rows = run_sweep(&comm, &params)?;
    let wrong: u64 = rows.iter().map(|r| r.wrong).sum();
    if comm.rank() == 0 {
        if a.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            print!("{}", header(&comm, &a));
            print!("{}", format_table(&rows));
            for r in rows.iter().filter(|r| !r.calls_us.is_empty()) {
                let each: Vec<String> = r.calls_us.iter().map(|t| format!("{t:.1}")).collect();
                println!("# calls of {} B in order (us): {}", r.bytes, each.join(" "));
            }
            println!(
                "# Out of bounds values : {wrong} {}",
                if wrong == 0 { "OK" } else { "WRONG" }
            );
            let avg = rows.iter().map(|r| r.busbw_gbps).sum::<f64>() / rows.len().max(1) as f64;
            println!("# Avg bus bandwidth    : {avg:.3} GB/s");
        }
    }
    comm.barrier()?;
    Ok(wrong == 0)
}

fn header(comm: &acspeed::Communicator, a: &Args) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let peer = if comm.nranks() > 1 {
        comm.transport_name((comm.rank() + 1) % comm.nranks())
    } else {
        "none".into()
    };
    format!(
        "# acspeed-bench {}  date={}  ranks={} transport={} cores={} cpu={}\n# dtype={} op={} warmup={} iters={} check={}  time = median over iterations of the slowest rank; busbw = algbw * 2(n-1)/n\n",
        env!("CARGO_PKG_VERSION"),
        utc_now(),
        comm.nranks(),
        peer,
        cores,
        cpu,
        a.dtype,
        a.op,
        a.warmup,
        a.iters,
        a.check
    )
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn host_shape(s: &str) -> Result<Vec<u32>> {
    Ok(acspeed_tools::launch::host_shape("--hosts", s)?)
}

/// Starts `n` ranks of this binary on this host and waits for them.
fn spawn_local(a: &Args, n: u32) -> Result<bool> {
    // Children join the job instead of spawning: drop -n/--nranks and --hosts.
    let args = acspeed_tools::launch::child_args(&["-n", "--nranks", "--hosts"]);
    let hosts = a.hosts.as_deref().map(host_shape).transpose()?;
    Ok(acspeed_tools::launch::run_local(
        "acspeed-bench",
        &args,
        n,
        hosts.as_deref(),
        Duration::from_secs(a.time_limit),
    )?)
}
