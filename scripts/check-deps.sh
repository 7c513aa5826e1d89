#!/usr/bin/env bash
# The dependency direction is the architecture: core <- transports, core <- algorithms, and
# never transports <-> algorithms (nor core -> either). Fails if a forbidden edge appears.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { cargo tree -q -p "$1" -e normal --prefix none --offline 2>/dev/null || cargo tree -q -p "$1" -e normal --prefix none; }
check() { # crate forbidden...
  local crate="$1"; shift
  local tree; tree="$(deps "$crate")"
  for bad in "$@"; do
    if grep -q "^$bad v" <<<"$tree"; then
      echo "check-deps: FORBIDDEN: $crate depends on $bad" >&2; fail=1
    fi
  done
}
check acspeed-core acspeed-transports acspeed-algorithms acspeed
check acspeed-transports acspeed-algorithms acspeed
check acspeed-algorithms acspeed-transports acspeed
# The runtime a training job links (and the Python wheel) carries no tool: no CLI, chart or
# progress-bar crate, nothing of acspeed-tools, and no test double (acspeed-testkit is a
# dev-dependency only).
check acspeed acspeed-tools acspeed-testkit clap anyhow plotters indicatif
check acspeed-python acspeed-tools acspeed-testkit clap anyhow plotters indicatif
check acspeed-tools acspeed-testkit
if ((fail)); then exit 1; fi
echo "check-deps: ok (core <- transports, core <- algorithms, no transports <-> algorithms; the runtime and the wheel carry no tool and no test double)"
