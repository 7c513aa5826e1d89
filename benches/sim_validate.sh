#!/usr/bin/env bash
# Simulator against measurement on this machine (issue "Simulator and selector", item 4).
# For each configuration: acspeed-bench measures every algorithm RUNS times (median of the
# per-run times), `acspeed simulate` predicts the same rows from a model of this machine
# measured once (--here: copy/reduce rates, cores, shared-memory stream and latency) and of
# the emulated network (netsim's rates; its message latency measured here with a 4-byte
# allreduce). Prints markdown: per row the error (predicted - measured) / measured, per
# configuration the median |error| at >= 1 MiB and whether the predicted order of the
# algorithms matches the measured one at each size.
#   RUNS=3 bash benches/sim_validate.sh [quick]     (quick: shared memory only, no netsim)
set -euo pipefail
cd "$(dirname "$0")/.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
BENCH="$PWD/target/release/acspeed-bench"
SIM="$PWD/target/release/acspeed"
RUNS="${RUNS:-3}"
SIZES="${SIZES:-1M,4M,16M,64M}"
cargo build --release -q --bin acspeed-bench --bin acspeed
RAW="$(mktemp -d)"
trap 'bash "$NETSIM" down --kill >/dev/null 2>&1 || true; rm -rf "$RAW"' EXIT
bmin=$(python3 -c "import sys; s='$SIZES'.split(',')[0]; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(s)")
bmax=$(python3 -c "print('$SIZES'.split(',')[-1])")

# The vCPU placement (one core's two threads, ~60-80 ns per cache-line round trip between
# CPU 0 and 1, or two cores, ~330-380 ns) sets shared-memory speed on these VMs
# (docs/PERFORMANCE.md, "Bimodal shared memory: the cause"). It is probed around the
# calibration and around each shared-memory configuration: a model measured in one placement
# describes a different machine from the other.
cargo build --release -q --example core_pingpong
probe() { "$PWD/target/release/examples/core_pingpong" 0 1 20000 | awk '{printf "%.0f", $2}'; }
place() { (($1 < 200)) && echo "one core" || echo "two cores"; }
cal_before=$(probe)
"$SIM" simulate --here --json --sizes 4K >"$RAW/host.json"
cal_after=$(probe)
echo "$cal_before/$cal_after ns before/after: $(place "$cal_before")/$(place "$cal_after")" >"$RAW/host.place"

. benches/netsim_lib.sh

# measure NAME SHAPE ALGOS: RUNS x every algorithm, one JSON line each into $RAW/NAME.meas
# (local shared memory when SHAPE has one host, else a job on the netsim hosts).
measure() {
  local name="$1" shape="$2" algos="$3"
  IFS=, read -ra hosts <<<"$shape"
  for ((i = 0; i < RUNS; i++)); do
    for algo in ${algos//,/ }; do
      local args=(--algo "$algo" --json -b "$bmin" -e "$bmax" -f 4 --iters 5 -w 1 --check)
      if ((${#hosts[@]} == 1)); then
        # Shared-memory runs are cheap and their first calls noisy on this VM (1 MiB tree
        # on 2 ranks: 58-67 us in 20-iteration runs, a 506 us median of 5 after 1 warm-up).
        args=(--algo "$algo" --json -b "$bmin" -e "$bmax" -f 4 --iters 20 -w 5 --check)
        echo "$algo $("$BENCH" -n "${hosts[0]}" "${args[@]}")" >>"$RAW/$name.meas"
      else
        echo "$algo $(netsim_job "$shape" "${args[@]}")" >>"$RAW/$name.meas"
      fi
    done
  done
}

# predict NAME SHAPE ALGOS SIM_ARGS...
predict() {
  local name="$1" shape="$2" algos="$3"; shift 3
  "$SIM" simulate --here --host-model "$RAW/host.json" --host-shape "$shape" --algo "$algos" \
    --sizes "$SIZES" --json "$@" >"$RAW/$name.pred"
}

report() {
  python3 - "$RAW" "$@" <<'PY'
import json, sys, statistics as st
raw, names = sys.argv[1], sys.argv[2:]
host = json.load(open(f"{raw}/host.json"))["host"]
print(f"Host model (--here; line round trip CPU 0-1 {open(f'{raw}/host.place').read().strip()}): {host['cores']:.0f} cores, copy {host['copy_gbps']:.1f} GB/s, reduce {host['reduce_gbps']:.1f} GB/s, "
      f"shm stream {host['shm_gbps']:.1f} GB/s (slots) / {host['shm_cma_gbps']:.1f} GB/s (large collectives), message {host['latency_us']:.1f} us, "
      f"CPU-Reduce {host.get('stage_gbps', 0):.1f} / {host.get('stage_stream_gbps', 0):.1f} GB/s (below / from 4 MiB)\n")
summary = []
for name in names:
    title = open(f"{raw}/{name}.title").read().strip()
    meas = {}
    for line in open(f"{raw}/{name}.meas"):
        algo, js = line.split(" ", 1)
        for r in json.loads(js):
            assert r["wrong"] == 0
            meas.setdefault((algo, r["bytes"]), []).append(r["time_us"])
    pred = {}
    for r in json.load(open(f"{raw}/{name}.pred"))["rows"]:
        a = "hybrid" if r["algo"] == "hybrid:ring" else r["algo"]
        pred[(a, r["bytes"])] = r["time_us"]
    algos = sorted({a for a, _ in meas})
    sizes = sorted({b for _, b in meas})
    print(f"**{title}**\n")
    print("| size | algo | measured us (median of runs) | predicted us | error |")
    print("|---|---|---:|---:|---:|")
    errs, agree = [], []
    for b in sizes:
        for a in algos:
            m = st.median(meas[(a, b)]); p = pred[(a, b)]
            e = (p - m) / m
            if b >= 1 << 20: errs.append(abs(e))
            print(f"| {b >> 20} MiB | {a} | {m:.0f} | {p:.0f} | {e:+.0%} |")
        mo = sorted(algos, key=lambda a: st.median(meas[(a, b)]))
        po = sorted(algos, key=lambda a: pred[(a, b)])
        # Sizes where the measured algorithms are more than 10% apart (more than runs of one
        # algorithm differ here): where the order is a fact, not noise.
        mt = [st.median(meas[(a, b)]) for a in mo]
        clear = all(y > 1.10 * x for x, y in zip(mt, mt[1:]))
        agree.append((mo == po, clear))
    med = st.median(errs) if errs else float("nan")
    ok = sum(a for a, _ in agree)
    cl = [a for a, c in agree if c]
    print(f"\nmedian |error| at >= 1 MiB: {med:.0%}; predicted order matches measured at {ok}/{len(agree)} sizes "
          f"({sum(cl)}/{len(cl)} where the measured times differ by more than 10%)\n")
    summary.append((title, med, ok, len(agree), sum(cl), len(cl)))
print("| configuration | median abs error (>= 1 MiB) | order agrees | ... where measured > 10% apart |")
print("|---|---:|---:|---:|")
for t, m, a, n, ca, cn in summary:
    print(f"| {t} | {m:.0%} | {a}/{n} | {ca}/{cn} |")
PY
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), RUNS=$RUNS"
echo
names=()
for n in 2 4; do
  before=$(probe)
  measure "shm$n" "$n" ring,tree,cpu_reduce
  after=$(probe)
  same="same placement as the calibration"
  for x in "$before" "$after" "$cal_before" "$cal_after"; do
    [[ "$(place "$x")" == "$(place "$before")" ]] || same="placement differs from the calibration's or changed"
  done
  place="line round trip CPU 0-1 ${before}/${after} ns before/after: $same"
  echo "shared memory, 1 host x $n ranks (calibration point at 2 ranks; $place)" >"$RAW/shm$n.title"
  [[ $n == 2 ]] || echo "shared memory, 1 host x $n ranks ($place)" >"$RAW/shm$n.title"
  predict "shm$n" "$n" ring,tree,cpu_reduce
  names+=("shm$n")
done
if [[ "${1:-}" != quick ]]; then
  for rate in "2gbit 500mbit 2 0.5" "1gbit 250mbit 1 0.25"; do
    read -r r f rg fg <<<"$rate"
    bash "$NETSIM" down --kill >/dev/null 2>&1 || true
    bash "$NETSIM" up 3 --rate "$r" --flow-rate "$f" --flow-slots 256 >/dev/null
    lat=$(netsim_job 1,1 --json -b 4 -e 4 --iters 200 -w 20 | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['time_us'] / 2)")
    shapes="1,1"
    [[ "$r" == 2gbit ]] && shapes="1,1 2,2 3,1,2"
    for shape in $shapes; do
      name="net-${r}-${shape//,/-}"
      algos=ring,hybrid
      [[ "$shape" == 1,1 ]] && algos=ring,tree
      hosts=$(awk -F, '{print NF}' <<<"$shape")
      echo "netsim $r (flow $f), hosts $shape (emulated hosts share this VM's cores; message latency $lat us measured)" >"$RAW/$name.title"
      measure "$name" "$shape" "$algos"
      predict "$name" "$shape" "$algos" --net-gbps "$rg" --flow-gbps "$fg" --streams 4 \
        --net-latency-us "$lat" --cores-per-host "$(python3 -c "print(2 / $hosts)")"
      names+=("$name")
    done
  done
fi
report "${names[@]}"
