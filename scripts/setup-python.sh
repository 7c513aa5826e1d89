#!/usr/bin/env bash
# Creates .venv with torch, maturin and pytest, and installs the acspeed package into it
# (`pip install ./python`). Idempotent; re-installs the package every time (it is fast when the
# Rust build is cached).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
export PATH="$PWD/.venv/bin:$PATH"
if ! .venv/bin/python -c "import torch, maturin, pytest, numpy, expecttest" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r python/requirements-dev.txt
fi
# --no-build-isolation: build with the maturin in .venv instead of fetching one per install.
.venv/bin/pip install -q --no-build-isolation --force-reinstall --no-deps ./python
.venv/bin/python -c "import acspeed, torch; print('acspeed', acspeed.__version__, 'with torch', torch.__version__)"
