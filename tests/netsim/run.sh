#!/usr/bin/env bash
# Multi-host tests over emulated hosts (scripts/netsim.sh: network namespaces, a 2 Gbit/s
# link per host and a 500 Mbit/s cap per TCP flow). Needs root. Every run is bounded in time.
#   1. allreduce across 2 hosts, results checked, default transport settings
#   2. the same with 1 and 8 sockets per peer (striping under the per-flow cap)
#   3. 4 ranks on 2 hosts: shared memory inside a host, TCP between hosts, checked
#   4. hybrid and tree plans across hosts: 2 hosts x 2 ranks and 3 uneven hosts (3+1+2), checked
#   5. linearity across 2 hosts: communication-bound with tiny compute, scales with long compute
#   6. a host whose link is cut mid-collective: the other rank fails with a timeout naming it
#   7. a slow host (its link at 100 Mbit/s): results still right, the stall report names the
#      slow link and the timeline shows who waited on whom
set -euo pipefail
cd "$(dirname "$0")/../.."
NETSIM="${NETSIM:-$PWD/scripts/netsim.sh}"
BENCH="$PWD/target/release/acspeed-bench"
[[ -x "$NETSIM" || -f "$NETSIM" ]] || { echo "netsim: $NETSIM not found" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "netsim tests need root" >&2; exit 1; }
ACSPEED="$PWD/target/release/acspeed"
cargo build --release -q --bin acspeed-bench --bin acspeed

OUT="$(mktemp -d)"
cleanup() { bash "$NETSIM" down --kill >/dev/null 2>&1 || true; rm -rf "$OUT"; }
trap cleanup EXIT
pass=0; fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }

bash "$NETSIM" down --kill >/dev/null 2>&1 || true
bash "$NETSIM" up 3 --rate 2gbit --flow-rate 500mbit --flow-slots 256 >/dev/null

# run_job NAME SHAPE ENV... -- BENCH_ARGS...: SHAPE is ranks per host, a single number k for
# 2 hosts of k ranks or a list like 3,1,2; ranks are numbered host by host.
run_job() {
  local name="$1" shape="$2"; shift 2
  local envs=() pids=() rc=0
  while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
  shift
  [[ "$shape" == *,* ]] || shape="$shape,$shape"
  local sizes world=0 port=$((29600 + RANDOM % 300)) r=0
  IFS=, read -ra sizes <<<"$shape"
  for k in "${sizes[@]}"; do world=$((world + k)); done
  for h in "${!sizes[@]}"; do
    local k=${sizes[$h]}
    for ((l = 0; l < k; l++)); do
      bash "$NETSIM" exec "$h" env RANK=$r WORLD_SIZE=$world LOCAL_RANK=$l LOCAL_WORLD_SIZE=$k \
        MASTER_ADDR=198.18.0.1 MASTER_PORT=$port ACSPEED_TIMEOUT_SECS=20 "${envs[@]}" \
        timeout 120 "${BIN:-$BENCH}" "$@" >"$OUT/$name.$r.out" 2>"$OUT/$name.$r.err" &
      pids+=($!)
      r=$((r + 1))
    done
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

check_job() {
  local name="$1"; shift
  if run_job "$name" "$@" && grep -q "Out of bounds values : 0 OK" "$OUT/$name.0.out"; then
    ok "$name"; grep -E '^ +[0-9]' "$OUT/$name.0.out" | tail -2 | sed 's/^/    /'
  else
    bad "$name"; tail -n 5 "$OUT/$name".*.err "$OUT/$name.0.out" 2>/dev/null | sed 's/^/    /'
  fi
}

check_job two-hosts-default 1 ACSPEED_DEBUG=INFO -- -b 4K -e 16M -f 8 --check --iters 3 -w 1
if grep -q "1:tcp/4" "$OUT/two-hosts-default.0.err"; then ok "default-uses-4-streams-across-hosts"; else bad "default-uses-4-streams-across-hosts"; grep INFO "$OUT/two-hosts-default.0.err" | head -3; fi
check_job one-stream 1 ACSPEED_NSTREAMS=1 -- -b 1M -e 8M -f 8 --check --iters 2 -w 1
check_job eight-streams 1 ACSPEED_NSTREAMS=8 -- -b 1M -e 8M -f 8 --check --iters 2 -w 1 -d bf16
check_job hybrid-2x2 2 ACSPEED_DEBUG=INFO -- -b 4K -e 8M -f 16 --check --iters 2 -w 1
if grep -q "1:shm" "$OUT/hybrid-2x2.0.err" && grep -q "2:tcp" "$OUT/hybrid-2x2.0.err"; then ok "hybrid-picks-shm-inside-tcp-across"; else bad "hybrid-picks-shm-inside-tcp-across"; grep INFO "$OUT/hybrid-2x2.0.err" | head -3; fi

# The algorithm layer across real (emulated) hosts: every plan checked element by element.
check_job hybrid-2x2-forced 2 -- -b 4K -e 16M -f 64 --check --iters 2 -w 1 --algo hybrid
check_job hybrid-uneven-3+1+2 3,1,2 -- -b 4K -e 16M -f 64 --check --iters 2 -w 1 --algo hybrid
check_job hybrid-tree-uneven-3+1+2 3,1,2 -- -b 4K -e 4M -f 32 --check --iters 2 -w 1 --algo hybrid:tree
check_job tree-uneven-3+1+2 3,1,2 -- -b 4K -e 1M -f 16 --check --iters 2 -w 1 --algo tree
check_job butterfly-uneven-3+1+2 3,1,2 -- -b 4K -e 4M -f 32 --check --iters 2 -w 1 --algo hybrid:butterfly
check_job ps-uneven-3+1+2 3,1,2 -- -b 4K -e 4M -f 32 --check --iters 2 -w 1 --algo hybrid:ps
check_job cpu-reduce-uneven-3+1+2 3,1,2 -- -b 4K -e 4M -f 32 --check --iters 2 -w 1 --algo cpu_reduce
# n-trees across hosts: each host's two ranks on GPUs joined by NV2 (a fake layout), trees
# joined across the network at their roots.
"$PWD/target/release/acspeed" topo --nvidia-smi-topo tests/fixtures/fake-nvlink-4gpu.txt --dump "$OUT/fake4.json" >/dev/null
check_job ntree-2x2 2 ACSPEED_TOPO_FILE="$OUT/fake4.json" -- -b 4K -e 4M -f 32 --check --iters 2 -w 1 --algo ntree
# (Hosts of different sizes: ring below 16 MiB, hybrid from there, in 2 overlapping rounds at
# 16 MiB; the forced hybrid jobs above run 4 rounds at 16 MiB on 2 x 2 and 2 on 3+1+2.)
check_job auto-uneven-3+1+2 3,1,2 ACSPEED_DEBUG=INFO -- -b 4K -e 16M -f 64 --check --iters 2 -w 1
if grep -q "ring to 8M; hybrid beyond" "$OUT/auto-uneven-3+1+2.0.err" &&
  grep -Eq "^ +16777216 .* hybrid " "$OUT/auto-uneven-3+1+2.0.out" &&
  grep -Eq "^ +262144 .* ring " "$OUT/auto-uneven-3+1+2.0.out"; then
  ok "auto-picks-hybrid-across-uneven-hosts"
else
  bad "auto-picks-hybrid-across-uneven-hosts"; grep "algorithm table" "$OUT/auto-uneven-3+1+2.0.err" | head -2
fi

# Linearity across hosts: the verdict must follow the compute-to-communication ratio.
lin_check() {
  local name="$1" want="$2"; shift 2
  if BIN="$ACSPEED" run_job "$name" 1 -- linearity --workers 2 --json "$@" &&
    python3 -c "import json,sys; v=json.load(open(sys.argv[1])); sys.exit(0 if v['verdict'].startswith(sys.argv[2]) and v['host_linearity'] is not None else 1)" "$OUT/$name.0.out" "$want"; then
    ok "$name"; python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print('    linearity %.2f (across hosts %.2f): %s' % (v['linearity'], v['host_linearity'], v['verdict']))" "$OUT/$name.0.out"
  else
    bad "$name"; tail -n 3 "$OUT/$name".*.err "$OUT/$name.0.out" 2>/dev/null | sed 's/^/    /'
  fi
}
lin_check linearity-comm-bound communication-bound --params 16000000 --compute-ms 1 --steps 3 --algo ring
lin_check linearity-compute-bound "scales well" --params 1000000 --compute-ms 300 --bucket-mb 1 --steps 3 --algo ring

# Slow host (chaos): host 2's whole egress drops to 100 Mbit/s. The ring's link 2 -> 0 is the
# bottleneck: results must stay right, the coordinator's report must name that link (its
# sender and receiver both wait on it), and rank 0's timeline must show it waited on rank 2.
ip netns exec acs-h2 tc class change dev eth0 parent 1: classid 1:1 htb rate 100mbit ceil 100mbit burst 250000 cburst 250000
check_job slow-host 1,1,1 ACSPEED_STALL_WARN_SECS=0.5 ACSPEED_TIMELINE="$OUT/slow.json" -- -b 16M -e 16M --check --iters 2 -w 0 --algo ring
ip netns exec acs-h2 tc class change dev eth0 parent 1: classid 1:1 htb rate 2gbit ceil 2gbit burst 250000 cburst 250000
if grep -q "slow link(s), their sender and receiver both waiting on them most: rank 2 -> rank 0" "$OUT/slow-host.0.err"; then
  ok "slow-host-link-named"; grep -m1 "slow link" "$OUT/slow-host.0.err" | cut -c1-300 | sed 's/^/    /'
else
  bad "slow-host-link-named"; grep -m2 "stall" "$OUT/slow-host.0.err" | sed 's/^/    /'
fi
if python3 - "$OUT/slow-r0.json" <<'PY'
import json, sys
w = {}
for e in json.load(open(sys.argv[1])):
    if e.get("name") == "allreduce":
        for p in e["args"]["peers"]:
            w[p["rank"]] = w.get(p["rank"], 0) + p["wait_ms"]
print("    rank 0 waited (ms) per peer:", {k: round(v) for k, v in w.items()})
sys.exit(0 if w.get(2, 0) > 10 * max(w.get(1, 0), 1) else 1)
PY
then ok "slow-host-timeline-shows-the-wait"; else bad "slow-host-timeline-shows-the-wait"; fi

# Link cut: a long sweep, then host 1 loses its link. Rank 0 must fail within the timeout
# (5 s) plus slack, naming rank 1.
start=$SECONDS
( sleep 3; ip netns exec acs-h1 ip link set eth0 down ) &
cutter=$!
if run_job link-cut 1 ACSPEED_TIMEOUT_SECS=5 -- -b 64M -e 64M --iters 200 -w 0; then
  bad "link-cut (job succeeded?)"
else
  took=$((SECONDS - start))
  if grep -q "rank 1" "$OUT/link-cut.0.err" && grep -qi "timed out" "$OUT/link-cut.0.err" && ((took < 60)); then
    ok "link-cut-names-rank-1 (${took}s)"; grep -m1 "rank 1" "$OUT/link-cut.0.err" | cut -c1-220 | sed 's/^/    /'
  else
    bad "link-cut-names-rank-1 (${took}s)"; tail -n 3 "$OUT/link-cut.0.err" | sed 's/^/    /'
  fi
fi
wait "$cutter" || true

echo "netsim: $pass passed, $fail failed"
((fail == 0))
