"""DDP (and FSDP / DTensor on CPU) with backend="acspeed" against gloo, same processes."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from conftest import run_ranks


class Net(nn.Module):
    def __init__(self, unused=False):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(32, 64)
        self.b = nn.Linear(64, 64)
        self.c = nn.Linear(64, 8)
        self.unused = nn.Linear(8, 8) if unused else None

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _train(group, rank, steps, unused=False, hook=None, **ddp_kw):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(Net(unused), process_group=group, **ddp_kw)
    if hook is not None:
        model.register_comm_hook(None, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1234 + rank)
    for _ in range(steps):
        x = torch.randn(16, 32, generator=g)
        y = torch.randn(16, 8, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


VARIANTS = {
    "default": {},
    "bucket_view": {"gradient_as_bucket_view": True},
    "static_graph": {"static_graph": True},
    "unused": {"find_unused_parameters": True, "unused": True},
    "tiny_buckets": {"bucket_cap_mb": 0.001},
    "fp16_hook": {"hook": "fp16"},
    "bf16_hook": {"hook": "bf16"},
}


def _ddp_vs_gloo(rank, world, steps):
    import acspeed  # noqa: F401
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=60))
    gloo = dist.new_group(backend="gloo")
    diffs = {}
    for name, kw in VARIANTS.items():
        kw = dict(kw)
        hook = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}.get(kw.pop("hook", None))
        unused = kw.pop("unused", False)
        ours = _train(None, rank, steps, unused, hook, **kw)
        ref = _train(gloo, rank, steps, unused, hook, **kw)
        diffs[name] = max((a - b).abs().max().item() for a, b in zip(ours, ref))
        # every rank ends with the same parameters
        flat = torch.cat([p.reshape(-1) for p in ours])
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        assert torch.equal(lo, hi), f"{name}: ranks diverged"
    dist.destroy_process_group()
    return diffs


def test_ddp_matches_gloo_exactly_with_two_ranks():
    for diffs in run_ranks(_ddp_vs_gloo, 2, 4):
        assert all(d == 0.0 for d in diffs.values()), diffs


def test_ddp_matches_gloo_with_three_ranks():
    # Three-way float sums may associate differently from gloo's; they agree to rounding.
    for diffs in run_ranks(_ddp_vs_gloo, 3, 3):
        assert all(d < 1e-6 for d in diffs.values()), diffs


def _dtensor(rank, world):
    import acspeed  # noqa: F401
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=60))
    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(world * 6, dtype=torch.float32).reshape(world * 2, 3)
    dt = distribute_tensor(full, mesh, [Shard(0)])
    rep = dt.redistribute(mesh, [Replicate()]).to_local()
    assert torch.equal(rep, full)
    s = (dt * 2).sum().full_tensor().item()  # partial -> all_reduce
    dist.destroy_process_group()
    return s


def test_dtensor_on_device_mesh():
    out = run_ranks(_dtensor, 2)
    assert out == [2 * sum(range(12))] * 2


def _fsdp(rank, world, backend):
    import acspeed  # noqa: F401
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
    model = Net()
    for m in (model.a, model.b, model.c):
        fully_shard(m)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(99 + rank)
    for _ in range(3):
        x, y = torch.randn(8, 32, generator=g), torch.randn(8, 8, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    params = [p.full_tensor().detach().reshape(-1).tolist() for p in model.parameters()]
    dist.destroy_process_group()
    return params


def test_fsdp2_matches_gloo():
    ours = run_ranks(_fsdp, 2, "acspeed")
    ref = run_ranks(_fsdp, 2, "gloo")
    for a, b in zip(ours[0], ref[0]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)


def _ddp_with_timeline(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=60))
    _train(None, rank, 3, bucket_cap_mb=0.01)
    dist.destroy_process_group()
    return True


def test_ddp_timeline_is_a_valid_chrome_trace(tmp_path):
    """ACSPEED_TIMELINE on a DDP run: one file per rank in the trace-event format that
    Perfetto and chrome://tracing load (a JSON array of events; complete events "X" with
    name, pid, tid, ts and dur in microseconds; metadata events "M")."""
    import json

    path = tmp_path / "ddp.json"
    run_ranks(_ddp_with_timeline, 2, env={"ACSPEED_TIMELINE": str(path)})
    seqs = []
    for r in range(2):
        events = json.loads((tmp_path / f"ddp-r{r}.json").read_text())  # strict JSON
        assert isinstance(events, list) and events
        for e in events:
            assert e["ph"] in ("X", "M", "i", "C"), e
            assert isinstance(e["name"], str) and e["pid"] == r and isinstance(e["tid"], int), e
            if e["ph"] == "X":
                assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0, e
        assert any(e["ph"] == "M" and e["name"] == "process_name" for e in events)
        calls = [e for e in events if e["ph"] == "X" and e["name"] in ("allreduce", "broadcast")]
        # DDP broadcasts the parameters at construction, then allreduces at least one bucket
        # per step (its first step uses one large bucket, later steps the rebuilt small ones).
        assert sum(e["name"] == "allreduce" for e in calls) >= 3 + 1, [e["name"] for e in calls]
        assert any(e["name"] == "broadcast" for e in calls)
        for e in calls:
            a = e["args"]
            assert a["bytes"] > 0 and a["algo"] and [p["rank"] for p in a["peers"]] == [1 - r], e
        seqs.append(sorted(e["args"]["seq"] for e in calls))
    assert seqs[0] == seqs[1], "both ranks record the same collectives"
