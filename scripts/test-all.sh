#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs all of them.
# This is the README's test command; .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
stage() { printf '\n=== %s  (%ss)\n' "$1" "$SECONDS"; }
# Runs a test command, keeping its output for the final count.
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "GPU code compiles and its no-GPU paths pass (feature cuda, driver loaded at run time)"
cargo clippy -p acspeed -p acspeed-python -p acspeed-tools --features cuda --all-targets -- -D warnings
run cargo test --release -p acspeed-tools --features cuda --test tests staging

stage "RDMA through libfabric (feature rdma, tcp;ofi_rxm provider on loopback)"
if ! pkg-config --exists libfabric 2>/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libfabric-dev pkg-config >/dev/null
fi
if pkg-config --exists libfabric 2>/dev/null || [[ -e /usr/include/rdma/fabric.h ]]; then
  cargo clippy -p acspeed -p acspeed-transports -p acspeed-tools --features acspeed/rdma --all-targets -- -D warnings
  FI_TCP_IFACE=lo run cargo test --release -p acspeed-tools --features rdma --test tests -- rdma counts_that_differ abort_reason
else
  echo "libfabric-dev is not installed and cannot be (not root?): RDMA stage skipped" | tee -a "$LOG"
fi

stage "dependency direction"
bash scripts/check-deps.sh

# Chart text (acspeed linearity --plot) needs a TrueType font; Debian ships it as fonts-dejavu-core.
if [[ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-dejavu-core >/dev/null
fi

stage "rust tests (unit, property, matrix, multi-process)"
run cargo test --workspace --release

stage "benchmarks compile and run once (criterion test mode)"
cargo test --release --benches -q

stage "simulator against measurement, small scale (benches/sim_validate.sh quick)"
# Shared memory only, 1-4 MiB, one run: proves the validation still runs end to end (results
# checked); the error figures in docs/PERFORMANCE.md come from the full script.
RUNS=1 SIZES=1M,4M bash benches/sim_validate.sh quick | tail -4

stage "device reduction kernels: PTX current, ptxas for sm_70/80/90, arithmetic on the host"
# NVRTC and ptxas from PyPI (pinned, cached under ~/.cache/acspeed/cuda-venv); no GPU needed.
run python3 scripts/cuda_kernels.py check

stage "GPU model against published NCCL figures (benches/sim_published.py --check)"
# Every published machine and size; fails on a miss beyond 15% that docs/GPU_MODEL.md does
# not explain, and on an explained miss that no longer misses.
run python3 benches/sim_published.py --check

stage "model check of the shared-memory ring (loom)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom run cargo test -p acspeed-transports --lib --release

stage "fuzz the parsers (cargo fuzz, corpus in fuzz/corpus)"
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked
for t in nvsmi_parse topo_json plan_json frame_decode env_vars; do
  # cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
  # New inputs go to a scratch directory; the committed corpus is only read.
  scratch="$(mktemp -d)"
  if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$scratch" "corpus/$t" -- -max_total_time="${FUZZ_SECONDS:-15}" >"$LOG.fuzz" 2>&1); then
    tail -n 30 "$LOG.fuzz"; echo "fuzz target $t found a crash (see fuzz/artifacts/$t)"; exit 1
  fi
  grep -E "^Done" "$LOG.fuzz" | sed "s/^/$t: /"
  rm -rf "$scratch"
done
rm -f "$LOG.fuzz"

stage "python package and PyTorch backend tests"
bash scripts/setup-python.sh
run .venv/bin/python -m pytest -q python/tests

stage "torch's own DistributedTest suite against acspeed (bounded subset; tests/torchsuite)"
# The 90 tests gloo passes are listed in tests/torchsuite/gloo_passes_w2.txt; CI runs the ones
# fixed in acspeed so far, bounded in time. Known failures that no Python backend can fix are
# listed in docs/TORCH.md (is_completed through PyWorkHolder, DDP logging's backend name).
BACKEND=acspeed WORLD_SIZE=2 DISTRIBUTED_TESTS_DEFAULT_TIMEOUT=120 \
  timeout 600 .venv/bin/python tests/torchsuite/run_dist_suite.py -k all_gather_coalesced -k test_all_reduce_sum \
  >"$LOG.torch" 2>&1 || { tail -n 40 "$LOG.torch"; echo "torch DistributedTest subset failed"; exit 1; }
torch_ran=$(grep -Eo '^Ran [0-9]+ tests' "$LOG.torch" | awk '{print $2}')
torch_skipped=$(grep -Eo 'skipped=[0-9]+' "$LOG.torch" | cut -d= -f2)
echo "torchsuite: $((torch_ran - ${torch_skipped:-0})) passed" | tee -a "$LOG"
rm -f "$LOG.torch"

stage "multi-host tests under netsim"
if [[ "$(id -u)" == 0 ]]; then
  run bash tests/netsim/run.sh
else
  echo "netsim tests need root (network namespaces); run as root to include them" | tee -a "$LOG"
fi

# One closing line for the whole run, summed over cargo, pytest and netsim.
cargo_passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG" | awk '{s += $4} END {print s + 0}')
cargo_failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$LOG" | awk '{s += $6} END {print s + 0}')
py_passed=$(grep -Eo '^[0-9]+ passed' "$LOG" | awk '{s += $1} END {print s + 0}')
net_passed=$(grep -Eo '^netsim: [0-9]+ passed' "$LOG" | awk '{s += $2} END {print s + 0}')
torch_passed=$(grep -Eo '^torchsuite: [0-9]+ passed' "$LOG" | awk '{s += $2} END {print s + 0}')
passed=$((cargo_passed + py_passed + net_passed + torch_passed))
echo
echo "all test stages done in ${SECONDS}s"
echo "acspeed: ${passed} passed, ${cargo_failed} failed"
