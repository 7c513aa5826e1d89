#!/usr/bin/env python
"""A DDP training script to copy. Switching a job to acspeed is the one word in --backend.

    torchrun --nproc-per-node 4 examples/train_ddp.py --backend acspeed
    torchrun --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 \\
             --nproc-per-node 8 examples/train_ddp.py --backend acspeed

No `import acspeed` is needed: `pip install ./python` declares the backend through torch's
`torch.distributed.backends` entry point. Prints the loss per step and a checksum of the
parameters (identical on every rank, and identical to --backend gloo with two ranks).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="acspeed")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a stuck collective fails")
    a = ap.parse_args()

    dist.init_process_group(backend=a.backend, timeout=datetime.timedelta(seconds=a.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, a.hidden), nn.ReLU(), nn.Linear(a.hidden, a.hidden), nn.ReLU(), nn.Linear(a.hidden, 10))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank sees its own data shard
    t0 = time.perf_counter()
    for step in range(a.steps):
        x = torch.randn(a.batch, 256, generator=gen)
        y = torch.randint(0, 10, (a.batch,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 5 == 0 or step == a.steps - 1):
            print(f"step {step:4d} loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - t0
    checksum = sum(p.double().sum().item() for p in model.parameters())
    if rank == 0:
        print(f"backend={a.backend} world={world} steps={a.steps} {a.steps * a.batch * world / elapsed:.1f} samples/s "
              f"checksum={checksum:.10e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
