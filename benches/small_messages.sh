#!/usr/bin/env bash
# Small-message latency through torch.distributed (issue "Performance II", item 4): 2 local
# ranks, allreduce of 4 KiB float32, gloo and acspeed alternating, RUNS runs of ITERS x 5 timed
# calls each (a barrier before every call; time = slowest rank). Prints min / median / p90 per
# run and backend, so the run-to-run spread is visible next to the within-run one.
#   RUNS=5 ITERS=400 bash benches/small_messages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
RUNS="${RUNS:-5}"
ITERS="${ITERS:-400}"
BYTES="${BYTES:-4096}"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), 2 local ranks, allreduce of $BYTES bytes f32, $((ITERS * 5)) timed calls per run"
echo
echo "| run | backend | min us | median us | p90 us |"
echo "|---|---|---:|---:|---:|"
for ((i = 1; i <= RUNS; i++)); do
  for b in gloo acspeed; do
    port=$((32000 + RANDOM % 2000))
    for r in 1 0; do
      RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
        timeout 300 "$PY" benches/torch_allreduce.py --backend "$b" --min-bytes "$BYTES" \
        --max-bytes "$BYTES" --iters "$ITERS" --warmup 50 >"/tmp/small.$r" 2>/dev/null &
    done
    wait
    python3 - "$i" "$b" <<'PY'
import json, sys
r = json.loads(open("/tmp/small.0").read().strip().splitlines()[-1])["rows"][0]
assert r["correct"], r
print(f"| {sys.argv[1]} | {sys.argv[2]} | {r['min_us']:.0f} | {r['time_us']:.0f} | {r['p90_us']:.0f} |")
PY
  done
done
