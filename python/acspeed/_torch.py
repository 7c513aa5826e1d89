"""The torch.distributed backend: a ``c10d.Backend`` subclass whose collectives run in Rust.

Design (see TORCH.md in the design notes): every collective is queued to one Rust worker
thread per process group, in issue order, with the GIL released while bytes move. Async calls
return an ``AcspeedWork`` whose future is completed from the Rust thread; errors travel through
a ``then()`` callback that raises, which is the only way they reach DDP. Non-contiguous tensors
are staged through a contiguous copy and copied back before the work reports completion.
"""

from __future__ import annotations

import atexit
import os
import weakref

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Backend as C10dBackend
from torch._C._distributed_c10d import ReduceOp
from torch.futures import Future

from . import _acspeed

RedOpType = ReduceOp.RedOpType

# torch dtype -> acspeed DType code (core/src/dtype.rs)
_DT = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int32: 4,
    torch.int64: 5,
    torch.int8: 6,
    torch.uint8: 7,
    torch.bool: 7,
}
# acspeed ReduceOp codes: sum 0, prod 1, min 2, max 3, avg 4, band 5, bor 6, bxor 7
_OP = {
    RedOpType.SUM: 0,
    RedOpType.PRODUCT: 1,
    RedOpType.MIN: 2,
    RedOpType.MAX: 3,
    RedOpType.AVG: 4,
    RedOpType.BAND: 5,
    RedOpType.BOR: 6,
    RedOpType.BXOR: 7,
    RedOpType.PREMUL_SUM: 0,
}
# On bool (stored as bytes 0/1) sum/max mean "any", prod/min mean "all".
_BOOL_OP = {0: 6, 3: 6, 1: 5, 2: 5, 5: 5, 6: 6, 7: 7}

_live = weakref.WeakSet()
# group name -> backend, for explain() (weak: a destroyed group's backend may go away).
_by_group: "weakref.WeakValueDictionary[str, AcspeedBackend]" = weakref.WeakValueDictionary()


def _raise_if_exc(f):
    v = f.value()
    if isinstance(v, BaseException):
        raise v
    return v


def _dtype_code(t: torch.Tensor, what: str) -> int:
    try:
        return _DT[t.dtype]
    except KeyError:
        raise TypeError(f"acspeed {what}: unsupported dtype {t.dtype} (supported: {sorted(str(d) for d in _DT)})") from None


_CUDA = _acspeed.cuda_built()


def _check_device(t: torch.Tensor, what: str) -> None:
    if t.device.type == "cpu" or (t.device.type == "cuda" and _CUDA):
        return
    if t.device.type == "cuda":
        raise RuntimeError(
            f"acspeed {what}: tensor is on {t.device}, but this acspeed was built without the 'cuda' feature "
            f"(rebuild with MATURIN_PEP517_ARGS='--features cuda' pip install ./python)"
        )
    raise RuntimeError(f"acspeed {what}: tensors on {t.device} are not supported (cpu{' and cuda' if _CUDA else ''} only)")


def _staged(t: torch.Tensor, what: str):
    """(contiguous host tensor to hand to Rust, tensor to copy the result back into, or None).

    CUDA tensors other than all_reduce's go through a host copy; all_reduce has a pipelined
    device path (see AcspeedBackend.allreduce)."""
    _check_device(t, what)
    if t.device.type == "cuda":
        torch.cuda.current_stream(t.device).synchronize()
        return t.detach().to("cpu"), t
    if t.is_contiguous():
        return t, None
    return t.contiguous(), t


def _check_pair(what: str, out: torch.Tensor, inp: torch.Tensor, in_place_at: int | None = None):
    """Output and input of one collective: the same dtype, and no overlap except where the
    input sits exactly at ``in_place_at`` bytes into the output (torch's in-place form)."""
    if out.dtype != inp.dtype:
        raise TypeError(f"acspeed {what}: output dtype {out.dtype} differs from input dtype {inp.dtype}")
    if out.device.type != "cpu" or inp.device.type != "cpu" or out.numel() == 0 or inp.numel() == 0:
        return
    o0, o1 = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    i0, i1 = inp.data_ptr(), inp.data_ptr() + inp.numel() * inp.element_size()
    if o0 < i1 and i0 < o1 and not (in_place_at is not None and i0 == o0 + in_place_at):
        raise ValueError(
            f"acspeed {what}: the input overlaps the output (bytes {i0 - o0}..{i1 - o0} of it); "
            "use separate tensors, or the in-place form (the input is this rank's slot of the output)"
        )


def _op_code(opts_op, t: torch.Tensor, what: str) -> int:
    op = opts_op.op if hasattr(opts_op, "op") else opts_op
    if op not in _OP:
        raise ValueError(f"acspeed {what}: unsupported reduce op {op}")
    code = _OP[op]
    if t.dtype == torch.bool:
        return _BOOL_OP.get(code, code)
    if code in (5, 6, 7) and t.is_floating_point():
        raise ValueError(f"acspeed {what}: bitwise op {op} is not defined for {t.dtype}")
    return code


class AcspeedWork(dist.Work):
    """A queued operation: ``wait()`` blocks with the GIL released and raises its error."""

    def __init__(self, handle, future, post=None):
        super().__init__()
        self._h = handle
        self._fut = future
        self._post = post

    def wait(self, timeout=None):
        self._h.wait()
        if self._post is not None:
            self._fut.wait()  # the copy-back runs in the future's callback
        return True

    def is_completed(self):
        return self._h.is_completed()

    def _source_rank(self):
        # torch's recv(src=None) / irecv().wait() ask the Work which rank sent.
        self._h.wait()
        return self._h.source_rank()

    def is_success(self):
        return self._h.is_completed()

    def get_future(self):
        return self._fut


class AcspeedBackend(C10dBackend):
    """``torch.distributed`` backend ``"acspeed"`` for CPU tensors."""

    def __init__(self, opts, backend_options=None):
        try:
            super().__init__(opts.group_rank, opts.group_size)
        except TypeError as e:
            # torch <= 2.11 binds no constructor for c10d.Backend (seen on a GPU machine with
            # 2.11; a ProcessGroup subclass gets further there but fails in DeviceMesh and
            # device routing). Say so instead of "No constructor defined".
            raise RuntimeError(
                f"acspeed needs torch >= 2.12 (this is {torch.__version__}: c10d.Backend cannot be subclassed from Python here)"
            ) from e
        self._rank = opts.group_rank
        self._size = opts.group_size
        self._timeout = opts.timeout
        self._opts = C10dBackend.Options("acspeed", opts.timeout)
        self._seq = 0
        host, port = _master_address(opts.store)
        self._c = _acspeed.PyComm(opts.store, opts.group_rank, opts.group_size, opts.timeout.total_seconds(), host, port)
        _live.add(self)
        _by_group[getattr(opts, "group_id", "")] = self

    # -- properties PyBackend looks up (pitfall 1: they must exist as Python properties)
    supports_coalescing = property(lambda self: False)
    supports_splitting = property(lambda self: False)
    supports_shrinking = property(lambda self: False)
    supports_reconfigure = property(lambda self: False)
    supports_window = property(lambda self: False)
    _supports_time_estimate = property(lambda self: False)
    options = property(lambda self: self._opts)

    def getBackendName(self):
        return "acspeed"

    def _get_sequence_number_for_group(self):
        return self._seq

    def _set_sequence_number_for_group(self, seq=None):
        if seq is not None:
            self._seq = seq

    def transports(self):
        """Transport towards each rank of the group, e.g. ['self', 'shm', 'tcp/4']."""
        return self._c.transports()

    # -- plumbing
    def _finish(self, handle, tensors, async_op, copy_back=()):
        """Wraps a Rust handle into a Work (or waits for it, for blocking calls)."""
        self._seq += 1
        copy_back = [(d, s) for d, s in copy_back if d is not None]
        if not async_op:
            handle.wait()
            for dst, src in copy_back:
                dst.copy_(src)
            return None
        src = Future()
        if copy_back:

            def _post(f):
                v = _raise_if_exc(f)
                for dst, s in copy_back:
                    dst.copy_(s)
                return v

            out = src.then(_post)
        else:
            out = src.then(_raise_if_exc)
        handle.complete_future(src, tensors)
        return AcspeedWork(handle, out, post=bool(copy_back))

    # -- collectives
    def allreduce(self, tensors, opts):
        t = tensors[0]
        op = opts.reduceOp
        if t.device.type == "cuda" and _CUDA:
            return self._allreduce_cuda(tensors, opts)
        c, orig = _staged(t, "all_reduce")
        code = _op_code(op, t, "all_reduce")
        if op.op == RedOpType.PREMUL_SUM:
            c = (c if orig is not None else c.clone()).mul_(_premul_factor(op))
            orig = t
        h = self._c.allreduce(c.data_ptr(), c.numel(), _dtype_code(c, "all_reduce"), code, c)
        return self._finish(h, tensors, opts.asyncOp, [(orig, c)])

    def _allreduce_cuda(self, tensors, opts):
        # Device buffers stream through pinned host memory chunk by chunk (CPU-Reduce).
        t = tensors[0]
        op = opts.reduceOp
        c = t if t.is_contiguous() else t.contiguous()
        orig = None if c is t else t
        code = _op_code(op, t, "all_reduce")
        if op.op == RedOpType.PREMUL_SUM:
            c = (c if orig is not None else c.clone()).mul_(_premul_factor(op))
            orig = t
        # Instead of blocking until the stream is done, the staging downloads wait on the
        # device for an event recorded after the producer's work (DDP's backward goes on).
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(t.device))
        h = self._c.allreduce_cuda(
            c.data_ptr(), c.numel(), _dtype_code(c, "all_reduce"), code, t.device.index or 0, (c, ready), ready.cuda_event
        )
        return self._finish(h, tensors, opts.asyncOp, [(orig, c)])

    def allreduce_coalesced(self, tensors, opts):
        if not tensors:
            return self._finish(self._c.barrier(), tensors, opts.asyncOp)
        t0 = tensors[0]
        for t in tensors:
            _check_device(t, "all_reduce_coalesced")
            if t.device.type != "cpu":
                raise RuntimeError("acspeed all_reduce_coalesced: CUDA tensors are not supported here; use all_reduce")
            if t.dtype != t0.dtype:
                raise TypeError("acspeed all_reduce_coalesced: all tensors must have the same dtype")
        flat = torch.cat([t.reshape(-1) for t in tensors])
        code = _op_code(opts.reduceOp, t0, "all_reduce_coalesced")
        h = self._c.allreduce(flat.data_ptr(), flat.numel(), _dtype_code(flat, "all_reduce_coalesced"), code, flat)
        backs, off = [], 0
        for t in tensors:
            n = t.numel()
            backs.append((t, flat[off : off + n].view(t.shape)))
            off += n
        return self._finish(h, tensors, opts.asyncOp, backs)

    def broadcast(self, tensors, opts):
        t = tensors[0]
        c, orig = _staged(t, "broadcast")
        h = self._c.broadcast(c.data_ptr(), c.numel(), _dtype_code(c, "broadcast"), opts.rootRank, c)
        return self._finish(h, tensors, opts.asyncOp, [(orig, c)])

    def reduce(self, tensors, opts):
        t = tensors[0]
        c, orig = _staged(t, "reduce")
        code = _op_code(opts.reduceOp, t, "reduce")
        # Only the root's buffer is defined afterwards; keep the others' unchanged like gloo.
        if self._rank != opts.rootRank:
            c = c.clone() if orig is None else c
            orig = None
        h = self._c.reduce(c.data_ptr(), c.numel(), _dtype_code(c, "reduce"), code, opts.rootRank, c)
        return self._finish(h, tensors, opts.asyncOp, [(orig, c)])

    def allgather(self, outputs, inputs, opts):
        t = inputs[0]
        if len(outputs[0]) != self._size:
            raise ValueError(f"acspeed all_gather: {len(outputs[0])} output tensors, expected one per rank ({self._size})")
        for r, o in enumerate(outputs[0]):
            if o.numel() != t.numel() or o.dtype != t.dtype:
                raise ValueError(
                    f"acspeed all_gather: output {r} is {o.numel()} x {o.dtype}, the input {t.numel()} x {t.dtype}; they must match"
                )
        c, _ = _staged(t, "all_gather")
        out = torch.empty((self._size * c.numel(),), dtype=c.dtype)
        h = self._c.allgather(c.data_ptr(), out.data_ptr(), c.numel(), _dtype_code(c, "all_gather"), (c, out))
        n = c.numel()
        backs = [(o, out[i * n : (i + 1) * n].view(o.shape)) for i, o in enumerate(outputs[0])]
        return self._finish(h, outputs, opts.asyncOp, backs)

    def all_gather_single(self, output, input, opts):
        c, _ = _staged(input, "all_gather_into_tensor")
        o, orig = _staged(output, "all_gather_into_tensor")
        if o.numel() != c.numel() * self._size:
            raise ValueError(f"acspeed all_gather_into_tensor: output has {o.numel()} elements, expected {c.numel()} x {self._size}")
        _check_pair("all_gather_into_tensor", o, c, self._rank * c.numel() * c.element_size())
        h = self._c.allgather(c.data_ptr(), o.data_ptr(), c.numel(), _dtype_code(c, "all_gather_into_tensor"), (c, o))
        return self._finish(h, [output], opts.asyncOp, [(orig, o)])

    def allgather_coalesced(self, outputs, inputs, opts):
        # torch's layout: outputs[r][k] receives input k of rank r (one list per *rank*, not
        # per input). One allgather of every input packed end to end, then unpacked.
        if len(outputs) != self._size:
            raise ValueError(f"acspeed all_gather_coalesced: {len(outputs)} output lists, expected one per rank ({self._size})")
        if not inputs:
            return _chain([], outputs, opts.asyncOp)
        dt = inputs[0].dtype
        for r, lst in enumerate(outputs):
            if len(lst) != len(inputs):
                raise ValueError(f"acspeed all_gather_coalesced: output list {r} has {len(lst)} tensors, expected {len(inputs)} (one per input)")
            for k, (o, i) in enumerate(zip(lst, inputs)):
                if o.numel() != i.numel() or o.dtype != i.dtype or i.dtype != dt:
                    raise ValueError(
                        f"acspeed all_gather_coalesced: output [{r}][{k}] is {o.numel()} x {o.dtype}, input {k} is {i.numel()} x {i.dtype}; "
                        f"sizes must match and all tensors must be {dt}"
                    )
        flat, _ = _staged(torch.cat([i.reshape(-1) for i in inputs]), "all_gather_coalesced")
        n = flat.numel()
        out = torch.empty((self._size * n,), dtype=flat.dtype)
        h = self._c.allgather(flat.data_ptr(), out.data_ptr(), n, _dtype_code(flat, "all_gather_coalesced"), (flat, out))
        backs = []
        for r, lst in enumerate(outputs):
            off = r * n
            for o in lst:
                backs.append((o, out[off : off + o.numel()].view(o.shape)))
                off += o.numel()
        return self._finish(h, [t for lst in outputs for t in lst], opts.asyncOp, backs)

    def all_gather_single_coalesced(self, outputs, inputs, opts):
        works = [self.all_gather_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return _chain(works, outputs, opts.asyncOp)

    def reduce_scatter(self, outputs, inputs, opts):
        t = outputs[0]
        flat, _ = _staged(torch.cat([x.reshape(-1) for x in inputs[0]]), "reduce_scatter")
        c, orig = _staged(t, "reduce_scatter")
        code = _op_code(opts.reduceOp, t, "reduce_scatter")
        h = self._c.reduce_scatter(flat.data_ptr(), c.data_ptr(), c.numel(), _dtype_code(c, "reduce_scatter"), code, (flat, c))
        return self._finish(h, outputs, opts.asyncOp, [(orig, c)])

    def reduce_scatter_single(self, output, input, opts):
        i, _ = _staged(input, "reduce_scatter_tensor")
        o, orig = _staged(output, "reduce_scatter_tensor")
        if i.numel() != o.numel() * self._size:
            raise ValueError(f"acspeed reduce_scatter_tensor: input has {i.numel()} elements, expected {o.numel()} x {self._size}")
        _check_pair("reduce_scatter_tensor", o, i)
        code = _op_code(opts.reduceOp, output, "reduce_scatter_tensor")
        h = self._c.reduce_scatter(i.data_ptr(), o.data_ptr(), o.numel(), _dtype_code(o, "reduce_scatter_tensor"), code, (i, o))
        return self._finish(h, [output], opts.asyncOp, [(orig, o)])

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts):
        works = [self.reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return _chain(works, outputs, opts.asyncOp)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts):
        i, _ = _staged(input, "all_to_all_single")
        o, orig = _staged(output, "all_to_all_single")
        W = self._size
        if not output_split_sizes and not input_split_sizes and i.numel() % W == 0 and o.numel() == i.numel():
            h = self._c.alltoall(i.data_ptr(), o.data_ptr(), i.numel(), _dtype_code(i, "all_to_all_single"), (i, o))
            return self._finish(h, [output], opts.asyncOp, [(orig, o)])
        row_in = i[0].numel() if i.dim() > 0 and i.shape[0] > 0 else 1
        row_out = o[0].numel() if o.dim() > 0 and o.shape[0] > 0 else 1
        ins = list(input_split_sizes) or [i.shape[0] // W] * W
        outs = list(output_split_sizes) or [o.shape[0] // W] * W
        es = i.element_size()
        send, off = [], 0
        for s in ins:
            send.append((off * row_in * es, s * row_in * es))
            off += s
        recv, off = [], 0
        for s in outs:
            recv.append((off * row_out * es, s * row_out * es))
            off += s
        h = self._c.alltoallv(i.data_ptr(), o.data_ptr(), send, recv, (i, o))
        return self._finish(h, [output], opts.asyncOp, [(orig, o)])

    def alltoall(self, outputs, inputs, opts):
        ins = [_staged(x, "all_to_all")[0] for x in inputs]
        flat_in = torch.cat([x.reshape(-1) for x in ins])
        flat_out = torch.empty(sum(o.numel() for o in outputs), dtype=flat_in.dtype)
        es = flat_in.element_size()
        send, off = [], 0
        for x in ins:
            send.append((off * es, x.numel() * es))
            off += x.numel()
        recv, off, backs = [], 0, []
        for o in outputs:
            recv.append((off * es, o.numel() * es))
            backs.append((o, flat_out[off : off + o.numel()].view(o.shape)))
            off += o.numel()
        h = self._c.alltoallv(flat_in.data_ptr(), flat_out.data_ptr(), send, recv, (flat_in, flat_out))
        return self._finish(h, outputs, opts.asyncOp, backs)

    def gather(self, outputs, inputs, opts):
        # Non-roots send to the root over the point-to-point connections.
        t, _ = _staged(inputs[0], "gather")
        root = opts.rootRank
        if self._rank != root:
            h = self._c.send(t.data_ptr(), t.numel() * t.element_size(), root, 2**63, t)
            return self._finish(h, outputs, opts.asyncOp)
        works, backs = [], []
        for r, o in enumerate(outputs[0]):
            if r == root:
                o.copy_(t)
                continue
            c, orig = _staged(o, "gather")
            works.append(self._c.recv(c.data_ptr(), c.numel() * c.element_size(), r, 2**63, c))
            backs.append((orig, c))
        return _join(self, works, outputs, opts.asyncOp, backs)

    def scatter(self, outputs, inputs, opts):
        out = outputs[0]
        root = opts.rootRank
        c, orig = _staged(out, "scatter")
        if self._rank != root:
            h = self._c.recv(c.data_ptr(), c.numel() * c.element_size(), root, 2**63 + 1, c)
            return self._finish(h, outputs, opts.asyncOp, [(orig, c)])
        works = []
        for r, x in enumerate(inputs[0]):
            x, _ = _staged(x, "scatter")
            if r == root:
                c.copy_(x)
                continue
            works.append(self._c.send(x.data_ptr(), x.numel() * x.element_size(), r, 2**63 + 1, x))
        return _join(self, works, outputs, opts.asyncOp, [(orig, c)])

    def barrier(self, opts=None):
        async_op = getattr(opts, "asyncOp", True) if opts is not None else True
        return self._finish(self._c.barrier(), [], async_op)

    def monitored_barrier(self, opts=None, wait_all_ranks=False):
        self._c.barrier().wait()
        return None

    def send(self, tensors, dstRank, tag):
        t, _ = _staged(tensors[0], "send")
        h = self._c.send(t.data_ptr(), t.numel() * t.element_size(), dstRank, tag, t)
        return self._finish(h, tensors, True)

    def recv(self, tensors, srcRank, tag):
        c, orig = _staged(tensors[0], "recv")
        h = self._c.recv(c.data_ptr(), c.numel() * c.element_size(), srcRank, tag, c)
        return self._finish(h, tensors, True, [(orig, c)])

    def recv_anysource(self, tensors, tag):
        c, orig = _staged(tensors[0], "recv")
        h = self._c.recv_any(c.data_ptr(), c.numel() * c.element_size(), tag, c)
        return self._finish(h, tensors, True, [(orig, c)])

    def shutdown(self):
        self._c.shutdown()

    def abort(self):
        self._c.abort("process group aborted")
        self._c.shutdown()


def _premul_factor(op):
    """The factor of a PREMUL_SUM ReduceOp (a float or a one-element tensor)."""
    for attr in ("factor", "_factor"):
        f = getattr(op, attr, None)
        if f is not None:
            return f.item() if isinstance(f, torch.Tensor) else float(f)
    # torch keeps it in the pickled state: (op, factor)
    st = op.__getstate__()
    f = st[1] if isinstance(st, tuple) and len(st) > 1 else 1.0
    return f.item() if isinstance(f, torch.Tensor) else float(f)


class _Joined:
    """Completion of several handles (for gather/scatter at the root)."""

    def __init__(self, handles):
        self._hs = handles

    def wait(self):
        for h in self._hs:
            h.wait()

    def is_completed(self):
        return all(h.is_completed() for h in self._hs)

    def complete_future(self, fut, value):
        # Complete once every part is done, from a helper future chain.
        if not self._hs:
            fut.set_result(value)
            return
        remaining = [len(self._hs)]
        errors = []

        def one(f):
            v = f.value()
            if isinstance(v, BaseException):
                errors.append(v)
            remaining[0] -= 1
            if remaining[0] == 0:
                fut.set_result(errors[0] if errors else value)

        for h in self._hs:
            part = Future()
            part.then(one)
            h.complete_future(part, value)


def _join(backend, handles, tensors, async_op, backs=()):
    return backend._finish(_Joined(handles), tensors, async_op, backs)


class _ChainWork(dist.Work):
    def __init__(self, works, fut):
        super().__init__()
        self._works = works
        self._fut = fut

    def wait(self, timeout=None):
        for w in self._works:
            w.wait()
        return True

    def get_future(self):
        return self._fut


def _chain(works, tensors, async_op):
    if not async_op:
        for w in works:
            if w is not None:
                w.wait()
        return None
    works = [w for w in works if w is not None]
    fut = torch.futures.collect_all([w.get_future() for w in works]).then(lambda f: [x.wait() for x in f.value()] and tensors)
    return _ChainWork(works, fut)


def _master_address(store):
    """Host and port of the TCPStore behind torch's store, or MASTER_ADDR/MASTER_PORT."""
    s = store
    for _ in range(8):
        host = getattr(s, "host", None)
        if host:
            return host, int(getattr(s, "port", 0) or 0) or None
        nxt = getattr(s, "underlying_store", None)
        if nxt is None:
            break
        s = nxt
    host = os.environ.get("MASTER_ADDR")
    port = os.environ.get("MASTER_PORT")
    return host, int(port) if port and port.isdigit() else None


def _backend_of(group):
    """The acspeed backend of ``group`` (default: the default group)."""
    if group is None:
        group = dist.distributed_c10d._get_default_group()
    if group is dist.GroupMember.NON_GROUP_MEMBER or not hasattr(group, "group_name"):
        # new_group() hands ranks outside the group a sentinel, not a group.
        raise ValueError(
            f"this rank (global rank {dist.get_rank()}) is not a member of the group it was given"
        )
    b = _by_group.get(group.group_name)
    if b is None:
        raise ValueError(f"group {group.group_name!r} does not use the acspeed backend")
    return b


def stall_reports(group=None) -> list:
    """The last stall reports this rank received for ``group``: which collective waited past
    ``ACSPEED_STALL_WARN_SECS`` and which ranks had not joined it, with what each was last
    seen doing (they are also logged as warnings when they arrive)."""
    return list(_backend_of(group)._c.stall_reports())


def explain(group=None, nbytes: int = 0, collective: str = "allreduce") -> str:
    """Which algorithm a collective of ``nbytes`` runs on ``group`` (default: the default
    group) and why: the layer that decided (per-size string, ACSPEED_ALGO or auto's rule)."""
    b = _backend_of(group)
    return b._c.explain(int(nbytes), collective)


def recv_any(tensor: torch.Tensor, group=None, tag: int = 0) -> int:
    """Receives ``tensor`` from whichever rank of ``group`` sends first, and returns that
    rank (its rank in ``group``).

    ``torch.distributed.recv(tensor)`` without ``src`` receives correctly through acspeed but
    then fails. torch 2.15 wraps a Python backend's Work in ``PyWorkHolder``
    (torch/csrc/distributed/c10d/py/PyProcessGroup.hpp), which forwards only ``wait`` and
    ``get_future``, so asking it for the source rank reaches ``Work::sourceRank``, which
    throws. This function asks acspeed's own Work instead."""
    b = _backend_of(group)
    work = b.recv_anysource([tensor], tag)
    work.wait()
    return work._source_rank()


def _create(opts, backend_options):
    return AcspeedBackend(opts, backend_options)


_registered = False


def register():
    """Registers the ``"acspeed"`` backend with torch.distributed (idempotent)."""
    global _registered
    if _registered or "acspeed" in dist.Backend.backend_list:
        _registered = True
        return
    dist.Backend.register_backend("acspeed", _create, extended_api=True, devices=["cpu", "cuda"] if _CUDA else ["cpu"])
    _registered = True


@atexit.register
def _shutdown_all():
    # Users who skip destroy_process_group still get the Rust threads stopped (pitfall 7).
    for b in list(_live):
        try:
            b.shutdown()
        except Exception:
            pass
