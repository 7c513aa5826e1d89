#!/usr/bin/env python3
"""Runs `acspeed-bench` many times in a row and reports the spread of busbw per size.

Why: shared-memory speed on these VMs was bimodal (some runs 4-5x slower than others, see
docs/PERFORMANCE.md). One run of a benchmark cannot show that; a series can. Exit status 1
when any run of any size falls below `--within` of the best run of that size.

    python3 benches/shm_series.py --runs 20 -n 2 -b 16M -e 256M          # default mode
    python3 benches/shm_series.py --runs 20 -n 2 --env ACSPEED_SHM_MODE=copy
Beside every run it prints the cache-line round trip between CPUs 0 and 1 before and after
(examples/core_pingpong.rs, built on demand): on the project's VMs it switches between about
70 and 350 ns as the hypervisor moves the vCPUs, and shared-memory speed follows it. The
summary also gives the spread within the runs whose probes were both below --fast-ns (the
vCPUs shared a cache throughout), so a regression of acspeed's own shows apart from that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("-n", type=int, default=2, help="local ranks")
    ap.add_argument("-b", default="16M")
    ap.add_argument("-e", default="256M")
    ap.add_argument("-f", default="4")
    ap.add_argument("--iters", default="10")
    ap.add_argument("--within", type=float, default=0.75, help="every run must reach this fraction of the best")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the benchmark (repeatable)")
    ap.add_argument("--bench", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "acspeed-bench"))
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--fast-ns", type=float, default=150.0, help="round trip below which the vCPUs count as sharing a cache")
    ap.add_argument("--no-probe", action="store_true", help="skip the core-to-core probe")
    a = ap.parse_args()
    env = dict(os.environ)
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    probe = None
    if not a.no_probe:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        subprocess.run(["cargo", "build", "--release", "-q", "--example", "core_pingpong"], cwd=root, check=True)
        probe = os.path.join(root, "target", "release", "examples", "core_pingpong")

    def rt() -> float:
        out = subprocess.run([probe, "0", "1", "50000"], capture_output=True, text=True, timeout=60, check=True)
        return float(out.stdout.split()[1])

    series: dict[int, list[float]] = {}
    fast: list[bool] = []
    for i in range(a.runs):
        before = rt() if probe else 0.0
        cmd = [a.bench, "-n", str(a.n), "-b", a.b, "-e", a.e, "-f", a.f, "--iters", a.iters, "--check", "--json"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            print(f"run {i + 1}: acspeed-bench exited {out.returncode}", file=sys.stderr)
            return 2
        for row in json.loads(out.stdout):
            series.setdefault(row["bytes"], []).append(row["busbw_gbps"])
        after = rt() if probe else 0.0
        fast.append(max(before, after) < a.fast_ns)
        line = f"  line round trip {before:.0f}/{after:.0f} ns" if probe else ""
        print(f"run {i + 1:2d}: " + "  ".join(f"{b >> 20}M {v[-1]:.2f}" for b, v in series.items()) + line, file=sys.stderr, flush=True)
    ok = True
    summary = []
    for b, v in sorted(series.items()):
        best = max(v)
        worst_ratio = min(v) / best if best > 0 else 0.0
        ok &= worst_ratio >= a.within
        row = {"bytes": b, "runs": len(v), "min": min(v), "median": statistics.median(v), "max": best, "min_over_max": worst_ratio}
        fv = [x for x, f in zip(v, fast) if f]
        if probe and fv:
            row["shared_cache_runs"] = {"runs": len(fv), "min": min(fv), "median": statistics.median(fv), "max": max(fv), "min_over_max": min(fv) / max(fv)}
        summary.append(row)
    if a.json:
        print(json.dumps({"ranks": a.n, "env": a.env, "rows": summary, "ok": ok}))
    else:
        print(f"# {a.runs} runs, {a.n} ranks, {' '.join(a.env) or 'default settings'}: busbw GB/s")
        print(f"{'size':>8} {'min':>7} {'median':>7} {'max':>7} {'min/max':>8}")
        for r in summary:
            print(f"{r['bytes'] >> 20:>7}M {r['min']:7.2f} {r['median']:7.2f} {r['max']:7.2f} {r['min_over_max']:8.2f}")
        if probe:
            print(f"# the {sum(fast)} runs whose vCPUs shared a cache throughout (line round trip < {a.fast_ns:.0f} ns before and after):")
            for r in summary:
                f = r.get("shared_cache_runs")
                if f:
                    print(f"{r['bytes'] >> 20:>7}M {f['min']:7.2f} {f['median']:7.2f} {f['max']:7.2f} {f['min_over_max']:8.2f}")
        print("spread OK" if ok else f"spread NOT OK: some run below {a.within:.0%} of the best")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
