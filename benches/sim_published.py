#!/usr/bin/env python3
"""The GPU model against published NCCL figures.

For every machine in docs/GPU_MODEL.md's source list (real nccl-tests results their owners
published), simulate NCCL's algorithm there -- acspeed's `ring`, which on an NVLink mesh is
NCCL's set of rings, one channel each -- with `acspeed simulate` on a fixture of the machine,
and print published busbw, predicted busbw and the error, per machine and size.

    python3 benches/sim_published.py                 # the table
    python3 benches/sim_published.py --check         # exit 1 if a point misses the target
    python3 benches/sim_published.py --json          # rows as JSON
    python3 benches/sim_published.py --claims        # also the seed's claims (n-trees,
                                                     # CPU-Reduce, hybrid) against NCCL

The target: within 15% of the published figure (of the nearest source where several
published one size, all shown) at >= 64 MiB, except the points listed in
KNOWN_MISSES (each with the reason the model does not describe it; --check fails on any other
miss, and on a known miss that no longer misses, so the list stays true).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
PUB = os.path.join(ROOT, "benches", "published")
MiB = 1 << 20
GiB = 1 << 30

# Published busbw (GB/s) per machine and size: benches/published/nccl.json, which
# `acspeed explain` also reads to name NCCL's figure beside its pick.
with open(os.path.join(ROOT, "benches", "published", "nccl.json")) as f:
    PUBLISHED = {m["machine"]: {int(b): v for b, v in m["points"].items()} for m in json.load(f)}

# (name, fixture args, simulate args, published points {bytes: [busbw GB/s, ...]}, source)
MACHINES = [
    (
        "8x V100-SXM2, DGX-1V cube-mesh",
        ["--nvidia-smi-topo", f"{FIX}/topo/v100-cube-mesh/nvidia-smi.txt", "--gpu", "V100-SXM2"],
        [],
        PUBLISHED["8x V100-SXM2, DGX-1V cube-mesh"],
        "konnase 2019 (64, 128 MiB); OCI BM.GPU3.8, NGC 24.06 (1 GiB, ip 135.4); "
        "fixture: a DGX-1V `nvidia-smi topo -m` (tests/fixtures/topo/v100-cube-mesh), "
        "OCI's topology not published",
    ),
    (
        "8x A100-SXM4, NVSwitch",
        ["--nvidia-smi-topo", f"{FIX}/nvsmi/06-a100-8gpu-nv12-17nic.txt", "--gpu", "A100-SXM4"],
        [],
        PUBLISHED["8x A100-SXM4, NVSwitch"],
        "Azure ND A100 v4, NCCL 2.18.5, in-place (64 MiB-8 GiB); AWS p4d, NCCL 2.9.9 "
        "(1 GiB, nccl#527); OCI BM.GPU4.8 (10 GiB); fixture: an 8x A100 NV12 box "
        "(tests/fixtures/nvsmi/06)",
    ),
    (
        "8x RTX 4090, 2x EPYC 7542, no P2P",
        ["--nvidia-smi-topo", f"{PUB}/rtx4090-8gpu-allsys.txt", "--gpu", "GeForce RTX 4090",
         "--cpu", "AMD EPYC 7542"],
        [],
        PUBLISHED["8x RTX 4090, 2x EPYC 7542, no P2P"],
        "charlie0129's blog, stock driver; fixture written from the published topology "
        "(every pair SYS, one GPU per NUMA node): benches/published/rtx4090-8gpu-allsys.txt",
    ),
    (
        "2x RTX 2080 Ti, NVLink bridge (2 links)",
        ["--nvidia-smi-topo", f"{PUB}/rtx2080ti-2gpu-nv2.txt", "--gpu", "GeForce RTX 2080 Ti"],
        [],
        PUBLISHED["2x RTX 2080 Ti, NVLink bridge (2 links)"],
        "nccl-tests#44, NCCL 2.6.4 (128 MiB: out-of-place 20.3, in-place 21.9); fixture "
        "written from the published topology: benches/published/rtx2080ti-2gpu-nv2.txt",
    ),
    (
        "2 hosts x 1 V100, 32 Gbit/s TCP",
        ["--nvidia-smi-topo", f"{FIX}/topo/v100-cube-mesh/nvidia-smi.txt", "--gpu", "V100-SXM2"],
        ["--hosts", "2", "--ranks-per-host", "1", "--net-gbps", "32"],
        PUBLISHED["2 hosts x 1 V100, 32 Gbit/s TCP"],
        "GCP, NCCL 2.4.7 sockets (nccl#209): 30.6-31.4 Gbit/s busbw from 32 MiB",
    ),
    (
        "2 hosts x 8 V100, 32 Gbit/s TCP",
        ["--nvidia-smi-topo", f"{FIX}/topo/v100-cube-mesh/nvidia-smi.txt", "--gpu", "V100-SXM2"],
        ["--hosts", "2", "--net-gbps", "32"],
        PUBLISHED["2 hosts x 8 V100, 32 Gbit/s TCP"],
        "GCP, NCCL 2.4.7 sockets (nccl#209): 14.5-14.9 Gbit/s at 64 MiB",
    ),
    (
        "4 hosts x 8 V100-32G, 100 Gbit/s TCP",
        ["--nvidia-smi-topo", f"{FIX}/topo/v100-cube-mesh/nvidia-smi.txt", "--gpu", "V100-SXM2"],
        ["--hosts", "4", "--net-gbps", "100"],
        PUBLISHED["4 hosts x 8 V100-32G, 100 Gbit/s TCP"],
        "nccl#450: best 4-6 GB/s at 8-128 MiB (32-48% of the link)",
    ),
]

# (machine, bytes) -> why the model does not describe that published point.
KNOWN_MISSES = {
    ("8x A100-SXM4, NVSwitch", 64 * MiB):
        "one source (Azure, in-place) whose curve rises from 167 to 228 GB/s between 64 MiB "
        "and 1 GiB, marginally 182 GB/s between 64 and 128 MiB; NCCL's own tuning model "
        "(tuning.cc constants, 240 GB/s, 56 us) predicts 215 there too. The three sources at "
        ">= 1 GiB agree with the model within 5%.",
    ("8x A100-SXM4, NVSwitch", 128 * MiB):
        "as at 64 MiB (same single source).",
    ("2 hosts x 8 V100, 32 Gbit/s TCP", 64 * MiB):
        "NCCL 2.4.7's socket transport reached 46% of the link with 8 GPUs per host (the "
        "thread's own figure); the model gives the link's rate, as acspeed's transport "
        "reaches on netsim (99%).",
    ("4 hosts x 8 V100-32G, 100 Gbit/s TCP", 64 * MiB):
        "NCCL's socket transport at 32-48% of a 100 Gbit/s link (the issue's own figure); "
        "the model gives the link's rate.",
    ("4 hosts x 8 V100-32G, 100 Gbit/s TCP", 128 * MiB):
        "as at 64 MiB.",
}

TARGET = 0.15


def acspeed_bin():
    exe = os.path.join(ROOT, "target", "release", "acspeed")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "acspeed-tools", "--bin",
                        "acspeed"], cwd=ROOT, check=True)
    return exe


def simulate(exe, machine_args, extra, sizes, algos):
    cmd = [exe, "simulate", *machine_args, *extra, "--json", "--algo", ",".join(algos),
           "--sizes", ",".join(str(s) for s in sizes)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"sim_published: {' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["rows"]


def fmt_size(b):
    return f"{b // GiB} GiB" if b >= GiB else f"{b // MiB} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--claims", action="store_true")
    ap.add_argument("--max-bytes", type=int, default=None,
                    help="only points up to this size (CI's small scale)")
    a = ap.parse_args()
    exe = acspeed_bin()
    rows, failures = [], []
    for name, margs, extra, points, source in MACHINES:
        sizes = sorted(b for b in points if a.max_bytes is None or b <= a.max_bytes)
        if not sizes:
            continue
        pred = {r["bytes"]: r["busbw_gbps"] for r in simulate(exe, margs, extra, sizes, ["ring"])}
        for b in sizes:
            pubs = points[b]
            p = pred[b]
            errs = [(p - x) / x for x in pubs]
            # Where sources differ at a size, the truth is somewhere in their spread: the
            # error counted is the one to the nearest source (all are shown).
            nearest = min(errs, key=abs)
            ok = abs(nearest) <= TARGET
            known = (name, b) in KNOWN_MISSES
            rows.append(dict(machine=name, bytes=b, published=pubs, predicted=round(p, 2),
                             error=[round(e, 3) for e in errs], within=ok,
                             known_miss=KNOWN_MISSES.get((name, b)), source=source))
            if b >= 64 * MiB and not ok and not known:
                failures.append(f"{name} at {fmt_size(b)}: predicted {p:.1f}, published "
                                f"{pubs} ({nearest:+.0%} to the nearest)")
            if ok and known:
                failures.append(f"{name} at {fmt_size(b)} is listed as a known miss but is "
                                f"within {TARGET:.0%} now: drop it from KNOWN_MISSES")
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'machine':<40} {'size':>7} {'published GB/s':>16} {'predicted':>9} "
              f"{'error':>14}  ")
        for r in rows:
            pubs = "/".join(f"{x:.1f}" for x in r["published"])
            errs = "/".join(f"{e:+.0%}" for e in r["error"])
            mark = "" if r["within"] else ("  known miss" if r["known_miss"] else "  MISS")
            print(f"{r['machine']:<40} {fmt_size(r['bytes']):>7} {pubs:>16} "
                  f"{r['predicted']:>9.1f} {errs:>14}{mark}")
        print("\nsources:")
        for name, _, _, _, source in MACHINES:
            print(f"  {name}: {source}")
        if any(r["known_miss"] and not r["within"] for r in rows):
            print("\nknown misses (why the model does not describe them):")
            for r in rows:
                if r["known_miss"] and not r["within"]:
                    print(f"  {r['machine']}, {fmt_size(r['bytes'])}: {r['known_miss']}")
    if a.claims:
        claims(exe)
    if failures:
        print("\nsim_published: " + "; ".join(failures), file=sys.stderr)
        if a.check:
            sys.exit(1)


def claims(exe):
    """The seed's claims, predicted on the same model, against NCCL's published figures."""
    print("\nclaims against NCCL (predicted busbw GB/s; NCCL = acspeed's ring = NCCL's rings):")
    cube = ["--nvidia-smi-topo", f"{FIX}/topo/v100-cube-mesh/nvidia-smi.txt", "--gpu", "V100-SXM2"]
    cases = [
        ("n-trees, 8x V100 cube-mesh", cube, [], ["ring", "ntree"], [128 * MiB, 1 * GiB]),
        ("n-trees, 5 GPUs 0,1,2,4,5 of the cube-mesh", cube + ["--gpus", "0,1,2,4,5"], [],
         ["ring", "ntree"], [128 * MiB]),
        ("n-trees, 6 GPUs 0-5 of the cube-mesh", cube + ["--gpus", "0,1,2,3,4,5"], [],
         ["ring", "ntree"], [128 * MiB]),
        ("CPU-Reduce, 8x RTX 4090 PCIe, no P2P, one NUMA node per GPU",
         ["--nvidia-smi-topo", f"{PUB}/rtx4090-8gpu-allsys.txt", "--gpu", "GeForce RTX 4090",
          "--cpu", "AMD EPYC 7542"], [], ["ring", "cpu_reduce"], [4 * MiB, 128 * MiB]),
        ("CPU-Reduce, the same box as two NUMA nodes (one per socket)",
         ["--nvidia-smi-topo", f"{PUB}/rtx4090-8gpu-allsys-nps1.txt", "--gpu",
          "GeForce RTX 4090", "--cpu", "AMD EPYC 7542"], [], ["ring", "cpu_reduce"],
         [4 * MiB, 128 * MiB]),
        ("hybrid, 2 hosts x 8 V100, 32 Gbit/s", cube, ["--hosts", "2", "--net-gbps", "32"],
         ["ring", "hybrid:ring", "hybrid:tree"], [128 * MiB]),
    ]
    for title, margs, extra, algos, sizes in cases:
        rows = simulate(exe, margs, extra, sizes, algos)
        for b in sizes:
            by = {r["algo"]: r["busbw_gbps"] for r in rows if r["bytes"] == b}
            ring = by["ring"]
            rest = ", ".join(f"{k} {v:.1f} ({v / ring:.2f}x)" for k, v in by.items()
                             if k != "ring")
            print(f"  {title}, {fmt_size(b)}: NCCL's rings {ring:.1f}; {rest}")


if __name__ == "__main__":
    main()
