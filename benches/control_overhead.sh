#!/usr/bin/env bash
# What the control plane (heartbeats to rank 0, stall reports) costs the data path: 2 local
# ranks, allreduce of 4 KiB and 16 MiB, with it off (ACSPEED_STALL_WARN_SECS=0), at the default
# (60 s: a heartbeat every 5 s) and at its most frequent (0.2 s: every 50 ms), alternating,
# RUNS runs each. Prints the median time per size of each run (docs/CONTROL_PLANE.md).
#   RUNS=5 bash benches/control_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-5}"
BIN=target/release/acspeed-bench
[ -x "$BIN" ] || cargo build --release -q --bin acspeed-bench
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), 2 local ranks"
echo
echo "| run | ACSPEED_STALL_WARN_SECS | 4 KiB us | 16 MiB us |"
echo "|---|---|---:|---:|"
for ((i = 1; i <= RUNS; i++)); do
  for w in 0 60 0.2; do
    small=$(ACSPEED_STALL_WARN_SECS=$w "$BIN" -n 2 -b 4K -e 4K --iters 2000 --warmup 200 --json |
      python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[0]["time_us"])')
    big=$(ACSPEED_STALL_WARN_SECS=$w "$BIN" -n 2 -b 16M -e 16M --iters 20 --json |
      python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)[0]["time_us"])')
    echo "| $i | $w | $small | $big |"
  done
done
