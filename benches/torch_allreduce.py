#!/usr/bin/env python
"""All-reduce sweep through torch.distributed, for any backend, launched like a training job.

Reads torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the same script runs
under torchrun, under netsim (one process per emulated host) or from compare scripts. Per size:
refill (untimed), barrier (untimed), one timed all_reduce; time = median over iterations of the
slowest rank; busbw = algbw * 2(W-1)/W (nccl-tests). Rank 0 prints one JSON object.

  RANK=0 WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python torch_allreduce.py --backend gloo
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--min-bytes", type=int, default=4 << 10)
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    if a.backend == "acspeed":
        import acspeed  # noqa: F401  (registers the backend)
    dist.init_process_group(backend=a.backend, timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    size = a.min_bytes
    while size <= a.max_bytes:
        n = size // 4
        base = (torch.arange(n, dtype=torch.int64) % 251).to(torch.float32)
        t = torch.empty(n, dtype=torch.float32)
        times, ok = [], True
        iters = a.iters * (5 if size <= 1 << 20 else 1)
        for it in range(a.warmup + iters):
            t.copy_(base).mul_(rank + 1)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            dt = time.perf_counter() - t0
            if it >= a.warmup:
                times.append(dt)
            if it == a.warmup + iters - 1:
                ok = bool(torch.equal(t, base * (world * (world + 1) / 2)))
        tt = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
        okt = torch.tensor([0 if ok else 1])
        dist.all_reduce(okt)
        med = statistics.median(tt.tolist())
        algbw = size / med / 1e9
        srt = sorted(tt.tolist())
        rows.append(dict(bytes=size, time_us=med * 1e6, algbw_gbps=algbw, busbw_gbps=algbw * 2 * (world - 1) / world, correct=int(okt) == 0,
                         min_us=srt[0] * 1e6, p90_us=srt[int(0.9 * (len(srt) - 1))] * 1e6, iters=len(srt)))
        size *= a.factor
    if rank == 0:
        print(json.dumps(dict(backend=a.backend, world=world, torch=torch.__version__, rows=rows)))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
