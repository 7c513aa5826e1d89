#!/usr/bin/env python3
"""Selector quality on the topology fixtures (issue "Simulator and selector", item 7).

The communicator's table has an entry per quarter of each power-of-two size class (messages
of 2^(k-1)+1 ..= 2^k bytes cut at 2^(k-1) x 5/4, 6/4, 7/4, 8/4), predicted at the quarter's
largest size, and runs that entry's pick for every message in it. For every fixture, 1 and 2
hosts, and sizes from 4 KiB to 1 GiB at every eighth of each class, this compares the
predicted time of the pick the communicator would run with the best candidate's prediction at
that size. Target: within 5%. `--whole-classes` judges one pick per class instead (the table
before 2026-11-30).

  python3 benches/select_fixtures.py [--whole-classes]
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACSPEED = os.path.join(ROOT, "target", "release", "acspeed")


def rows(fixture: str, hosts: int, sizes: list[int]) -> list[dict]:
    cmd = [ACSPEED, "simulate", "--nvidia-smi-topo", fixture, "--hosts", str(hosts), "--net-gbps", "32",
           "--sizes", ",".join(map(str, sizes)), "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["rows"]


def main() -> None:
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "acspeed"], cwd=ROOT, check=True)
    whole = "--whole-classes" in sys.argv
    sizes = sorted({(1 << (k - 1)) * (8 + j) // 8 for k in range(13, 31) for j in range(1, 9)})
    print("| fixture | hosts | sizes | worst pick / best | at | pick there | best there |")
    print("|---|---:|---:|---:|---|---|---|")
    overall = 0.0
    for f in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "nvsmi", "*.txt"))):
        for hosts in (1, 2):
            rs = rows(f, hosts, sizes)
            by = {}
            for r in rs:
                by.setdefault(r["bytes"], {})[r["algo"]] = r["time_us"]
            best_at = {b: min(t, key=t.get) for b, t in by.items()}
            worst = (1.0, 0, "", "")
            for b, t in by.items():
                k = (b - 1).bit_length()
                quarters = [(1 << (k - 1)) * (4 + j) // 4 for j in range(1, 5)]
                entry = 1 << k if whole else next(q for q in quarters if q >= b)
                p = best_at[entry]
                best = min(t, key=t.get)
                ratio = t[p] / t[best]
                if ratio > worst[0]:
                    worst = (ratio, b, p, best)
            overall = max(overall, worst[0])
            at = f"{worst[1] >> 10} KiB" if worst[1] else "-"
            print(f"| {os.path.basename(f)} | {hosts} | {len(by)} | {worst[0]:.3f} | {at} | {worst[2]} | {worst[3]} |")
    print(f"\nworst over every fixture and size: {overall:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
