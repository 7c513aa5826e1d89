#!/usr/bin/env python3
"""acspeed's device reduction kernels: generate their PTX and check it, without a GPU.

    python3 scripts/cuda_kernels.py generate   # core/src/kernels/cuda/reduce.cu -> reduce.ptx
    python3 scripts/cuda_kernels.py check      # PTX current, ptxas accepts it, arithmetic right

The CUDA C is compiled with NVRTC (PyPI's nvidia-cuda-nvrtc-cu12; PyPI's nvidia-cuda-nvcc-cu12
ships ptxas but no nvcc driver) for compute_70, the V100, so the one PTX file JIT-compiles on
every GPU from Volta on; `check` assembles it with ptxas for sm_70, sm_80 and sm_90. Both
packages are pinned and installed into a virtualenv under ~/.cache/acspeed (or
$ACSPEED_CUDA_VENV) on first use.

`check` also compiles the same source as host C++ and runs every kernel on random data, edge
values included (NaN, infinities, subnormals, integer overflow), against a reference written
here from the CPU kernels' rules (core/src/kernels/mod.rs): wrapping integers, f16/bf16
widened to f32 and rounded back to nearest even after every step, min/max that keep the
destination unless the source compares smaller/larger, and the average's epilogue.
"""

import ctypes
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "core", "src", "kernels", "cuda", "reduce.cu")
PTX = os.path.join(ROOT, "core", "src", "kernels", "cuda", "reduce.ptx")
PINS = ["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvcc-cu12==12.9.86"]
ARCH = "compute_70"
CHECK_SMS = ["sm_70", "sm_80", "sm_90"]


def venv():
    d = os.environ.get("ACSPEED_CUDA_VENV") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "acspeed", "cuda-venv")
    py = os.path.join(d, "bin", "python")
    stamp = os.path.join(d, "pins.txt")
    if not (os.path.exists(stamp) and open(stamp).read() == "\n".join(PINS)):
        subprocess.run([sys.executable, "-m", "venv", d], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *PINS], check=True)
        open(stamp, "w").write("\n".join(PINS))
    site = subprocess.run([py, "-c", "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    nv = os.path.join(site, "nvidia")
    return (os.path.join(nv, "cuda_nvrtc", "lib", "libnvrtc.so.12"),
            os.path.join(nv, "cuda_nvcc", "bin", "ptxas"))


def compile_ptx(libnvrtc):
    lib = ctypes.CDLL(libnvrtc)
    src = open(SRC, "rb").read()
    prog = ctypes.c_void_p()

    def ok(rc, what):
        if rc != 0:
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            sys.exit(f"cuda_kernels: {what}: {lib.nvrtcGetErrorString(rc).decode()}")

    ok(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"reduce.cu", 0, None, None), "create")
    opts = [f"--gpu-architecture={ARCH}".encode(), b"--std=c++14"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit(f"cuda_kernels: NVRTC failed on {SRC}:\n{log.value.decode()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    ok(lib.nvrtcGetPTX(prog, ptx), "get PTX")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


# ---- the reference, from the CPU kernels' rules --------------------------------------------

DTYPES = {  # name: (struct code, size, kind)
    "f32": ("f", 4, "float"), "f64": ("d", 8, "float"), "f16": ("H", 2, "f16"),
    "bf16": ("H", 2, "bf16"), "i32": ("i", 4, "int"), "i64": ("q", 8, "int"),
    "i8": ("b", 1, "int"), "u8": ("B", 1, "int"),
}
ARITH = ["sum", "prod", "min", "max"]
BITWISE = ["band", "bor", "bxor"]


def f32(x):
    """Round a Python float to binary32 (nearest even), as the device does per operation."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def f32_add(a, b):
    return f32(a + b)


def f16_widen(h):
    # struct's 'e' keeps NaN payloads loosely; NaN only needs to stay NaN here (checked so).
    return struct.unpack("e", struct.pack("H", h))[0]


def f16_narrow(x):
    if math.isnan(x):
        return None  # any quiet NaN
    try:
        return struct.unpack("H", struct.pack("e", x))[0]
    except OverflowError:
        return 0x7C00 | (0x8000 if x < 0 else 0)


def bf16_widen(h):
    return struct.unpack("f", struct.pack("I", h << 16))[0]


def bf16_narrow(x):
    if math.isnan(x):
        return None
    b = struct.unpack("I", struct.pack("f", x))[0]
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def wrap(v, code):
    bits = struct.calcsize(code) * 8
    v &= (1 << bits) - 1
    if code.islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def ref_op(dt, op, a, b):
    code, _, kind = DTYPES[dt]
    if kind == "int":
        return wrap({"sum": a + b, "prod": a * b, "min": b if b < a else a,
                     "max": b if b > a else a, "band": a & b, "bor": a | b,
                     "bxor": a ^ b}[op], code)
    if kind == "float":
        rnd = f32 if dt == "f32" else (lambda v: v)
        if op == "sum":
            return rnd(a + b)
        if op == "prod":
            try:
                return rnd(a * b)
            except OverflowError:
                return math.inf
        if op == "min":
            return b if b < a else a
        return b if b > a else a
    widen, narrow = (f16_widen, f16_narrow) if kind == "f16" else (bf16_widen, bf16_narrow)
    x, y = widen(a), widen(b)
    r = {"sum": lambda: f32(x + y), "prod": lambda: f32(x * y),
         "min": lambda: y if y < x else x, "max": lambda: y if y > x else x}[op]()
    return narrow(r)


def ref_avg(dt, v, count):
    code, _, kind = DTYPES[dt]
    if kind == "int":
        q = abs(v) // count
        return wrap(q if v >= 0 else -q, code)
    if dt == "f32":
        return f32(v / count)
    if dt == "f64":
        return v / count
    widen, narrow = (f16_widen, f16_narrow) if kind == "f16" else (bf16_widen, bf16_narrow)
    return narrow(f32(widen(v) / f32(count)))


def samples(dt, n, rng):
    code, size, kind = DTYPES[dt]
    if kind == "int":
        lo, hi = (-(1 << (size * 8 - 1)), (1 << (size * 8 - 1)) - 1) if code.islower() else (0, 255)
        edge = [lo, hi, 0, 1, -1 if code.islower() else 2]
        return edge + [rng.randint(lo, hi) for _ in range(n - len(edge))]
    if kind == "float":
        edge = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45 if dt == "f32" else 5e-324,
                3.4e38 if dt == "f32" else 1.7e308]
        vals = edge + [rng.uniform(-1e6, 1e6) for _ in range(n - len(edge))]
        return [f32(v) if dt == "f32" else v for v in vals]
    # f16/bf16 as bits: NaN, infinities, zeros, subnormals, the largest finite, random bits.
    edge = [0x7E00, 0x7C00, 0xFC00, 0x0000, 0x8000, 0x0001, 0x03FF, 0x7BFF] if kind == "f16" else \
        [0x7FC0, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x007F, 0x7F7F]
    nan = (lambda h: (h & 0x7C00) == 0x7C00 and (h & 0x3FF)) if kind == "f16" else \
        (lambda h: (h & 0x7F80) == 0x7F80 and (h & 0x7F))
    out = edge[:]
    while len(out) < n:
        h = rng.randrange(0, 1 << 16)
        if not nan(h):
            out.append(h)
    return out


def same(dt, got, want):
    kind = DTYPES[dt][2]
    if want is None:  # a NaN of a half type: any NaN
        return (got & 0x7C00) == 0x7C00 and (got & 0x3FF) if kind == "f16" else \
            (got & 0x7F80) == 0x7F80 and (got & 0x7F)
    if kind == "float" and isinstance(want, float) and math.isnan(want):
        return math.isnan(got)
    if kind == "float":
        return struct.pack(DTYPES[dt][0], got) == struct.pack(DTYPES[dt][0], want)
    return got == want


def host_test():
    """Every kernel, compiled as host C++, against the reference."""
    with tempfile.TemporaryDirectory() as d:
        so = os.path.join(d, "reduce.so")
        subprocess.run(["g++", "-O2", "-x", "c++", "-shared", "-fPIC", "-ffp-contract=off",
                        "-o", so, SRC], check=True)
        lib = ctypes.CDLL(so)
    rng = random.Random(7)
    n = 257
    checked = 0
    for dt, (code, size, kind) in DTYPES.items():
        ops = ARITH + (BITWISE if kind == "int" else [])
        ctype = {"f": ctypes.c_float, "d": ctypes.c_double}.get(code)
        for op in ops:
            a, b, c = samples(dt, n, rng), samples(dt, n, rng), samples(dt, n, rng)
            rng.shuffle(b)
            rng.shuffle(c)
            def buf(vals):
                raw = struct.pack(f"{n}{code}", *vals)
                return ctypes.create_string_buffer(raw, len(raw))
            dst, src = buf(a), buf(b)
            getattr(lib, f"acspeed_reduce_{dt}_{op}")(dst, src, ctypes.c_uint64(n))
            got = struct.unpack(f"{n}{code}", dst.raw)
            for i in range(n):
                want = ref_op(dt, op, a[i], b[i])
                if not same(dt, got[i], want):
                    sys.exit(f"cuda_kernels: acspeed_reduce_{dt}_{op}: element {i}: "
                             f"{a[i]!r} {op} {b[i]!r} gave {got[i]!r}, the CPU rule gives {want!r}")
                checked += 1
            # The fan: dst (op) b (op) c, folded left to right.
            dst, s1, s2 = buf(a), buf(b), buf(c)
            ptrs = (ctypes.c_void_p * 2)(ctypes.addressof(s1), ctypes.addressof(s2))
            getattr(lib, f"acspeed_fan_{dt}_{op}")(dst, ptrs, ctypes.c_uint32(2),
                                                  ctypes.c_uint64(n))
            got = struct.unpack(f"{n}{code}", dst.raw)
            for i in range(n):
                first = ref_op(dt, op, a[i], b[i])
                if first is None:
                    continue  # a half NaN's bits are not pinned by the reference
                want = ref_op(dt, op, first, c[i])
                if not same(dt, got[i], want):
                    sys.exit(f"cuda_kernels: acspeed_fan_{dt}_{op}: element {i}: gave {got[i]!r}, "
                             f"the CPU rule gives {want!r}")
                checked += 1
        vals = samples(dt, n, rng)
        raw = struct.pack(f"{n}{code}", *vals)
        dst = ctypes.create_string_buffer(raw, len(raw))
        getattr(lib, f"acspeed_avg_{dt}")(dst, ctypes.c_uint64(n), ctypes.c_uint64(3))
        got = struct.unpack(f"{n}{code}", dst.raw)
        for i in range(n):
            want = ref_avg(dt, vals[i], 3)
            if not same(dt, got[i], want):
                sys.exit(f"cuda_kernels: acspeed_avg_{dt}: {vals[i]!r} / 3 gave {got[i]!r}, "
                         f"the CPU rule gives {want!r}")
            checked += 1
    return checked


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    libnvrtc, ptxas = venv()
    ptx = compile_ptx(libnvrtc)
    if mode == "generate":
        open(PTX, "w").write(ptx)
        print(f"cuda_kernels: wrote {os.path.relpath(PTX, ROOT)} ({len(ptx)} bytes, {ARCH})")
        return
    if mode != "check":
        sys.exit(f"cuda_kernels: unknown mode '{mode}' (generate or check)")
    if not os.path.exists(PTX) or open(PTX).read() != ptx:
        sys.exit(f"cuda_kernels: {os.path.relpath(PTX, ROOT)} is not what "
                 f"{os.path.relpath(SRC, ROOT)} compiles to: run `python3 scripts/cuda_kernels.py "
                 "generate` and commit it")
    for sm in CHECK_SMS:
        out = subprocess.run([ptxas, f"--gpu-name={sm}", "-o", os.devnull, PTX],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"cuda_kernels: ptxas refuses the PTX for {sm}: {out.stderr.strip()}")
    kernels = ptx.count(".entry ")
    checked = host_test()
    print(f"cuda_kernels: PTX current ({kernels} kernels), ptxas accepts it for "
          f"{', '.join(CHECK_SMS)}; {checked} elements match the CPU kernels' rules on the host")


if __name__ == "__main__":
    main()
