#!/usr/bin/env bash
# DDP training across two emulated hosts (issue "Performance II", item 3): samples/s of torch
# DDP with gloo and with acspeed, in the same processes, backends alternating, RUNS runs; an
# MLP (1.3M parameters, one 25 MiB bucket) and a conv net (1.6M parameters in 1 MiB buckets,
# so buckets are reduced while backward continues). Needs root and the Python environment.
#   RUNS=3 STEPS=10 bash benches/netsim_ddp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
PY="$PWD/.venv/bin/python"
RUNS="${RUNS:-3}"
STEPS="${STEPS:-10}"
trap 'bash "$NETSIM" down --kill >/dev/null 2>&1 || true' EXIT
bash "$NETSIM" down --kill >/dev/null 2>&1 || true
bash "$NETSIM" up 2 --rate 2gbit --flow-rate 500mbit --flow-slots 256 >/dev/null
. benches/netsim_lib.sh
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), netsim 2 hosts x 1 rank (--rate 2gbit --flow-rate 500mbit), $(nproc) vCPU, torch DDP, $STEPS steps per measurement"
echo
echo "| run | MLP gloo | MLP acspeed | x | conv gloo | conv acspeed | x |"
echo "|---|---:|---:|---:|---:|---:|---:|"
all=()
for ((i = 1; i <= RUNS; i++)); do
  line="$(netsim_pair "$PY" benches/torch_compare.py --ddp-only --ddp-steps "$STEPS" | tail -1)"
  all+=("$line")
  python3 - "$i" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {r['gloo_mlp']:.0f} | {r['acspeed_mlp']:.0f} | {r['acspeed_mlp'] / r['gloo_mlp']:.2f}x "
      f"| {r['gloo_conv']:.0f} | {r['acspeed_conv']:.0f} | {r['acspeed_conv'] / r['gloo_conv']:.2f}x |")
PY
done
python3 - "${all[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(a) for a in sys.argv[1:]]
for m in ("mlp", "conv"):
    x = sorted(r[f"acspeed_{m}"] / r[f"gloo_{m}"] for r in rows)
    print(f"\n{m}: acspeed / gloo samples/s min {x[0]:.2f}x, median {statistics.median(x):.2f}x, max {x[-1]:.2f}x", end="")
print()
PY
