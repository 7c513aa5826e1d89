#!/usr/bin/env python
"""acspeed against torch's gloo backend and this machine's memcpy limit, in one run.

Runs, back to back on this machine: ../shared/bench/limits.py (memcpy), the gloo harness
../shared/bench/gloo_allreduce.py, and acspeed-bench with the same sizes and world sizes, then
prints a markdown table of busbw and time with ratios. Usage:

  python benches/compare_gloo.py --worlds 2 4 [--max-bytes 268435456] [--out docs/bench-local.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def memcpy_gbps() -> float:
    code = (
        "import sys; sys.path.insert(0, %r); import limits; print(limits.memcpy_bw())" % SHARED
    )
    return float(run([sys.executable, "-c", code]).strip().splitlines()[-1])


def gloo(world: int, lo: int, hi: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        run([sys.executable, os.path.join(SHARED, "gloo_allreduce.py"), "-W", str(world), "--min-bytes", str(lo),
             "--max-bytes", str(hi), "--json", f.name])
        return {r["bytes"]: r for r in json.load(open(f.name))["rows"]}


def acspeed(world: int, lo: int, hi: int) -> dict:
    exe = os.path.join(ROOT, "target", "release", "acspeed-bench")
    out = run([exe, "-n", str(world), "-b", str(lo), "-e", str(hi), "-f", "4", "--check", "--json", "-w", "3", "--iters", "20"])
    return {r["bytes"]: r for r in json.loads(out.strip().splitlines()[-1])}


def human(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--min-bytes", type=int, default=4 << 10)
    ap.add_argument("--max-bytes", type=int, default=256 << 20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "acspeed-bench"], cwd=ROOT, check=True)
    mc = memcpy_gbps()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        f"Measured {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} vCPU ({cpu}), "
        f"Linux {platform.release()}; single-thread memcpy {mc:.2f} GB/s (shared/bench/limits.py). "
        "Both sides: float32 sum, time = median of the slowest rank, busbw = algbw x 2(W-1)/W.",
        "",
    ]
    for w in a.worlds:
        g = gloo(w, a.min_bytes, a.max_bytes)
        s = acspeed(w, a.min_bytes, a.max_bytes)
        lines += [f"**{w} ranks, one host**", "",
                  "| size | gloo time us | acspeed time us | time ratio | gloo busbw GB/s | acspeed busbw GB/s | busbw ratio | acspeed busbw / memcpy | acspeed #wrong |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in sorted(set(g) & set(s)):
            gr, sr = g[b], s[b]
            lines.append(
                f"| {human(b)} | {gr['time_us']:.1f} | {sr['time_us']:.1f} | {sr['time_us'] / gr['time_us']:.3f}x | "
                f"{gr['busbw_GBs']:.3f} | {sr['busbw_gbps']:.3f} | {sr['busbw_gbps'] / gr['busbw_GBs']:.2f}x | "
                f"{sr['busbw_gbps'] / mc:.0%} | {sr['wrong']} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
