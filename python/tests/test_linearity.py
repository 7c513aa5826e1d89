"""python -m acspeed.linearity and acspeed.explain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch.distributed as dist

from conftest import free_port, run_ranks


def test_linearity_of_a_torch_model_under_ddp():
    out = subprocess.run(
        [sys.executable, "-m", "acspeed.linearity", "--workers", "2", "--model", "mlp:256", "--batch", "16", "--steps", "4",
         "--algo", "auto,ring,tree", "--link-gbps", "10", "--json"],
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
    # Communication is measured (union of acspeed's busy intervals inside each step), and the
    # hidden part of it is a fraction.
    assert r["comm_ms"] > 0, r
    assert 0.0 <= r["overlap_frac"] <= 1.0, r
    # Straggler split: each rank's exposed wait minus the smallest, which names the slowest.
    assert len(r["straggler_ms"]) == 2 and min(r["straggler_ms"]) == 0.0
    assert r["straggler_ms"][r["slowest_rank"]] == 0.0
    assert r["hosts"] == 1 and r["host_linearity"] is None
    # Each algorithm measured in turn (every rank switching at the same point), with its bus
    # bandwidth; the first is the one reported at the top level.
    assert [t["algo"] for t in r["algos"]] == ["auto", "ring", "tree"]
    assert all(t["busbw_gbps"] > 0 and t["step_ms"] > 0 for t in r["algos"]), r["algos"]
    assert r["linearity"] == r["algos"][0]["linearity"] and r["link_gbps"] == 10.0
    if r["recommendation"]:
        assert r["recommendation"] in r["verdict"]


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


def test_linearity_across_two_emulated_hosts():
    # torchrun's way: one process per rank; ACSPEED_HOST_ID makes ranks 0-1 and 2-3 two hosts.
    port = free_port()
    procs = []
    for r in range(4):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   ACSPEED_HOST_ID=f"h{r // 2}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "acspeed.linearity", "--model", "mlp:128", "--batch", "8", "--steps", "3", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    r = json.loads(outs[0][0])
    assert r["workers"] == 4 and r["hosts"] == 2, r
    # Within-host steps against the whole job's: positive, and a ratio of step times.
    assert 0.0 < r["host_linearity"] < 5.0, r
    assert [x["host"] for x in r["ranks"]] == ["h0", "h0", "h1", "h1"]
    assert all(o[0] == "" for o in outs[1:])


def test_transformers_models_build_from_their_default_config(tmp_path):
    # A stand-in for the transformers package with the two entry points the preset uses: the
    # real one is not installed here, so this checks our side (token ids in, logits out).
    pkg = tmp_path / "transformers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import types
        import torch.nn as nn

        class AutoConfig:
            @staticmethod
            def for_model(kind):
                assert kind == "tiny", kind
                return types.SimpleNamespace(vocab_size=50, num_labels=3, pad_token_id=None)

        class _Model(nn.Module):
            def __init__(self, cfg):
                super().__init__()
                assert cfg.pad_token_id == 0
                self.emb = nn.Embedding(cfg.vocab_size, 8)
                self.out = nn.Linear(8, cfg.num_labels)

            def forward(self, input_ids):
                assert input_ids.dtype.is_floating_point is False and input_ids.shape[1] == 12
                return types.SimpleNamespace(logits=self.out(self.emb(input_ids).mean(1)))

        class AutoModelForSequenceClassification:
            @staticmethod
            def from_config(cfg):
                return _Model(cfg)
    """))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run(
        [sys.executable, "-m", "acspeed.linearity", "--workers", "2", "--model", "transformers:tiny", "--input", "12",
         "--batch", "4", "--steps", "2", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["model"] == "transformers:tiny" and r["params"] == 50 * 8 + 8 * 3 + 3
