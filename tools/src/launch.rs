//! Local jobs: a binary starts N copies of itself as ranks of one job on this machine (the
//! `-n N` of `acspeed-bench` and `acspeed linearity`), waits for them with a time limit and
//! reports the first rank that failed.

use acspeed_core::{Error, Result};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `3,1,2` -> [3, 1, 2]; every host needs at least one rank.
pub fn host_shape(flag: &str, s: &str) -> Result<Vec<u32>> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid(format!("{flag} '{s}': expected rank counts like 3,1,2")))?;
    if v.is_empty() || v.contains(&0) {
        return Err(Error::invalid(format!(
            "{flag} '{s}': every host needs at least one rank"
        )));
    }
    Ok(v)
}

/// The command line without the flags that made this process the launcher (`strip`: flags
/// that take a value, in both `--flag v` and `--flag=v` forms; `-nN` too for `-n`).
pub fn child_args(strip: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let s = args[i].as_str();
        if strip.contains(&s) {
            args.drain(i..(i + 2).min(args.len()));
        } else if strip.iter().any(|f| {
            s.starts_with(&format!("{f}="))
                || (*f == "-n" && s.starts_with("-n") && s.len() > 2 && !s.starts_with("--"))
        }) {
            args.remove(i);
        } else {
            i += 1;
        }
    }
    args
}

/// Runs `n` copies of this binary with `args` as one job (torchrun's variables, rank 0 hosting
/// the store on loopback). `hosts` groups consecutive ranks into emulated hosts, each with its
/// own `ACSPEED_HOST_ID`. Returns whether every rank exited 0; exit status 1 of a rank is
/// reported as wrong results, anything else as a failure.
pub fn run_local(
    what: &str,
    args: &[String],
    n: u32,
    hosts: Option<&[u32]>,
    time_limit: Duration,
) -> Result<bool> {
    // The children read the same variables; reading them here through Config refuses a bad
    // value before anything starts.
    let cfg = acspeed_core::Config::from_env()?;
    let exe = std::env::current_exe().map_err(|e| Error::io(format!("locating {what}"), e))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("finding a free port for the local job", e))?
        .port();
    let host_of: Vec<usize> = match hosts {
        Some(shape) => shape
            .iter()
            .enumerate()
            .flat_map(|(h, m)| std::iter::repeat_n(h, *m as usize))
            .collect(),
        None => vec![0; n as usize],
    };
    let mut children: Vec<(u32, Child)> = Vec::new();
    for r in 0..n {
        let mut cmd = Command::new(&exe);
        if hosts.is_some() {
            cmd.env(
                "ACSPEED_HOST_ID",
                format!("local-host{}", host_of[r as usize]),
            );
        }
        // One core per rank when there are enough: forked together, the ranks start on the
        // launcher's core, and busy-polling ranks sharing a core pay a context switch per
        // step until the scheduler moves one (4 KiB allreduce: 17-23 us instead of 3-4 us
        // for the first tens of milliseconds, the whole of a short benchmark).
        // Only over shared memory: ranks on TCP have reader and writer threads that run
        // faster with the other cores free (64 MiB over loopback: 1.2-1.3 GB/s pinned, 1.4-1.6
        // not).
        let shm = hosts.is_none() && cfg.transport.shm;
        if let Some(cpu) = core_for(r, n).filter(|_| shm && cfg.transport.bind) {
            use std::os::unix::process::CommandExt;
            // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    // Best effort: a refusal (cgroup limits) leaves the scheduler in charge.
                    let _ =
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    Ok(())
                });
            }
        }
        let c = cmd
            .args(args)
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .map_err(|e| Error::io(format!("starting rank {r}"), e))?;
        children.push((r, c));
    }
    let deadline = Instant::now() + time_limit;
    let mut ok = true;
    let mut failed: Option<String> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i]
                .1
                .try_wait()
                .map_err(|e| Error::io("waiting for a rank", e))?
            {
                Some(st) => {
                    let (r, _) = children.remove(i);
                    if !st.success() {
                        ok = false;
                        failed.get_or_insert(if st.code() == Some(1) {
                            format!("rank {r} found wrong results")
                        } else {
                            format!("rank {r} failed ({st})")
                        });
                    }
                }
                None => i += 1,
            }
        }
        if Instant::now() > deadline {
            for (_, c) in &mut children {
                let _ = c.kill();
            }
            return Err(Error::invalid(format!(
                "time limit of {}s exceeded; killed ranks {:?}",
                time_limit.as_secs(),
                children.iter().map(|c| c.0).collect::<Vec<_>>()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(f) = failed {
        eprintln!("{what}: {f}");
    }
    Ok(ok)
}

/// The core local rank `r` of `n` runs on: the `r`-th of the cores this process may use, when
/// there is one per rank (else none: the scheduler shares them). `ACSPEED_BIND=0` is applied
/// by the caller.
pub(crate) fn core_for(r: u32, n: u32) -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for sched_getaffinity to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return None;
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE.
        .filter(|i| unsafe { libc::CPU_ISSET(*i, &set) })
        .collect();
    (n as usize <= allowed.len()).then(|| allowed[r as usize])
}
