#!/usr/bin/env bash
# Mid-size buckets across hosts (issue "Performance II", item 2): two emulated hosts
# (scripts/netsim.sh, 2 Gbit/s per host, 500 Mbit/s per TCP flow), one rank each. Each of RUNS
# rounds measures acspeed (acspeed-bench, default settings, --check) and torch's gloo
# (benches/torch_allreduce.py) at 256 KiB-64 MiB, alternating, so both see the same machine.
# Prints markdown: per size busbw min/median/max of both, the median as % of the link's
# payload rate, and the median ratio. Needs root and the Python env (scripts/setup-python.sh).
#   RUNS=5 bash benches/netsim_midsize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
BENCH="$PWD/target/release/acspeed-bench"
PY="$PWD/.venv/bin/python"
RUNS="${RUNS:-5}"
cargo build --release -q --bin acspeed-bench
RAW="$(mktemp -d)"
trap 'bash "$NETSIM" down --kill >/dev/null 2>&1 || true; rm -rf "$RAW"' EXIT
bash "$NETSIM" down --kill >/dev/null 2>&1 || true
bash "$NETSIM" up 2 --rate 2gbit --flow-rate 500mbit --flow-slots 256 >/dev/null

. benches/netsim_lib.sh

for ((i = 0; i < RUNS; i++)); do
  netsim_pair "$BENCH" -b 256K -e 64M -f 4 --iters 10 -w 3 --check --json >"$RAW/acs.$i"
  netsim_pair "$PY" benches/torch_allreduce.py --backend gloo --min-bytes 262144 --max-bytes 67108864 --iters 10 |
    tail -1 >"$RAW/gloo.$i"
done

python3 - "$RAW" "$RUNS" <<'PY'
import json, statistics as st, sys, datetime, os
raw, runs = sys.argv[1], int(sys.argv[2])
link = 2e9 / 8 / 1e9 * 1448 / 1514  # GB/s of TCP payload on a 2 Gbit/s Ethernet link
acs, gloo = {}, {}
for i in range(runs):
    for r in json.load(open(f"{raw}/acs.{i}")):
        assert r["wrong"] == 0, r
        acs.setdefault(r["bytes"], []).append(r["busbw_gbps"])
    for r in json.loads(open(f"{raw}/gloo.{i}").read())["rows"]:
        gloo.setdefault(r["bytes"], []).append(r["busbw_gbps"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} vCPU {cpu}, netsim 2 hosts x 1 rank, "
      f"--rate 2gbit --flow-rate 500mbit, allreduce f32, {runs} runs (each a median of 10 iterations)\n")
print(f"| size | acspeed busbw GB/s min / median / max | % of link ({link:.3f} GB/s payload) | gloo busbw min / median / max | acspeed / gloo (medians) |")
print("|---|---|---:|---|---:|")
fmt = lambda v: f"{min(v):.3f} / {st.median(v):.3f} / {max(v):.3f}"
for b in sorted(acs):
    a, g = acs[b], gloo.get(b, [float("nan")])
    size = f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"
    print(f"| {size} | {fmt(a)} | {st.median(a) / link:.0%} | {fmt(g)} | {st.median(a) / st.median(g):.2f}x |")
PY
