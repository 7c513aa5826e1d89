#!/usr/bin/env python3
"""MPI_Allreduce timed the way acspeed-bench times acspeed (float32 sum, in place).

Per size: warm-up calls, then timed calls; each timed call is preceded by an untimed refill and
barrier, and its time is the slowest rank's; the row's time is the median over calls. busbw
follows nccl-tests (algbw x 2(n-1)/n). Every call's result is checked against the exact sum
(integer-valued inputs). Prints a JSON list of rows {bytes, time_us, busbw_gbps, wrong} on rank 0.

  mpirun -n 2 python mpi_allreduce.py --sizes 4096,65536 --warmup 5 --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", required=True, help="comma-separated byte sizes")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    rows = []
    for nbytes in (int(s) for s in a.sizes.split(",")):
        count = nbytes // 4
        # Small integers: every partial sum is exact in float32, so the check is exact.
        base = (np.arange(count, dtype=np.int64) % 97).astype(np.float32)
        mine = base + np.float32(rank)
        want = base * np.float32(n) + np.float32(n * (n - 1) // 2)
        buf = np.empty(count, dtype=np.float32)
        times, wrong = [], 0
        for i in range(a.warmup + a.iters):
            buf[:] = mine
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            dt = time.perf_counter() - t0
            wrong += int(np.count_nonzero(buf != want))
            slowest = comm.allreduce(dt, op=MPI.MAX)
            if i >= a.warmup:
                times.append(slowest)
        wrong = comm.allreduce(wrong, op=MPI.SUM)
        t = statistics.median(times)
        busbw = nbytes / t / 1e9 * (2 * (n - 1) / n) if n > 1 else 0.0
        rows.append({"bytes": nbytes, "time_us": t * 1e6, "busbw_gbps": busbw, "wrong": wrong})
    if rank == 0:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
