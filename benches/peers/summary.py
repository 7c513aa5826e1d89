#!/usr/bin/env python3
"""The table of benches/peers.sh: per world size and message size, busbw GB/s of acspeed (min /
median / max over runs) and each peer (median), and acspeed's median against the best peer's
median; a run with wrong results is an error.

  python3 benches/peers/summary.py OUT 2 4 -- acspeed ompi mpich impi
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

NAMES = {"acspeed": "acspeed", "ompi": "Open MPI", "mpich": "MPICH", "impi": "Intel MPI"}


def human(b: int) -> str:
    for unit, sh in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << sh and b % (1 << sh) == 0:
            return f"{b >> sh} {unit}"
    return f"{b} B"


def load(out: Path, system: str, w: str) -> dict[int, list[float]]:
    by_size: dict[int, list[float]] = {}
    for f in sorted(out.glob(f"{system}-w{w}-r*.json")):
        text = f.read_text().strip()
        if not text:
            raise SystemExit(f"{f}: empty (the run failed; rerun it alone to see why)")
        for r in json.loads(text):
            if r.get("wrong", 0):
                raise SystemExit(f"{f}: {r['wrong']} wrong elements at {r['bytes']} bytes")
            by_size.setdefault(int(r["bytes"]), []).append(float(r["busbw_gbps"]))
    return by_size


def main() -> None:
    args = sys.argv[1:]
    cut = args.index("--")
    out, worlds, systems = Path(args[0]), args[1:cut], args[cut + 1 :]
    peers = [s for s in systems if s != "acspeed"]
    for w in worlds:
        data = {s: load(out, s, w) for s in systems}
        head = ["size", "acspeed min / median / max"] + [NAMES.get(p, p) for p in peers]
        if peers and "acspeed" in systems:
            head.append("acspeed / best")
        print(f"\nW={w}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for size in sorted(data.get("acspeed") or data[systems[0]]):
            a = data.get("acspeed", {}).get(size, [])
            row = [human(size)]
            row.append(f"{min(a):.3g} / {statistics.median(a):.3g} / {max(a):.3g}" if a else "-")
            med = {p: statistics.median(data[p][size]) for p in peers if data[p].get(size)}
            row += [f"{med[p]:.3g}" if p in med else "-" for p in peers]
            if a and med:
                best = max(med, key=med.get)
                row.append(f"{statistics.median(a) / med[best]:.2f}x ({NAMES.get(best, best)})")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
