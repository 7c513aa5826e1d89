"""torchrun, with the backend found through the entry point (the script never imports acspeed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _torchrun(backend: str, nproc: int = 2) -> str:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        os.path.join(ROOT, "examples", "train_ddp.py"), "--backend", backend, "--steps", "6", "--hidden", "128",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_torchrun_entry_point_and_same_result_as_gloo():
    ours = _torchrun("acspeed")
    ref = _torchrun("gloo")
    cs = lambda out: re.search(r"checksum=(\S+)", out).group(1)  # noqa: E731
    assert "backend=acspeed" in ours
    assert cs(ours) == cs(ref), (ours, ref)
