"""Every collective through torch.distributed with backend="acspeed", on real processes."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from conftest import run_ranks


def _collectives(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=60))
    W = world
    tri = W * (W + 1) // 2
    # all_reduce: every op, several dtypes, non-contiguous
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.int8, torch.uint8):
        t = torch.full((1001,), rank + 1, dtype=dtype)
        dist.all_reduce(t)
        assert torch.equal(t, torch.full_like(t, tri)), (dtype, t[:4])
    t = torch.full((7,), float(rank + 1))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    assert t.eq(W).all()
    t = torch.full((7,), float(rank + 1))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    assert t.eq(1).all()
    t = torch.full((7,), 2.0)
    dist.all_reduce(t, op=dist.ReduceOp.PRODUCT)
    assert t.eq(2.0**W).all()
    t = torch.full((7,), float(rank + 1))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    assert torch.allclose(t, torch.full_like(t, tri / W))
    t = torch.full((5,), float(rank + 1))
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5))
    assert torch.allclose(t, torch.full_like(t, tri * 0.5)), t
    t = torch.tensor([rank == 0, True, False])
    dist.all_reduce(t)  # bool sum = any
    assert t.tolist() == [True, True, False]
    nc = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    dist.all_reduce(nc)
    assert torch.equal(nc, torch.arange(12, dtype=torch.float32).reshape(3, 4).t() * W)
    one = torch.tensor([float(rank)])
    dist.all_reduce(one)  # 1-element latency path
    assert one.item() == W * (W - 1) / 2
    # async + future
    t = torch.ones(100_003)
    work = dist.all_reduce(t, async_op=True)
    fut = work.get_future()
    got = fut.then(lambda f: f.value()[0].sum().item()).wait()
    assert got == 100_003 * W
    work.wait()
    # broadcast / reduce
    for root in range(W):
        b = torch.full((33,), float(rank))
        dist.broadcast(b, src=root)
        assert b.eq(root).all()
        r = torch.full((33,), float(rank + 1))
        dist.reduce(r, dst=root)
        if rank == root:
            assert r.eq(tri).all()
    # all_gather / all_gather_into_tensor
    outs = [torch.empty(5) for _ in range(W)]
    dist.all_gather(outs, torch.full((5,), float(rank)))
    assert [o[0].item() for o in outs] == list(range(W))
    big = torch.empty(5 * W, dtype=torch.int64)
    dist.all_gather_into_tensor(big, torch.full((5,), rank, dtype=torch.int64))
    assert big.view(W, 5)[:, 0].tolist() == list(range(W))
    # reduce_scatter / reduce_scatter_tensor
    out = torch.empty(4)
    dist.reduce_scatter(out, [torch.full((4,), float(rank + j)) for j in range(W)])
    assert out.eq(sum(r + rank for r in range(W))).all()
    out = torch.empty(3)
    dist.reduce_scatter_tensor(out, torch.arange(3 * W, dtype=torch.float32) + rank)
    assert torch.equal(out, sum(torch.arange(3 * W, dtype=torch.float32) + r for r in range(W))[rank * 3 : rank * 3 + 3])
    # gather / scatter
    g = [torch.empty(2) for _ in range(W)] if rank == 0 else None
    dist.gather(torch.full((2,), float(rank)), gather_list=g, dst=0)
    if rank == 0:
        assert [x[0].item() for x in g] == list(range(W))
    s = torch.empty(3)
    dist.scatter(s, [torch.full((3,), float(j)) for j in range(W)] if rank == W - 1 else None, src=W - 1)
    assert s.eq(rank).all()
    # all_to_all_single (even and uneven) and all_to_all
    x = torch.arange(W * 2, dtype=torch.float32) + 100 * rank
    y = torch.empty_like(x)
    dist.all_to_all_single(y, x)
    assert y.tolist() == [100 * j + 2 * rank + k for j in range(W) for k in range(2)]
    in_splits = [j + 1 for j in range(W)]
    out_splits = [rank + 1] * W
    x = torch.full((sum(in_splits),), float(rank))
    y = torch.empty(sum(out_splits))
    dist.all_to_all_single(y, x, out_splits, in_splits)
    assert y.tolist() == [float(j) for j in range(W) for _ in range(rank + 1)]
    outs = [torch.empty(2) for _ in range(W)]
    dist.all_to_all(outs, [torch.full((2,), float(rank * 10 + j)) for j in range(W)])
    assert [o[0].item() for o in outs] == [float(j * 10 + rank) for j in range(W)]
    # send / recv / isend / irecv / batch_isend_irecv (irecv posted before isend)
    nxt, prv = (rank + 1) % W, (rank - 1) % W
    r = torch.empty(4)
    rq = dist.irecv(r, src=prv)
    sq = dist.isend(torch.full((4,), float(rank)), dst=nxt)
    sq.wait()
    rq.wait()
    assert r.eq(prv).all()
    if rank == 0:
        dist.send(torch.tensor([42.0]), dst=1)
    elif rank == 1:
        z = torch.empty(1)
        dist.recv(z, src=0)
        assert z.item() == 42.0
    ops = [dist.P2POp(dist.isend, torch.full((3,), float(rank)), nxt), dist.P2POp(dist.irecv, torch.empty(3), prv)]
    reqs = dist.batch_isend_irecv(ops)
    for q in reqs:
        q.wait()
    assert ops[1].tensor.eq(prv).all()
    # coalesced, barrier, objects
    ts = [torch.full((3,), float(rank)), torch.full((2,), 1.0)]
    dist.all_reduce_coalesced(ts)
    assert ts[0].eq(W * (W - 1) / 2).all() and ts[1].eq(W).all()
    dist.barrier()
    objs = [None] * W
    dist.all_gather_object(objs, {"rank": rank})
    assert objs == [{"rank": j} for j in range(W)]
    bl = [{"x": 1}] if rank == 0 else [None]
    dist.broadcast_object_list(bl, src=0)
    assert bl == [{"x": 1}]
    # groups: a subgroup of the first two ranks, and a gloo group beside ours
    sub = dist.new_group([0, 1])
    if rank < 2:
        t = torch.ones(3)
        dist.all_reduce(t, group=sub)
        assert t.eq(2).all()
    gl = dist.new_group(backend="gloo")
    t = torch.ones(2)
    dist.all_reduce(t, group=gl)
    assert t.eq(W).all()
    name = dist.get_backend()
    dist.destroy_process_group()
    return name


@pytest.mark.parametrize("world", [2, 3])
def test_every_collective(world):
    assert run_ranks(_collectives, world) == ["acspeed"] * world


def _errors(rank, world):
    import acspeed

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=20))
    n = 10 if rank == 0 else 20
    try:
        dist.all_reduce(torch.ones(n))
        return "no error"
    except acspeed.AcspeedError as e:
        msg, kind = str(e), type(e).__name__
    # later calls report the poisoned group instead of hanging
    try:
        dist.all_reduce(torch.ones(3))
        again = "no error"
    except RuntimeError as e:
        again = str(e)
    bad = None
    try:
        dist.all_reduce(torch.ones(3), op=dist.ReduceOp.BXOR)
    except (ValueError, RuntimeError) as e:
        bad = str(e)
    return kind, msg, again, bad


def test_mismatched_counts_raise_an_error_naming_the_rank():
    res = run_ranks(_errors, 2)
    for name, msg, again, bad in res:
        assert "rank" in msg and ("count" in msg or "bytes" in msg), msg
        assert "earlier error" in again, again
        assert "bitwise" in bad or "earlier error" in bad, bad
    assert any("AcspeedMismatchError" in r[0] or "Mismatch" in r[1] or "mismatch" in r[1] for r in res), res


def _cuda_tensor_error(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed")
    # torch routes only CPU tensors to a cpu-registered backend; call ours directly with a
    # tensor on another device (what a CUDA tensor looks like without the cuda build).
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))
    t = torch.ones(3, device="meta")
    try:
        backend.allreduce([t], dist.AllreduceOptions())
    except Exception as e:
        return str(e)
    finally:
        dist.destroy_process_group()
    return "no error"


def test_non_cpu_tensor_gets_a_clear_error():
    for msg in run_ranks(_cuda_tensor_error, 2):
        assert "meta" in msg or "device" in msg, msg


def _tcpstore(rank, world):
    import os

    import acspeed  # noqa: F401

    store = dist.TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), world, is_master=rank == 0)
    dist.init_process_group("acspeed", store=store, rank=rank, world_size=world)
    t = torch.ones(5) * (rank + 1)
    dist.all_reduce(t)
    dist.destroy_process_group()
    return t.tolist()


def test_init_with_a_tcpstore():
    assert run_ranks(_tcpstore, 2) == [[3.0] * 5] * 2


def _timeout(rank, world):
    import time

    import acspeed

    dist.init_process_group("acspeed", timeout=datetime.timedelta(seconds=2))
    if rank == 1:
        time.sleep(6)  # never joins the collective in time
        return "slept"
    t0 = time.time()
    try:
        dist.all_reduce(torch.ones(3))
    except acspeed.AcspeedTimeoutError as e:
        return (time.time() - t0, str(e))
    return "no error"


def test_the_timeout_argument_is_honoured():
    took, msg = run_ranks(_timeout, 2)[0]
    assert took < 5, took
    assert "rank 1" in msg and "allreduce" in msg, msg


def _allgather_coalesced(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed")
    try:
        inputs = [torch.full((3,), float(rank)), torch.arange(4, dtype=torch.float32).reshape(2, 2) + 10 * rank]
        # torch's layout: one list per *rank*, each with one tensor per input.
        outputs = [[torch.empty_like(t) for t in inputs] for _ in range(world)]
        dist.all_gather_coalesced(outputs, inputs)
        for r in range(world):
            assert torch.equal(outputs[r][0], torch.full((3,), float(r))), (r, outputs[r][0])
            assert torch.equal(outputs[r][1], torch.arange(4, dtype=torch.float32).reshape(2, 2) + 10 * r)
        bad = [[torch.empty(5)] for _ in range(world)]
        try:
            dist.all_gather_coalesced(bad, [torch.ones(3)])
            return "no error"
        except Exception as e:
            return str(e)
    finally:
        dist.destroy_process_group()


def test_all_gather_coalesced_uses_torchs_per_rank_layout():
    for msg in run_ranks(_allgather_coalesced, 3):
        assert "output [0][0]" in msg and "sizes must match" in msg, msg


def _any_source(rank, world):
    import acspeed

    dist.init_process_group(backend="acspeed")
    try:
        if rank == 0:
            got = []
            for _ in range(world - 1):
                t = torch.full((10,), -1.0)
                src = acspeed.recv_any(t)
                assert bool(t.eq(src).all()), (src, t)
                got.append(src)
            # Rank 1's next send must not race the two above: any source may match it first.
            dist.send(torch.zeros(1), 1)
            # torch's own recv(src=None) receives, then asks a Work torch wrapped for the
            # source rank, which torch 2.15 cannot forward for Python backends.
            t = torch.full((10,), -1.0)
            try:
                dist.recv(t)
                why = "no error"
            except RuntimeError as e:
                why = str(e)
            return (sorted(got), bool(t.ge(1).all()), why)
        dist.send(torch.full((10,), float(rank)), 0)
        if rank == 1:
            dist.recv(torch.zeros(1), 0)
            dist.send(torch.full((10,), 1.0), 0)
        return None
    finally:
        dist.destroy_process_group()


def test_recv_from_any_source():
    got, received, why = run_ranks(_any_source, 3)[0]
    assert got == [1, 2]
    assert received, f"the data arrived before torch asked for the source rank: {why}"
    assert "sourceRank" in why, why


def _error_and_time(call, ok):
    """Runs `call`; returns (its error's text, or `ok`, and the seconds it took)."""
    import time

    t0 = time.time()
    try:
        call()
        return (ok, time.time() - t0)
    except Exception as e:
        return (str(e), time.time() - t0)


def _rank_2_dies(rank, world, how):
    import datetime
    import os
    import signal
    import threading
    import time

    dist.init_process_group(backend="acspeed", timeout=datetime.timedelta(seconds=20))
    t = torch.ones(1000)
    dist.all_reduce(t)
    die = {
        "exit": lambda: os._exit(0),
        "sigkill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    }[how.split("-")[0]]
    between = how.endswith("between")
    if rank == 2:
        # Report first, then vanish without any cleanup: while the others are mid-collective,
        # or before they start the next one.
        threading.Thread(target=lambda: (time.sleep(0.05 if between else 0.5), die()), daemon=True).start()
        return ("exiting", 0.0)
    time.sleep(1.0 if between else 0.2)
    return _error_and_time(lambda: dist.all_reduce(t), "no error")


@pytest.mark.parametrize("how", ["exit-mid", "sigkill-mid", "sigkill-between"])
@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_a_rank_that_exits_is_named_within_2s_not_at_the_timeout(path, how):
    # The parent reaps nothing while the ranks run, so the dead rank stays a zombie: its pid
    # still answers kill(pid, 0), which is why liveness also reads /proc.
    env = {"ACSPEED_SHM": "1" if path == "shm" else "0"}
    res = run_ranks(_rank_2_dies, 3, how, env=env, timeout=120)
    for rank, (msg, took) in enumerate(res[:2]):
        assert "rank 2" in msg, f"rank {rank}: {msg}"
        # Mid-collective: rank 2 died 0.3 s into the call; between: before it. Timeout: 20 s.
        assert took < 2.5, f"rank {rank} took {took:.1f}s: {msg}"


def _bad_inputs(rank, world):
    import acspeed  # noqa: F401

    dist.init_process_group("acspeed")
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "no error"
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"

    # Wrong output sizes for all_gather_into_tensor / reduce_scatter_tensor.
    attempt("allgather_size", lambda: dist.all_gather_into_tensor(torch.empty(3 * world + 1), torch.ones(3)))
    attempt("reduce_scatter_size", lambda: dist.reduce_scatter_tensor(torch.empty(2), torch.ones(3 * world)))
    # Mixed dtypes between input and output.
    attempt(
        "allgather_dtype",
        lambda: dist.all_gather_into_tensor(torch.empty(3 * world, dtype=torch.float64), torch.ones(3)),
    )
    # A list of outputs of the wrong length.
    attempt("allgather_list", lambda: dist.all_gather([torch.empty(3)] * (world + 1), torch.ones(3)))
    # Output overlapping the input (not at this rank's own slot, the in-place form).
    buf = torch.zeros(3 * world + 1)
    attempt("overlap", lambda: dist.all_gather_into_tensor(buf[: 3 * world], buf[1:4]))
    # A root that is not in the group.
    attempt("root", lambda: dist.broadcast(torch.ones(2), src=world + 3))
    # The in-place form is accepted and right.
    inplace = torch.zeros(3 * world)
    inplace[3 * rank : 3 * rank + 3] = rank + 1
    dist.all_gather_into_tensor(inplace, inplace[3 * rank : 3 * rank + 3])
    out["inplace"] = inplace.tolist()
    # The communicator still works after every refusal (nothing was sent).
    t = torch.ones(4)
    dist.all_reduce(t)
    out["after"] = t.tolist()
    dist.destroy_process_group()
    return out


def test_bad_input_from_python_gets_clear_errors_and_leaves_the_group_usable():
    for res in run_ranks(_bad_inputs, 2):
        for k in ("allgather_size", "reduce_scatter_size", "allgather_dtype", "allgather_list", "overlap", "root"):
            assert res[k] != "no error", (k, res)
        assert "output has 7 elements, expected 3 x 2" in res["allgather_size"], res["allgather_size"]
        assert "dtype" in res["allgather_dtype"].lower() or "type" in res["allgather_dtype"].lower(), res["allgather_dtype"]
        assert "overlap" in res["overlap"].lower(), res["overlap"]
        assert res["inplace"] == [float(1 + r) for r in range(2) for _ in range(3)], res
        assert res["after"] == [2.0] * 4, res


def _outside_a_subgroup(rank, world):
    import acspeed

    dist.init_process_group(backend="acspeed")
    sub = dist.new_group(ranks=[0, 1], backend="acspeed")
    out = {}
    t = torch.full((8,), float(rank + 1))
    if rank == 2:
        # acspeed's own calls on a group this rank is not in: a clear error, not an AttributeError.
        for name, fn in [
            ("explain", lambda: acspeed.explain(sub, 1024)),
            ("recv_any", lambda: acspeed.recv_any(torch.empty(8), sub)),
            ("stall_reports", lambda: acspeed.stall_reports(sub)),
        ]:
            try:
                fn()
                out[name] = "no error"
            except Exception as e:  # noqa: BLE001 - the test records what was raised
                out[name] = f"{type(e).__name__}: {e}"
    else:
        dist.all_reduce(t, group=sub)
        out["sum"] = t[0].item()
    # The whole world still works afterwards.
    w = torch.ones(4)
    dist.all_reduce(w)
    out["world"] = w[0].item()
    dist.destroy_process_group()
    return out


def test_a_group_the_rank_is_not_in_gets_a_clear_error():
    res = run_ranks(_outside_a_subgroup, 3)
    assert res[0]["sum"] == res[1]["sum"] == 3.0, res
    for name in ("explain", "recv_any", "stall_reports"):
        assert res[2][name].startswith("ValueError") and "not a member" in res[2][name], res[2]
    assert all(r["world"] == 3.0 for r in res), res


def _late_rank(rank, world):
    import time

    import acspeed

    dist.init_process_group(backend="acspeed")
    try:
        if rank == 1:
            time.sleep(1.2)
        t = torch.ones(256)
        dist.all_reduce(t)
        return acspeed.stall_reports()
    finally:
        dist.destroy_process_group()


def test_stall_reports_name_the_rank_that_has_not_joined():
    res = run_ranks(_late_rank, 2, env={"ACSPEED_STALL_WARN_SECS": "0.3"})
    assert any("allreduce #1" in t and "missing rank(s) 1" in t for t in res[0]), res[0]
    assert res[1] == [], res[1]


def _sender_killed(rank, world):
    import datetime
    import os
    import signal
    import threading
    import time

    import acspeed

    dist.init_process_group(backend="acspeed", timeout=datetime.timedelta(seconds=30))
    dist.barrier()
    if rank == 1:
        # Report first, then die the hard way (no cleanup, no notice) while rank 0 waits.
        threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGKILL)), daemon=True).start()
        return ("killed", 0.0)
    return _error_and_time(lambda: acspeed.recv_any(torch.zeros(4)), "received")


@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_recv_from_any_source_names_a_sender_killed_with_sigkill(path):
    # The only possible sender is SIGKILLed: the receive fails naming it within 2 s of its
    # death (shared memory: the pid check; TCP: the connection), not at the 30 s timeout.
    env = {"ACSPEED_SHM": "1" if path == "shm" else "0"}
    res = run_ranks(_sender_killed, 2, env=env, timeout=120)
    msg, took = res[0]
    assert "rank 1" in msg, msg
    assert took < 2.5, f"{took:.1f}s: {msg}"
