#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs all of them.
# This is the README's test command; .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
stage() { printf '\n=== %s  (%ss)\n' "$1" "$SECONDS"; }
# Runs a test command, keeping its output for the final count.
run() { "$@" 2>&1 | tee -a "$LOG"; }

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "dependency direction"
bash scripts/check-deps.sh

stage "benchmarks compile and run once (criterion test mode)"
cargo test --release --benches -q

stage "rust tests (unit, property, matrix, multi-process)"
run cargo test --workspace --release

# One closing line for the whole run, summed over every test binary above.
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$LOG" | awk '{s += $1} END {print s + 0}')
echo
echo "all test stages done in ${SECONDS}s"
echo "acspeed: ${passed} passed, ${failed} failed"
