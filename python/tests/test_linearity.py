"""python -m acspeed.linearity and acspeed.explain."""

from __future__ import annotations

import json
import subprocess
import sys

import torch.distributed as dist

from conftest import run_ranks


def test_linearity_of_a_torch_model_under_ddp():
    out = subprocess.run(
        [sys.executable, "-m", "acspeed.linearity", "--workers", "2", "--model", "mlp:256", "--batch", "16", "--steps", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for k in ("linearity", "workers", "throughput", "exposed_comm_frac", "overlap_frac", "algo", "verdict"):
        assert k in r, k
    assert r["workers"] == 2 and r["params"] > 0
    assert 0.0 < r["linearity"] < 2.0
    # The verdict comes from the same code as `acspeed linearity`.
    assert r["verdict"].startswith(("scales well", "communication-bound", "not communication-bound")), r["verdict"]
    assert "allreduce of" in r["algo"]


def test_linearity_rejects_bad_input():
    out = subprocess.run(
        [sys.executable, "-m", "acspeed.linearity", "--workers", "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "--workers" in out.stderr


def _explain(rank, world):
    import acspeed

    dist.init_process_group(backend="acspeed")
    try:
        return acspeed.explain(None, 1 << 20), acspeed.explain(None, 4096, "broadcast")
    finally:
        dist.destroy_process_group()


def test_explain_names_the_algorithm_and_why():
    res = run_ranks(_explain, 2, env={"ACSPEED_BROADCAST": "tree:0-64K"})
    for a, b in res:
        assert a.startswith("allreduce of 1048576 bytes on 2 ranks") and "ring" in a, a
        assert "tree" in b and "ACSPEED_BROADCAST range 0-64K" in b, b
