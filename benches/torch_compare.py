#!/usr/bin/env python
"""gloo vs acspeed through torch.distributed, in one run, in the same processes.

Every rank joins the default group with backend "acspeed" and a second group with backend
"gloo"; each measurement alternates between the two groups, so both see the same machine state:
  * latency: 1-element float32 all_reduce, median of many blocking calls
  * sweep: all_reduce busbw from 4 KiB to --max-bytes (refill + barrier untimed; slowest rank)
  * DDP: samples/s of a small MLP training loop (DistributedDataParallel on each group)
Rank 0 prints a markdown report with ratios. With --ddp-only, only DDP training: the MLP and a
small conv net (1.6M parameters in 1 MiB buckets, so gradients of later layers are reduced
while backward still computes earlier ones), backends alternating, one JSON line per run.

  python benches/torch_compare.py --spawn 2                # W local processes
  RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python benches/torch_compare.py   # one rank (e.g. per netsim host)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn


def _median_of_max(times, group):
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return statistics.median(t.tolist())


def latency(group, n):
    t = torch.ones(1)
    for _ in range(50):
        dist.all_reduce(t, group=group)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        dist.all_reduce(t, group=group)
        times.append(time.perf_counter() - t0)
    return _median_of_max(times, group) * 1e6


def busbw(group, size, iters, rank, world):
    n = size // 4
    base = torch.ones(n) * (rank + 1)
    t = torch.empty(n)
    times = []
    for it in range(iters + 2):
        t.copy_(base)
        dist.barrier(group=group)
        t0 = time.perf_counter()
        dist.all_reduce(t, group=group)
        if it >= 2:
            times.append(time.perf_counter() - t0)
    assert t[0].item() == world * (world + 1) / 2
    med = _median_of_max(times, group)
    return size / med / 1e9 * 2 * (world - 1) / world, med * 1e6


def conv_net():
    """Four 3x3 conv layers (64-512 channels) and a linear head on 32x32 inputs: 1.6M params."""
    chans = [3, 64, 128, 256, 512]
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def ddp_rate(group, rank, steps, hidden, model_kind="mlp"):
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    if model_kind == "conv":
        model, shape, batch, bucket = conv_net(), (3, 32, 32), 16, 1
    else:
        model = nn.Sequential(nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        shape, batch, bucket = (256,), 32, 25
    ddp = DDP(model, process_group=group, bucket_cap_mb=bucket)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)

    def step():
        x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    dist.barrier(group=group)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    el = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(el, op=dist.ReduceOp.MAX, group=group)
    return steps * batch * dist.get_world_size(group) / el.item()


def run(rank, world, a):
    import acspeed  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=600))
    groups = {"gloo": dist.new_group(backend="gloo"), "acspeed": dist.group.WORLD}
    res = {k: {} for k in groups}
    if a.ddp_only:
        # Alternate backends within each model, so drift on a shared machine hits both alike.
        out = {}
        for m in ("mlp", "conv"):
            for k, g in groups.items():
                out[f"{k}_{m}"] = ddp_rate(g, rank, a.ddp_steps, a.hidden, m)
        dist.destroy_process_group()
        if rank == 0:
            import json

            print(json.dumps(out), flush=True)
        return
    for k, g in groups.items():
        res[k]["lat"] = latency(g, a.lat_iters)
    size = a.min_bytes
    while size <= a.max_bytes:
        iters = a.iters * (4 if size <= 1 << 20 else 1)
        for k, g in groups.items():
            res[k][size] = busbw(g, size, iters, rank, world)
        size *= 4
    for k, g in groups.items():
        res[k]["ddp"] = ddp_rate(g, rank, a.ddp_steps, a.hidden)
    transports = dist.group.WORLD._get_backend(torch.device("cpu")).transports()
    dist.destroy_process_group()
    if rank == 0:
        report(res, world, a, transports)


def human(n):
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def report(res, world, a, transports):
    g, s = res["gloo"], res["acspeed"]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    out = [
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {world} ranks ({a.label}), "
        f"{os.cpu_count()} vCPU {cpu}, torch {torch.__version__}; acspeed transports from rank 0: {transports}",
        "",
        "| measurement | gloo | acspeed | acspeed / gloo |",
        "|---|---:|---:|---:|",
        f"| 1-element all_reduce (us, median) | {g['lat']:.1f} | {s['lat']:.1f} | {s['lat'] / g['lat']:.2f}x time |",
    ]
    for k in sorted(x for x in g if isinstance(x, int)):
        out.append(f"| all_reduce {human(k)} busbw (GB/s) | {g[k][0]:.3f} | {s[k][0]:.3f} | {s[k][0] / g[k][0]:.2f}x |")
    out.append(f"| DDP MLP (hidden {a.hidden}) samples/s | {g['ddp']:.0f} | {s['ddp']:.0f} | {s['ddp'] / g['ddp']:.2f}x |")
    print("\n".join(out), flush=True)


def _spawned(rank, world, port, a):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    run(rank, world, a)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spawn", type=int, default=0, help="start this many local ranks")
    ap.add_argument("--min-bytes", type=int, default=4 << 10)
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--lat-iters", type=int, default=2000)
    ap.add_argument("--ddp-steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--label", default="one host")
    ap.add_argument("--ddp-only", action="store_true", help="only DDP samples/s (MLP and conv net), one JSON line")
    a = ap.parse_args()
    if a.spawn:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.start_processes(_spawned, args=(a.spawn, port, a), nprocs=a.spawn, start_method="spawn")
    else:
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), a)


if __name__ == "__main__":
    main()
