# Sourced by the benchmark scripts that run jobs on emulated hosts (scripts/netsim.sh).
# Needs NETSIM, BENCH and RAW (a scratch directory) set by the caller.

# netsim_job SHAPE ARGS...: runs "$BENCH" ARGS... as one job on emulated hosts of the given
# sizes (e.g. 3,1,2; ranks numbered host by host, rank 0's host serves the store) and prints
# rank 0's stdout. Fails, printing every rank's stderr, when any rank fails.
netsim_job() {
  local shape="$1"; shift
  local sizes world=0 port=$((31000 + RANDOM % 3000)) r=0 pids=()
  IFS=, read -ra sizes <<<"$shape"
  for k in "${sizes[@]}"; do world=$((world + k)); done
  for h in "${!sizes[@]}"; do
    for ((l = 0; l < sizes[h]; l++)); do
      bash "$NETSIM" exec "$h" env RANK=$r WORLD_SIZE=$world LOCAL_RANK=$l LOCAL_WORLD_SIZE=${sizes[$h]} \
        MASTER_ADDR=198.18.0.1 MASTER_PORT=$port ACSPEED_TIMEOUT_SECS=60 \
        timeout 600 "$BENCH" "$@" >"$RAW/job.$r" 2>"$RAW/job.$r.err" &
      pids+=($!)
      r=$((r + 1))
    done
  done
  for p in "${pids[@]}"; do wait "$p" || { cat "$RAW"/job.*.err >&2; return 1; }; done
  cat "$RAW/job.0"
}

# netsim_pair CMD...: runs CMD on hosts 0 and 1 as ranks 0 and 1 of a 2-rank job (torch's
# launch variables, gloo on eth0, one thread each) and prints rank 0's stdout. Needs only NETSIM.
netsim_pair() {
  local port=$((30000 + RANDOM % 2000)) out
  out="$(mktemp)"
  local env=(RANK=0 WORLD_SIZE=2 MASTER_ADDR=198.18.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1
    GLOO_SOCKET_IFNAME=eth0 ACSPEED_TIMEOUT_SECS=60)
  bash "$NETSIM" exec 1 env "${env[@]}" RANK=1 timeout 600 "$@" >/dev/null &
  local p1=$!
  bash "$NETSIM" exec 0 env "${env[@]}" timeout 600 "$@" >"$out"
  wait $p1
  cat "$out"; rm -f "$out"
}
