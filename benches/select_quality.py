#!/usr/bin/env python3
"""Selection quality on this machine (issue "Simulator and selector", item 7).

For each configuration and size, in each of RUNS rounds: every candidate algorithm forced
(`--algo`), then `auto`'s fixed rule, then `ACSPEED_AUTOTUNE=1` with a fresh cache (its
trials run in the warm-up, so the timed iterations run the algorithm it chose), and with
`--host-model F` also `auto` choosing by simulation on that CPU host model (ACSPEED_HOST_MODEL,
with the network's rates under netsim; emulated hosts share this VM's cores, so their copy
of the model has cores / 2). Under netsim: hosts 2,2 and 3,1,2. Each is an
acspeed-bench run whose results are `--check`ed. Prints markdown: per size the best
candidate (lowest median over the rounds), and for auto and autotune what they ran and how
far their median is from that best. Target: within 10%.

  python3 benches/select_quality.py [--runs 3] [--netsim] [--host-model here.json]
  (--netsim needs root; here.json from `acspeed simulate --here --json --sizes 4K`)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics as st
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "acspeed-bench")
NETSIM = os.environ.get("NETSIM", os.path.join(ROOT, "scripts", "netsim.sh"))


def bench(shape: list[int], args: list[str], env: dict[str, str]) -> list[dict]:
    e = dict(os.environ, **env)
    if len(shape) == 1:
        cmd = [BENCH, "-n", str(shape[0]), *args, "--json", "--check"]
        out = subprocess.run(cmd, env=e, check=True, capture_output=True, text=True).stdout
    else:
        raw = tempfile.mkdtemp()
        sh = ". benches/netsim_lib.sh; netsim_job \"$@\""
        cmd = ["bash", "-c", sh, "x", ",".join(map(str, shape)), *args, "--json", "--check"]
        e.update(NETSIM=NETSIM, BENCH=BENCH, RAW=raw)
        out = subprocess.run(cmd, env=e, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    assert all(r["wrong"] == 0 for r in rows), rows
    return rows


# Warm-up iterations of the auto and autotune runs: the autotuner tries each of its candidates
# 3 times, and it has up to 8 (every algorithm; more than a configuration's forced list when
# that leaves some out), so the timed iterations run its decision, not a trial.
AUTOTUNE_WARMUP = 3 * 8 + 2


def measure(title: str, shape: list[int], algos: list[str], sizes: str, iters: int, runs: int,
            model: dict[str, str] | None = None) -> list[str]:
    labels = [("auto", {}), ("autotune", {"ACSPEED_AUTOTUNE": "1"})]
    if model:
        labels.append(("model", model))
    base = ["-b", sizes.split(",")[0], "-e", sizes.split(",")[-1], "-f", "4", "--iters", str(iters)]
    t: dict[tuple[str, int], list[float]] = {}
    ran: dict[tuple[str, int], list[str]] = {}
    for _ in range(runs):
        for a in algos:
            for r in bench(shape, base + ["-w", "3", "--algo", a], {}):
                t.setdefault((a, r["bytes"]), []).append(r["time_us"])
        for label, env in labels:
            with tempfile.TemporaryDirectory() as d:
                env = dict(env, ACSPEED_AUTOTUNE_FILE=os.path.join(d, "cache.json"))
                # Warm-up long enough for every trial: candidates x 3 (at most 8 x 3).
                for r in bench(shape, base + ["-w", str(AUTOTUNE_WARMUP)], env):
                    t.setdefault((label, r["bytes"]), []).append(r["time_us"])
                    ran.setdefault((label, r["bytes"]), []).append(r["algo"])
    sizes_b = sorted({b for _, b in t})
    out = [f"**{title}** (candidates: {', '.join(algos)})", "",
           "| size | best candidate (median us) | "
           + " | ".join(f"{l} ran | {l} / best" for l, _ in labels) + " |",
           "|---|---|" + "---|---:|" * len(labels)]
    worst = {l: 0.0 for l, _ in labels}
    for b in sizes_b:
        med = {a: st.median(t[(a, b)]) for a in algos}
        best = min(algos, key=lambda a: med[a])
        cells = []
        for label, _ in labels:
            m = st.median(t[(label, b)])
            ratio = m / med[best]
            worst[label] = max(worst[label], ratio)
            picks = ran[(label, b)]
            cells += ["/".join(sorted(set(picks))) + (f" ({len(picks)} runs)" if len(set(picks)) > 1 else ""), f"{ratio:.2f}"]
        size = f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"
        out.append(f"| {size} | {best} ({med[best]:.0f}) | " + " | ".join(cells) + " |")
    out += ["", "worst ratio to the best: " + ", ".join(f"{l} {w:.2f}" for l, w in worst.items()), ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--netsim", action="store_true")
    ap.add_argument("--host-model", help="also run auto with ACSPEED_HOST_MODEL=this file")
    ap.add_argument("--only-netsim", action="store_true", help="skip the shared-memory configurations")
    ap.add_argument("--only-shape", help="under --netsim, run only this host shape (e.g. 3,1,2)")
    a = ap.parse_args()
    model = {"ACSPEED_HOST_MODEL": os.path.abspath(a.host_model)} if a.host_model else None
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "acspeed-bench"], cwd=ROOT, check=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} vCPU {cpu}, runs={a.runs}", ""]
    if not a.only_netsim:
        lines += measure("shared memory, 1 host x 2 ranks", [2], ["ring", "cpu_reduce"], "256K,64M", 10, a.runs, model)
        lines += measure("shared memory, 1 host x 4 ranks", [4], ["ring", "tree", "cpu_reduce"], "256K,64M", 10,
                         a.runs, model)
    if a.netsim:
        subprocess.run(["bash", NETSIM, "down", "--kill"], capture_output=True)
        subprocess.run(["bash", NETSIM, "up", "3", "--rate", "2gbit", "--flow-rate", "500mbit", "--flow-slots", "256"],
                       check=True, capture_output=True)
        net_model = None
        if model:
            # Two emulated hosts share this VM's cores: each has half of them.
            m = json.load(open(a.host_model))
            h = m.get("host", m)
            h["cores"] = h["cores"] / 2
            path = os.path.join(tempfile.mkdtemp(), "per-host.json")
            json.dump(m, open(path, "w"))
            net_model = {"ACSPEED_HOST_MODEL": path, "ACSPEED_NET_GBPS": "2", "ACSPEED_FLOW_GBPS": "0.5"}
        want = (lambda sh: a.only_shape in (None, sh))
        try:
            if want("2,2"):
                lines += measure("netsim 2 Gbit/s (500 Mbit/s per flow), hosts 2,2", [2, 2],
                                 ["ring", "tree", "hybrid:ring", "hybrid:tree", "hybrid:butterfly", "hybrid:ps",
                                  "cpu_reduce"], "256K,16M", 5, a.runs, net_model)
            # Hosts of different sizes: the one-rank host drives every stripe (the variants
            # that lose there by 25-50% are left out to keep the run short).
            if want("3,1,2"):
                lines += measure("netsim 2 Gbit/s (500 Mbit/s per flow), hosts 3,1,2", [3, 1, 2],
                                 ["ring", "tree", "hybrid:ring", "cpu_reduce"], "256K,64M", 3, a.runs, net_model)
        finally:
            subprocess.run(["bash", NETSIM, "down", "--kill"], capture_output=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
