//! Round trip of one cache line between two CPUs: the price of every hand-off in a
//! shared-memory ring (counters, slots). On the project's 2-vCPU VMs it switches between about
//! 70 ns and about 350 ns every few seconds, as the hypervisor moves the vCPUs between host
//! cores that do or do not share a cache, and acspeed's shared-memory speed switches with it
//! (docs/PERFORMANCE.md, "Bimodal shared memory: the cause"). benches/shm_series.py prints it
//! beside every run.
//!
//!     cargo run --release --example core_pingpong [-- CPU_A CPU_B ROUND_TRIPS]
//!
//! Prints one line: `round_trip_ns <median of 5 rounds>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[repr(align(64))]
struct Line(AtomicU64);

fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call reads it only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("core_pingpong: {a:?} is not a number (usage: CPU_A CPU_B ROUND_TRIPS)");
                std::process::exit(2)
            })
        })
        .collect();
    let (a, b) = (
        args.first().copied().unwrap_or(0),
        args.get(1).copied().unwrap_or(1),
    );
    let n = args.get(2).copied().unwrap_or(100_000) as u64;
    let line = Line(AtomicU64::new(0));
    let mut rounds = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            if !pin(b) {
                eprintln!("core_pingpong: cannot run on CPU {b}");
                std::process::exit(1);
            }
            // Answer every odd value v with v + 1, for 5 rounds of n round trips.
            for i in 0..5 * n {
                while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.0.store(2 * i + 2, Ordering::Release);
            }
        });
        if !pin(a) {
            eprintln!("core_pingpong: cannot run on CPU {a}");
            std::process::exit(1);
        }
        for r in 0..5 {
            let t0 = Instant::now();
            for i in r * n..(r + 1) * n {
                line.0.store(2 * i + 1, Ordering::Release);
                while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
            }
            rounds.push(t0.elapsed().as_nanos() as f64 / n as f64);
        }
    });
    rounds.sort_by(f64::total_cmp);
    println!("round_trip_ns {:.1}", rounds[2]);
}
