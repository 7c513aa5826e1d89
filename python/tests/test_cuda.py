"""CUDA tensors through the acspeed backend (build with --features cuda, run on a GPU machine).

Skipped where torch sees no GPU or acspeed was built without the feature; CI machines have no
GPU, so these run on a lent GPU machine (docs/CUDA.md records what ran). Two ranks share one
GPU, which exercises the same device pipeline as one GPU per rank.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from conftest import run_ranks

try:
    import acspeed

    _BUILT = acspeed._acspeed.cuda_built()
except Exception:  # pragma: no cover - the package itself is tested elsewhere
    _BUILT = False

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and _BUILT), reason="needs a CUDA GPU and acspeed built with --features cuda"
)


def _backend_subclassable() -> bool:
    from torch._C._distributed_c10d import Backend

    class _Probe(Backend):
        pass

    try:
        _Probe(0, 1)
        return True
    except TypeError:
        return False


# torch <= 2.11 cannot run a Python c10d.Backend (acspeed raises a clear error there).
needs_backend = pytest.mark.skipif(not _backend_subclassable(), reason="torch <= 2.11: c10d.Backend has no Python constructor")


def _collectives(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed")
    dev = torch.device("cuda", 0)
    out = {}
    try:
        # all_reduce through the pipelined device path, sizes around the staging chunk.
        for n in (1, 1000, 1 << 20, (8 << 20) + 3):
            for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
                x = (torch.arange(n, device=dev) % 7 + rank).to(dt)
                dist.all_reduce(x)
                want = ((torch.arange(n) % 7) * world + sum(range(world))).to(dt)
                assert torch.equal(x.cpu(), want), f"all_reduce n={n} {dt}"
        x = torch.full((4096,), float(rank + 1), device=dev)
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        assert torch.all(x == world).item()
        x = torch.full((4096,), float(rank + 1), device=dev)
        dist.all_reduce(x, op=dist.ReduceOp.AVG)
        assert torch.allclose(x, torch.full_like(x, (world + 1) / 2))
        # async: the work completes and the tensor holds the result after wait().
        x = torch.ones(1 << 18, device=dev)
        w = dist.all_reduce(x, async_op=True)
        w.wait()
        assert torch.all(x == world).item()
        # non-contiguous device tensor.
        m = torch.ones(64, 64, device=dev).t()[:, :32]
        dist.all_reduce(m)
        assert torch.all(m == world).item()
        # Other collectives copy through the host.
        b = torch.full((1000,), float(rank), device=dev)
        dist.broadcast(b, src=1)
        assert torch.all(b == 1).item()
        g = [torch.empty(10, device=dev) for _ in range(world)]
        dist.all_gather(g, torch.full((10,), float(rank), device=dev))
        assert all(torch.all(t == i).item() for i, t in enumerate(g))
        o = torch.empty(5, device=dev)
        dist.reduce_scatter_tensor(o, torch.ones(5 * world, device=dev))
        assert torch.all(o == world).item()
        out["ok"] = True
    finally:
        dist.destroy_process_group()
    return out


@needs_backend
def test_cuda_collectives_two_ranks_one_gpu():
    assert all(r["ok"] for r in run_ranks(_collectives, 2))


def _ddp_step(rank, world, backend):
    import acspeed  # noqa: F401

    dist.init_process_group(backend)
    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0], bucket_cap_mb=1)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        x = torch.randn(32, 256, generator=g).to(dev)
        y = torch.randint(0, 10, (32,), generator=g).to(dev)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    params = [p.detach().cpu() for p in model.parameters()]
    dist.destroy_process_group()
    return params


@needs_backend
def test_ddp_step_on_cuda_matches_gloo():
    ours = run_ranks(_ddp_step, 2, "acspeed")
    ref = run_ranks(_ddp_step, 2, "gloo")
    for a, b in zip(ours[0], ours[1]):
        assert torch.equal(a, b), "ranks disagree after DDP steps"
    for a, b in zip(ours[0], ref[0]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), "acspeed and gloo DDP differ"


def _direct(rank, world, port):
    """The device pipeline without torch.distributed: PyComm over a TCPStore, device pointers
    straight into allreduce_cuda (runs on any torch that has CUDA, e.g. 2.11 where
    c10d.Backend cannot be subclassed from Python)."""
    import time

    from acspeed import _acspeed

    store = dist.TCPStore("127.0.0.1", port + 1, world, rank == 0, timeout=__import__("datetime").timedelta(seconds=60))
    c = _acspeed.PyComm(store, rank, world, 60.0, "127.0.0.1", port + 1)
    dev = torch.device("cuda", 0)
    codes = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 3, torch.int64: 5}
    for n in (1, 1000, 1 << 20, (8 << 20) + 3):
        for dt, code in codes.items():
            x = (torch.arange(n, device=dev) % 7 + rank).to(dt)
            torch.cuda.synchronize()
            c.allreduce_cuda(x.data_ptr(), n, code, 0, 0, x).wait()
            want = ((torch.arange(n) % 7) * world + sum(range(world))).to(dt)
            assert torch.equal(x.cpu(), want), f"allreduce_cuda n={n} {dt}"
    # Timing: 64 MiB of f32 on the device vs the same bytes in host memory (median of 5).
    n = 16 << 20
    times = {}
    for where in ("cuda", "cpu"):
        x = torch.ones(n, device=where)
        ts = []
        for _ in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            h = c.allreduce_cuda(x.data_ptr(), n, 0, 0, 0, x) if where == "cuda" else c.allreduce(x.data_ptr(), n, 0, 0, x)
            h.wait()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        times[where] = sorted(ts[1:])[2]
    c.shutdown()
    return times


def test_allreduce_cuda_direct_two_ranks_one_gpu():
    from conftest import free_port

    res = run_ranks(_direct, 2, free_port())
    t = res[0]
    print(f"64 MiB f32 allreduce, 2 ranks on one GPU: device {t['cuda'] * 1e3:.1f} ms, host {t['cpu'] * 1e3:.1f} ms")
