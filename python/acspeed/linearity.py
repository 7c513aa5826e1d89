"""Linearity of a real torch model under DDP with the acspeed backend.

    python -m acspeed.linearity --workers 2 --model mlp:1024 --batch 64 --steps 10 [--json]
    python -m acspeed.linearity --workers 4 --model torchvision:resnet18 --batch 16
    python -m acspeed.linearity --workers 2 --model mypkg.models:make_model --input 3,224,224

    python -m acspeed.linearity --workers 2 --model transformers:bert --input 128

Every worker first times training steps of the plain model on its own (forward, backward,
optimizer step: the one-worker baseline, all workers at once, as they would share the
machine), then the same steps under DistributedDataParallel with ``backend="acspeed"``.
Linearity = one worker's step time / the N-worker step time (the slowest worker's), i.e.
N-worker throughput / (N x one-worker throughput). The extra time per step is the exposed
communication (plus any CPU the workers compete for). acspeed records when each of its
allreduces ran: their union inside each step is the step's communication time, and the part
of it that the step did not pay for is the overlap with the backward pass. Each rank's
exposed wait minus the smallest one is the straggler split (the rank that waits least is
the one the others wait for). On several hosts (hostname, or ACSPEED_HOST_ID) the same steps
also run within each host, giving the linearity across hosts. Under torchrun
(RANK/WORLD_SIZE set) the process is one worker of the job instead of starting workers.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import socket
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
    if spec.startswith("transformers:"):
        return _transformers_model(spec.split(":", 1)[1])
    if spec.startswith("torchvision:"):
        try:
            import torchvision  # noqa: F401
            from torchvision import models
        except ImportError as e:
            raise SystemExit(f"--model {spec}: torchvision is not installed ({e})")
        return getattr(models, spec.split(":", 1)[1])(num_classes=100), (3, 224, 224), 100
    mod, _, fn = spec.partition(":")
    if not fn:
        raise SystemExit(
            f"--model {spec!r}: expected mlp[:hidden], torchvision:<name>, transformers:<model type> or module:factory"
        )
    m = getattr(importlib.import_module(mod), fn)()
    return m, (), 0


class _Logits(nn.Module):
    """A transformers model as a module returning its logits (what the loss needs)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(input_ids=x).logits


def _transformers_model(kind: str):
    """A sequence classifier of a transformers model type (bert, gpt2, ...) from its default
    configuration: random weights, nothing downloaded. Input: token ids (give the sequence
    length with --input, default 128)."""
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification
    except ImportError as e:
        raise SystemExit(f"--model transformers:{kind}: transformers is not installed ({e})")
    cfg = AutoConfig.for_model(kind)
    if getattr(cfg, "pad_token_id", None) is None:
        cfg.pad_token_id = 0  # batches of more than one sequence need it for classification
    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_config(cfg)
    return _Logits(m), ("tokens", 128, int(cfg.vocab_size)), int(cfg.num_labels)


def host_id() -> str:
    """This worker's host, as the backend groups ranks (ACSPEED_HOST_ID, else the hostname)."""
    return os.environ.get("ACSPEED_HOST_ID") or socket.gethostname()


def union_ms(intervals, lo: float, hi: float) -> float:
    """Milliseconds of [lo, hi] covered by the union of ``intervals`` (seconds)."""
    iv = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, end = 0.0, lo
    for a, b in iv:
        if b > end:
            total += b - max(a, end)
            end = b
    return total * 1e3


def time_steps(model: nn.Module, x, y, steps: int, warmup: int, windows=None) -> list[float]:
    """Times ``steps`` training steps after ``warmup``; appends each timed step's (start, end)
    in epoch seconds to ``windows``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = []
    for i in range(warmup + steps):
        w0 = time.time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = model(x)
        loss = nn.functional.cross_entropy(pred, y) if y.dtype == torch.long else nn.functional.mse_loss(pred, y)
        loss.backward()
        opt.step()
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
            if windows is not None:
                windows.append((w0, time.time()))
    return out


def worker(rank: int, world: int, args) -> dict | None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import acspeed  # noqa: F401  (registers the backend)

    torch.set_num_threads(max(1, args.threads))
    model, shape, classes = build_model(args.model)
    if args.input and not (shape and shape[0] == "tokens"):
        shape = tuple(int(v) for v in args.input.split(","))
    g = torch.Generator().manual_seed(rank)
    if shape and shape[0] == "tokens":
        seq = int(args.input) if args.input else shape[1]
        x = torch.randint(0, shape[2], (args.batch, seq), generator=g)
        shape = (seq,)
    else:
        x = torch.randn((args.batch, *shape), generator=g)
    with torch.no_grad():
        out_shape = model(x[:1]).shape[1:]
    y = torch.randint(0, classes, (args.batch,), generator=g) if classes else torch.randn((args.batch, *out_shape), generator=g)
    params = sum(p.numel() for p in model.parameters())
    single = statistics.median(time_steps(model, x, y, args.steps, 2))
    dist.init_process_group(backend="acspeed")
    fresh = copy.deepcopy(model)  # for the per-host run, before DDP trains this one
    ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
    comm = acspeed._torch._backend_of(None)._c
    per_algo = {}
    for a in algos(args):
        # Every rank switches at the same point (the algorithm travels in every frame).
        comm.set_algorithm(None if a == "auto" else a)
        comm.record_busy(True)
        windows: list = []
        multi = statistics.median(time_steps(ddp, x, y, args.steps, 2, windows))
        busy = comm.take_busy()
        comm.record_busy(False)
        per_algo[a] = {"multi_ms": multi, "comm_ms": statistics.median(union_ms(busy, a0, b0) for a0, b0 in windows)}
    comm.set_algorithm(None)
    explain = acspeed.explain(None, min(params * 4, int(args.bucket_mb * (1 << 20))))
    first = per_algo[algos(args)[0]]
    me = {"rank": rank, "host": host_id(), "single_ms": single, **first, "algos": per_algo}
    rows: list = [None] * world
    dist.all_gather_object(rows, me)
    hosts = sorted({r["host"] for r in rows})
    host_ms = None
    if len(hosts) > 1:
        # The same steps within each host (every rank creates every group, in one order).
        groups = [dist.new_group([r["rank"] for r in rows if r["host"] == h]) for h in hosts]
        mine = groups[hosts.index(me["host"])]
        local = DDP(fresh, bucket_cap_mb=args.bucket_mb, process_group=mine)
        me["host_ms"] = statistics.median(time_steps(local, x, y, args.steps, 2))
        dist.all_gather_object(rows, me)
        host_ms = max(r["host_ms"] for r in rows)
    dist.destroy_process_group()
    if rank != 0:
        return None
    return summarize(rows, hosts, host_ms, args, params, explain)


def algos(args) -> list:
    """The algorithms to measure, in order (``auto`` is the automatic choice)."""
    return [a.strip() for a in args.algo.split(",") if a.strip()] or ["auto"]


def per_algorithm(rows, algo: str, single_ms: float, world: int, params: int) -> dict:
    """Step, linearity, communication, overlap and bus bandwidth of one measured algorithm."""
    step_ms = max(r["algos"][algo]["multi_ms"] for r in rows)
    exposed_ms = max(0.0, step_ms - single_ms)
    comm_ms = statistics.median(r["algos"][algo]["comm_ms"] for r in rows)
    # Every step reduces all gradients (fp32): bus bandwidth as nccl-tests defines it.
    busbw = params * 4 / (comm_ms / 1e3) / 1e9 * 2 * (world - 1) / world if comm_ms > 0 else None
    return {
        "algo": algo,
        "step_ms": step_ms,
        "linearity": single_ms / step_ms,
        "exposed_comm_frac": exposed_ms / step_ms,
        "comm_ms": comm_ms,
        "overlap_frac": None if comm_ms <= 0 else min(1.0, max(0.0, (comm_ms - exposed_ms) / comm_ms)),
        "busbw_gbps": busbw,
    }


def summarize(rows, hosts, host_ms, args, params, explain) -> dict:
    """The report from every rank's timings (see the module's docstring for the terms)."""
    from acspeed._acspeed import linearity_verdict

    world = len(rows)
    single_ms = statistics.median(r["single_ms"] for r in rows)
    table = [per_algorithm(rows, a, single_ms, world, params) for a in algos(args)]
    main = table[0]
    step_ms, lin, extra = main["step_ms"], main["linearity"], main["exposed_comm_frac"]
    comm_ms, overlap = main["comm_ms"], main["overlap_frac"]
    best = min(table, key=lambda t: t["step_ms"])
    # A change must beat the run-to-run noise of these machines (5%).
    rec = None
    if best is not main and best["step_ms"] < step_ms * 0.95:
        rec = f"ACSPEED_ALGO={best['algo']} measured +{(step_ms / best['step_ms'] - 1) * 100:.0f}% throughput"
    # Each rank's exposed wait; the one that waits least is the one the others wait for.
    waits = [max(0.0, r["multi_ms"] - r["single_ms"]) for r in rows]
    least = min(waits)
    slowest = waits.index(least)
    straggler = [w - least for w in waits]
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
        "comm_ms": comm_ms,
        "overlap_frac": overlap,
        "busbw_gbps": main["busbw_gbps"],
        "link_gbps": args.link_gbps,
        "algos": table,
        "recommendation": rec,
        "algo": explain,
        "hosts": len(hosts),
        "host_linearity": None if host_ms is None else host_ms / step_ms,
        "slowest_rank": slowest,
        "straggler_ms": straggler,
        "ranks": rows,
        "verdict": linearity_verdict(lin, extra, (slowest, max(straggler)), rec),
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
    ap.add_argument("--model", default="mlp:1024", help="mlp[:hidden], torchvision:<name>, transformers:<model type> (e.g. bert, gpt2; default config, random weights), or module:factory")
    ap.add_argument("--input", default=None, help="input shape without the batch, e.g. 3,224,224 (module:factory), or the sequence length (transformers:, default 128)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--algo", default="auto", help="algorithms to measure in turn, e.g. auto,ring,tree (the first is the reported one)")
    ap.add_argument("--link-gbps", type=float, default=None, help="the link's rate in GB/s, to print bus bandwidth against")
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
        ov = res["overlap_frac"]
        print(
            f"communication {res['comm_ms']:.1f} ms per step, {res['exposed_comm_frac'] * 100:.0f}% of the step exposed, "
            + (f"{ov * 100:.0f}% hidden under compute" if ov is not None else "no communication recorded")
        )
        for t in res["algos"]:
            bw = t["busbw_gbps"]
            link = f" ({bw / res['link_gbps'] * 100:.0f}% of the {res['link_gbps']} GB/s link)" if bw and res["link_gbps"] else ""
            print(
                f"  {t['algo']:<10} step {t['step_ms']:7.1f} ms  linearity {t['linearity']:.3f}  communication {t['comm_ms']:6.1f} ms"
                + (f"  busbw {bw:.3f} GB/s{link}" if bw else "")
            )
        hl = res["host_linearity"]
        host = f", across {res['hosts']} hosts {hl:.3f}" if hl is not None else ""
        print(f"throughput {res['throughput']:.1f} samples/s, linearity {res['linearity']:.3f}{host}")
        print(res["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
