"""Helpers: run a function on W ranks as real processes (torch.multiprocessing, spawn)."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _entry(rank, world, port, fn, args, q, env):
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    try:
        q.put((rank, "ok", fn(rank, world, *args)))
    except BaseException as e:  # report everything, including assertion errors, to the parent
        q.put((rank, "err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_ranks(fn, world: int, *args, env=None, timeout=180):
    """Runs fn(rank, world, *args) in `world` processes; returns results by rank, re-raising failures."""
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, q, env or {})) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, []
    import time

    deadline = time.time() + timeout
    while len(results) + len(errors) < world:
        if time.time() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"ranks did not finish within {timeout}s (got {sorted(results)})")
        if q.empty():
            if all(not p.is_alive() for p in procs) and q.empty():
                break
            time.sleep(0.05)
            continue
        rank, status, value = q.get()
        if status == "ok":
            results[rank] = value
        else:
            errors.append(f"rank {rank}: {value}")
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if errors:
        pytest.fail("\n".join(errors))
    if len(results) != world:
        pytest.fail(f"only ranks {sorted(results)} reported (exit codes {[p.exitcode for p in procs]})")
    return [results[r] for r in range(world)]
