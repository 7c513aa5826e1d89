//! Ranks of a local job as forked copies of this process: `acspeed simulate --here` measures
//! the shared-memory transport with two real ranks (two processes, as a job runs them; ranks
//! as threads of one process run several times faster and would mislead) without running any
//! binary. Each child joins the job through the runtime's own `init`, runs the benchmark
//! sweep and sends its rows back over a pipe.

use crate::bench::{run_sweep, BenchParams};
use acspeed_core::{Config, Error, LaunchEnv, Result};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Runs the benchmark sweep `p` on `n` local ranks, each a forked child of this process
/// bound to a core of its own where there are enough (as the launcher binds them), and
/// returns rank 0's rows as JSON. A rank that fails is named; ranks still running after
/// `limit` are killed and the error says so.
pub fn sweep_on_forked_ranks(
    n: u32,
    cfg: &Config,
    p: &BenchParams,
    limit: Duration,
) -> Result<Vec<serde_json::Value>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("finding a free port for the local ranks", e))?
        .port();
    let mut kids: Vec<(u32, libc::pid_t, std::fs::File)> = Vec::new();
    let kill_all = |kids: &[(u32, libc::pid_t, std::fs::File)]| {
        for (_, pid, _) in kids {
            // SAFETY: plain syscalls on our own children.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), 0);
            }
        }
    };
    for r in 0..n {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            kill_all(&kids);
            return Err(Error::io(
                "opening a pipe to a local rank",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the child only runs `rank_main` and leaves with `_exit`, never returning
        // into the parent's stack frames.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            kill_all(&kids);
            return Err(Error::io(
                format!("starting local rank {r}"),
                std::io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            // SAFETY: the read end is the parent's; the write end is ours alone, owned once.
            let out = unsafe {
                libc::close(fds[0]);
                std::fs::File::from_raw_fd(fds[1])
            };
            let code = rank_main(r, n, port, cfg, p, out);
            // SAFETY: leaves the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: the write end is the child's; the read end is ours alone, owned once.
        let pipe = unsafe {
            libc::close(fds[1]);
            std::fs::File::from_raw_fd(fds[0])
        };
        kids.push((r, pid, pipe));
    }
    let deadline = Instant::now() + limit;
    let mut status = vec![None; kids.len()];
    while status.iter().any(Option::is_none) {
        for (i, (_, pid, _)) in kids.iter().enumerate() {
            if status[i].is_some() {
                continue;
            }
            let mut st = 0;
            // SAFETY: waits for our own child without blocking.
            if unsafe { libc::waitpid(*pid, &mut st, libc::WNOHANG) } == *pid {
                status[i] = Some(st);
            }
        }
        if Instant::now() >= deadline {
            let late: Vec<String> = kids
                .iter()
                .zip(&status)
                .filter(|(_, s)| s.is_none())
                .map(|((r, ..), _)| r.to_string())
                .collect();
            kill_all(&kids);
            return Err(Error::invalid(format!(
                "local ranks {} did not finish within {:?}",
                late.join(", "),
                limit
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rows = None;
    for ((r, _, mut pipe), st) in kids.into_iter().zip(status) {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let sent: std::result::Result<Vec<serde_json::Value>, String> = serde_json::from_str(&text)
            .unwrap_or_else(|_| {
                Err(format!(
                    "sent nothing readable (wait status {})",
                    st.unwrap_or(-1)
                ))
            });
        match sent {
            Ok(v) if r == 0 => rows = Some(v),
            Ok(_) => {}
            Err(e) => return Err(Error::Remote { rank: r, detail: e }),
        }
    }
    rows.ok_or_else(|| Error::invalid("local rank 0 sent no rows"))
}

/// One forked rank: bind, join, sweep, send the rows (or the error) to the parent.
fn rank_main(
    r: u32,
    n: u32,
    port: u16,
    cfg: &Config,
    p: &BenchParams,
    mut out: std::fs::File,
) -> i32 {
    if cfg.transport.shm && cfg.transport.bind {
        if let Some(cpu) = crate::launch::core_for(r, n) {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; best effort, as the launcher.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
    let launch = LaunchEnv {
        rank: r,
        world_size: n,
        local_rank: r,
        local_world_size: n,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    };
    let sent: std::result::Result<Vec<serde_json::Value>, String> =
        acspeed::init(&launch, cfg.clone())
            .and_then(|comm| run_sweep(&comm, p))
            .map(|rows| {
                rows.iter()
                    .map(|row| serde_json::to_value(row).unwrap_or_default())
                    .collect()
            })
            .map_err(|e| e.to_string());
    let ok = sent.is_ok();
    let _ = out.write_all(serde_json::to_string(&sent).unwrap_or_default().as_bytes());
    if ok {
        0
    } else {
        1
    }
}
