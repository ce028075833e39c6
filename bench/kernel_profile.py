#!/usr/bin/env python3
"""Per-kernel time of one training step, from Nsight Compute's CSV (bench/kernel_profile.sh).

Groups kernels by a short name (template arguments dropped), sums gpu__time_duration, and prints
the groups by total time with their share of the step. Where the CSV also has DRAM bytes
(kernel_profile.sh with FATHOM_PROFILE_BYTES=1), each group's bytes moved and the rate it moved
them at (GB/s of the time it ran) follow: a memory-bound kernel far below the card's bandwidth is
one worth rewriting.
Usage: bench/kernel_profile.py NCU_CSV [--top N]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict

UNIT_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
           "second": 1e9, "s": 1e9}


def short_name(name: str) -> str:
    name = re.sub(r"\(.*$", "", name)          # drop the argument list
    depth, out = 0, []
    for ch in name:                              # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).replace("void ", "").strip()
    return name.split("::")[-1] if "cutlass" not in name else name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines first
    rows = list(csv.DictReader(lines))
    if not rows:
        print(f"kernel_profile.py: no kernel rows in {a.csv}", file=sys.stderr)
        return 1
    total_ns, count, dram = defaultdict(float), defaultdict(int), defaultdict(float)
    for r in rows:
        name = r.get("Metric Name")
        value = float(r["Metric Value"].replace(",", ""))
        k = short_name(r["Kernel Name"])
        if name == "gpu__time_duration.sum":
            total_ns[k] += value * UNIT_NS.get(r.get("Metric Unit", "nsecond").strip(), 1.0)
            count[k] += 1
        elif name in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            dram[k] += value  # --print-units base: bytes
    step = sum(total_ns.values())
    with_bytes = bool(dram)
    print(f"{sum(count.values())} kernels, {step / 1e6:.2f} ms of kernel time in the profiled step"
          + (f", {sum(dram.values()) / 1e9:.2f} GB of DRAM traffic" if with_bytes else ""))
    print(f"{'kernel':<60} {'calls':>6} {'ms':>9} {'share':>7}"
          + (f" {'GB':>8} {'GB/s':>7}" if with_bytes else ""))
    for k, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[: a.top]:
        line = f"{k[:60]:<60} {count[k]:>6} {ns / 1e6:>9.3f} {100 * ns / step:>6.1f}%"
        if with_bytes:
            line += f" {dram[k] / 1e9:>8.2f} {dram[k] / ns:>7.0f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
