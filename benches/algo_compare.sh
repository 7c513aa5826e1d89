#!/usr/bin/env bash
# Algorithms against ring in the same run (issue "Algorithms", item 8). Prints markdown.
#   A. netsim (scripts/netsim.sh: 2 Gbit/s per host, 500 Mbit/s per TCP flow): hybrid vs flat
#      ring with 2 hosts x 2 ranks and 3 uneven hosts (3+1+2). Needs root.
#   B. one host, 4 ranks over shared memory: double binary tree vs ring at 4 KiB-256 KiB.
#   C. (cpu_reduce) one host, 2 and 4 ranks over shared memory: CPU-Reduce vs ring, with torch's
#      gloo measured in the same run (../shared/bench/gloo_allreduce.py, .venv's python; GLOO=0
#      leaves it out).
#   D. (ntree) one host, 4 ranks over shared memory with a fake NVLink layout
#      (tests/fixtures/fake-nvlink-4gpu.txt): n-trees vs ring and the double binary tree.
# Every configuration runs RUNS times (alternating algorithms, so drift hits both); each cell is
# min / median / max over runs of acspeed-bench's per-run time (median of --iters iterations
# of the slowest rank). The ratio compares medians: ring time / algorithm time (> 1: faster).
#   RUNS=5 bash benches/algo_compare.sh [netsim|local|all|cpu_reduce|ntree]
set -euo pipefail
cd "$(dirname "$0")/.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
BENCH="$PWD/target/release/acspeed-bench"
RUNS="${RUNS:-5}"
WHAT="${1:-all}"
cargo build --release -q --bin acspeed-bench --bin acspeed
RAW="$(mktemp -d)"
trap 'bash "$NETSIM" down --kill >/dev/null 2>&1 || true; rm -rf "$RAW"' EXIT

. benches/netsim_lib.sh

# table TITLE FILE BASE ALGO...: FILE holds lines "algo run json".
table() {
  python3 - "$@" <<'PY'
import json, sys, statistics as st
title, path, base, algos = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t = {}  # (algo, bytes) -> [time_us]
bw = {}
for line in open(path):
    algo, _run, js = line.split(" ", 2)
    for r in json.loads(js):
        assert r["wrong"] == 0, r
        t.setdefault((algo, r["bytes"]), []).append(r["time_us"])
        bw.setdefault((algo, r["bytes"]), []).append(r["busbw_gbps"])
sizes = sorted({b for (_, b) in t})
def fmt(b):
    for u, s in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if b >= u: return f"{b // u} {s}"
    return f"{b} B"
print(f"**{title}**\n")
head = "| size | " + " | ".join(f"{a} time us (min/med/max)" for a in algos) + " | " + " | ".join(f"{a} busbw GB/s (med)" for a in algos) + " | " + " | ".join(f"{a} vs {base}" for a in algos if a != base) + " |"
print(head)
print("|" + "---|" * (1 + 2 * len(algos) + len(algos) - 1))
for b in sizes:
    cells = []
    for a in algos:
        v = sorted(t[(a, b)])
        cells.append(f"{v[0]:.0f} / {st.median(v):.0f} / {v[-1]:.0f}")
    for a in algos:
        cells.append(f"{st.median(bw[(a, b)]):.3f}")
    for a in algos:
        if a != base:
            cells.append(f"{st.median(t[(base, b)]) / st.median(t[(a, b)]):.2f}x")
    print(f"| {fmt(b)} | " + " | ".join(cells) + " |")
print()
PY
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), RUNS=$RUNS"
echo
if [[ "$WHAT" == all || "$WHAT" == netsim ]]; then
  bash "$NETSIM" down --kill >/dev/null 2>&1 || true
  bash "$NETSIM" up 3 --rate 2gbit --flow-rate 500mbit --flow-slots 256 >/dev/null
  for shape in 2,2 3,1,2; do
    f="$RAW/netsim-$shape"
    for ((i = 0; i < RUNS; i++)); do
      for algo in ring hybrid hybrid:tree hybrid:butterfly hybrid:ps cpu_reduce; do
        echo "$algo $i $(netsim_job "$shape" --algo "$algo" --json -b 1M -e 64M -f 4 --iters 3 -w 1 --check)" >>"$f"
      done
    done
    table "netsim, hosts $shape (2 Gbit/s per host, 500 Mbit/s per flow), allreduce f32" "$f" ring ring hybrid hybrid:tree hybrid:butterfly hybrid:ps cpu_reduce
  done
  bash "$NETSIM" down --kill >/dev/null 2>&1 || true
fi
if [[ "$WHAT" == all || "$WHAT" == local ]]; then
  f="$RAW/local"
  for ((i = 0; i < RUNS; i++)); do
    for algo in ring tree; do
      echo "$algo $i $(timeout 600 "$BENCH" -n 4 --algo "$algo" --json -b 4K -e 256K -f 4 --iters 50 -w 10 --check)" >>"$f"
    done
  done
  table "one host, 4 ranks, shared memory, allreduce f32" "$f" ring ring tree
fi
if [[ "$WHAT" == cpu_reduce ]]; then
  PY="${PYTHON:-$PWD/.venv/bin/python}"
  for n in 2 4; do
    f="$RAW/cpu-$n"
    for ((i = 0; i < RUNS; i++)); do
      for algo in ring cpu_reduce; do
        echo "$algo $i $(timeout 600 "$BENCH" -n "$n" --algo "$algo" --json -b 4K -e 256M -f 4 --iters 20 -w 5 --check)" >>"$f"
      done
      [[ "${GLOO:-1}" == 0 ]] && continue
      "$PY" ../shared/bench/gloo_allreduce.py -W "$n" --min-bytes 65536 --max-bytes 268435456 --iters 10 --json "$RAW/gloo.json" >/dev/null
      echo "gloo $i $(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps([dict(bytes=r["bytes"], time_us=r["time_us"], busbw_gbps=r["busbw_GBs"], wrong=0 if r.get("correct", True) else 1) for r in d["rows"]]))' "$RAW/gloo.json")" >>"$f"
    done
    if [[ "${GLOO:-1}" == 0 ]]; then
      table "one host, $n ranks, shared memory, allreduce f32: CPU-Reduce and ring" "$f" ring ring cpu_reduce
    else
      table "one host, $n ranks, shared memory, allreduce f32: CPU-Reduce, ring and torch gloo" "$f" ring ring cpu_reduce gloo
    fi
  done
fi
if [[ "$WHAT" == ntree ]]; then
  topo="$RAW/topo.json"
  "$PWD/target/release/acspeed" topo --nvidia-smi-topo tests/fixtures/fake-nvlink-4gpu.txt --dump "$topo" >/dev/null
  f="$RAW/ntree"
  for ((i = 0; i < RUNS; i++)); do
    for algo in ring tree ntree; do
      echo "$algo $i $(ACSPEED_TOPO_FILE="$topo" timeout 600 "$BENCH" -n 4 --algo "$algo" --json -b 1M -e 64M -f 4 --iters 10 -w 3 --check)" >>"$f"
    done
  done
  table "one host, 4 ranks, shared memory, fake NVLink layout (2 trees, 2 channels), allreduce f32" "$f" ring ring tree ntree
fi
