#!/usr/bin/env bash
# The runtime crate's module graph as cargo-modules sees it ("uses" edges between modules),
# one edge per line, to hold against the data flow in docs/ARCHITECTURE.md. Installs
# cargo-modules (0.27.0, the last for rustc 1.95) into ~/.cargo/bin if absent: about 10 minutes
# on 2 cores, so this is not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-modules >/dev/null || cargo install cargo-modules --version 0.27.0 --locked
cargo modules dependencies -p acspeed --lib --no-externs --no-sysroot --no-fns --no-types \
  --no-traits --no-owns 2>/dev/null |
  sed -n 's/^ *"\([^"]*\)" -> "\([^"]*\)" \[label="uses".*/\1 -> \2/p' |
  grep -v '^acspeed -> ' | sed 's/acspeed:://g' | sort -u
