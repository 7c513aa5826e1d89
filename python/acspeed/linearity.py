"""Linearity of a real torch model under DDP with the acspeed backend.

    python -m acspeed.linearity --workers 2 --model mlp:1024 --batch 64 --steps 10 [--json]
    python -m acspeed.linearity --workers 4 --model torchvision:resnet18 --batch 16
    python -m acspeed.linearity --workers 2 --model mypkg.models:make_model --input 3,224,224

Every worker first times training steps of the plain model on its own (forward, backward,
optimizer step: the one-worker baseline, all workers at once, as they would share the
machine), then the same steps under DistributedDataParallel with ``backend="acspeed"``.
Linearity = one worker's step time / the N-worker step time (the slowest worker's), i.e.
N-worker throughput / (N x one-worker throughput). The extra time per step is what data
parallelism cost (mostly exposed allreduce, plus any CPU the two compete for). Under torchrun
(RANK/WORLD_SIZE set) the process is one worker of the job instead of starting workers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def build_model(spec: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """Returns (model, input shape without batch, output classes or features)."""
    if spec.startswith("mlp"):
        hidden = int(spec.split(":", 1)[1]) if ":" in spec else 1024
        torch.manual_seed(0)
        m = nn.Sequential(
            nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 16)
        )
        return m, (256,), 16
    if spec.startswith("torchvision:"):
        try:
            import torchvision  # noqa: F401
            from torchvision import models
        except ImportError as e:
            raise SystemExit(f"--model {spec}: torchvision is not installed ({e})")
        return getattr(models, spec.split(":", 1)[1])(num_classes=100), (3, 224, 224), 100
    mod, _, fn = spec.partition(":")
    if not fn:
        raise SystemExit(f"--model {spec!r}: expected mlp[:hidden], torchvision:<name> or module:factory")
    m = getattr(importlib.import_module(mod), fn)()
    return m, (), 0


def time_steps(model: nn.Module, x, y, steps: int, warmup: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = model(x)
        loss = nn.functional.cross_entropy(pred, y) if y.dtype == torch.long else nn.functional.mse_loss(pred, y)
        loss.backward()
        opt.step()
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def worker(rank: int, world: int, args) -> dict | None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import acspeed  # noqa: F401  (registers the backend)

    torch.set_num_threads(max(1, args.threads))
    model, shape, classes = build_model(args.model)
    if args.input:
        shape = tuple(int(v) for v in args.input.split(","))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn((args.batch, *shape), generator=g)
    with torch.no_grad():
        out_shape = model(x[:1]).shape[1:]
    y = torch.randint(0, classes, (args.batch,), generator=g) if classes else torch.randn((args.batch, *out_shape), generator=g)
    params = sum(p.numel() for p in model.parameters())
    single = statistics.median(time_steps(model, x, y, args.steps, 2))
    dist.init_process_group(backend="acspeed")
    ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
    multi = statistics.median(time_steps(ddp, x, y, args.steps, 2))
    explain = acspeed.explain(None, min(params * 4, int(args.bucket_mb * (1 << 20))))
    rows: list = [None] * world
    dist.all_gather_object(rows, {"rank": rank, "single_ms": single, "multi_ms": multi})
    dist.destroy_process_group()
    if rank != 0:
        return None
    single_ms = statistics.median(r["single_ms"] for r in rows)
    step_ms = max(r["multi_ms"] for r in rows)
    lin = single_ms / step_ms
    extra = max(0.0, step_ms - single_ms) / step_ms
    slowest = max(rows, key=lambda r: r["multi_ms"])["rank"]
    from acspeed._acspeed import linearity_verdict

    return {
        "model": args.model,
        "params": params,
        "batch": args.batch,
        "workers": world,
        "bucket_mb": args.bucket_mb,
        "single_step_ms": single_ms,
        "step_ms": step_ms,
        "throughput": world * args.batch * 1e3 / step_ms,
        "linearity": lin,
        "exposed_comm_frac": extra,
        "overlap_frac": None,
        "algo": explain,
        "slowest_rank": slowest,
        "ranks": rows,
        "verdict": linearity_verdict(lin, extra),
    }


def _entry(rank, world, port, args, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    try:
        q.put((rank, "ok", worker(rank, world, args)))
    except BaseException as e:  # report to the parent instead of dying silently
        q.put((rank, "err", f"{type(e).__name__}: {e}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m acspeed.linearity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="mlp:1024", help="mlp[:hidden], torchvision:<name>, or module:factory")
    ap.add_argument("--input", default=None, help="input shape without the batch, e.g. 3,224,224 (for module:factory)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    if args.workers < 1 or args.steps < 1 or args.batch < 1:
        ap.error("--workers, --steps and --batch must be at least 1")
    if "RANK" in os.environ:
        res = worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    else:
        import socket

        import torch.multiprocessing as mp

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ctx = mp.get_context("spawn")
        q = ctx.SimpleQueue()
        procs = [ctx.Process(target=_entry, args=(r, args.workers, port, args, q)) for r in range(args.workers)]
        for p in procs:
            p.start()
        res, got, deadline = None, 0, time.time() + args.timeout
        while got < args.workers:
            if time.time() > deadline:
                for p in procs:
                    p.kill()
                print(f"linearity: workers did not finish within {args.timeout:.0f}s", file=sys.stderr)
                return 2
            if q.empty():
                if all(not p.is_alive() for p in procs) and q.empty():
                    print("linearity: a worker died without reporting", file=sys.stderr)
                    return 2
                time.sleep(0.05)
                continue
            rank, status, value = q.get()
            got += 1
            if status != "ok":
                for p in procs:
                    p.kill()
                print(f"linearity: rank {rank} failed: {value}", file=sys.stderr)
                return 2
            if rank == 0:
                res = value
        for p in procs:
            p.join(timeout=30)
    if res is None:
        return 0
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"# acspeed linearity (measured, torch DDP): model {res['model']} ({res['params']} params), batch {res['batch']} per worker, "
            f"{res['workers']} workers, buckets {res['bucket_mb']} MiB; {res['algo']}"
        )
        print(f"one-worker step {res['single_step_ms']:.1f} ms, {res['workers']}-worker step {res['step_ms']:.1f} ms (slowest: rank {res['slowest_rank']})")
        print(f"throughput {res['throughput']:.1f} samples/s, linearity {res['linearity']:.3f}")
        print(res["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
