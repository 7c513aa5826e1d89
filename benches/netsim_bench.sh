#!/usr/bin/env bash
# Two emulated hosts (scripts/netsim.sh: 2 Gbit/s per host, 500 Mbit/s per TCP flow), one rank
# each. In one run: acspeed-bench with 1, 2, 4, 8 sockets per peer and the default, torch's
# gloo through benches/torch_allreduce.py, and the torch-level gloo vs acspeed comparison.
# Needs root and the Python environment (bash scripts/setup-python.sh). Prints markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
BENCH="$PWD/target/release/acspeed-bench"
PY="$PWD/.venv/bin/python"
SIZE="${SIZE:-64M}"
cargo build --release -q --bin acspeed-bench
trap 'bash "$NETSIM" down --kill >/dev/null 2>&1 || true' EXIT
bash "$NETSIM" down --kill >/dev/null 2>&1 || true
bash "$NETSIM" up 2 --rate 2gbit --flow-rate 500mbit --flow-slots 256 >/dev/null

. benches/netsim_lib.sh

link=0.25 # GB/s: 2 Gbit/s per host
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), netsim 2 hosts x 1 rank, --rate 2gbit --flow-rate 500mbit, allreduce float32 $SIZE"
echo
echo "| configuration | time ms | busbw GB/s | % of link (0.25 GB/s) |"
echo "|---|---:|---:|---:|"
for k in 1 2 4 8 auto; do
  row="$(netsim_pair env ACSPEED_NSTREAMS=$k "$BENCH" -b "$SIZE" -e "$SIZE" --iters 5 -w 1 --check --json)"
  python3 - "$k" "$row" "$link" <<'PY'
import json, sys
k, rows, link = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
r = rows[-1]
label = "acspeed, default streams (4)" if k == "auto" else f"acspeed, {k} stream(s)"
assert r["wrong"] == 0
print(f"| {label} | {r['time_us']/1e3:.1f} | {r['busbw_gbps']:.3f} | {r['busbw_gbps']/link:.0%} |")
PY
done
bytes=$(python3 -c "import sys; s='$SIZE'; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
g="$(netsim_pair "$PY" benches/torch_allreduce.py --backend gloo --min-bytes "$bytes" --max-bytes "$bytes" --iters 5)"
python3 - "$g" "$link" <<'PY'
import json, sys
d, link = json.loads(sys.argv[1].strip().splitlines()[-1]), float(sys.argv[2])
r = d["rows"][-1]
print(f"| torch gloo | {r['time_us']/1e3:.1f} | {r['busbw_gbps']:.3f} | {r['busbw_gbps']/link:.0%} |")
PY
echo
netsim_pair "$PY" benches/torch_compare.py --max-bytes "$bytes" --min-bytes 65536 --lat-iters 300 --ddp-steps 10 --label "netsim, 2 hosts"
