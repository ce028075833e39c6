#!/usr/bin/env python3
"""Side-by-side table of fathom-bench and bench/torch_baseline.py results from one run.

Usage: python3 bench/compare.py FATHOM.jsonl TORCH.jsonl
Prints, per workload: PyTorch eager and torch.compile, then fathom per policy (and precision when
not bf16), with tokens/s,
the ratio to torch.compile, MFU and peak memory. Only compares lines from the same file pair
(one run, one card)."""
import json
import sys


def load(path):
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip())
        return 2
    fathom, torch = load(argv[1]), load(argv[2])
    workloads = []
    for r in torch + fathom:
        if r.get("workload") not in workloads:
            workloads.append(r.get("workload"))
    cards = {r.get("device") for r in fathom} | {r.get("gpu") for r in torch}
    print(f"cards: {', '.join(sorted(str(c) for c in cards))}")
    head = f"{'workload':<12} {'implementation':<28} {'tokens/s':>10} {'vs compile':>10} {'MFU':>6} {'peak GiB':>9}"
    print(head)
    print("-" * len(head))
    for w in workloads:
        base = next((r for r in torch if r.get("workload") == w and r.get("mode") == "compile" and "error" not in r), None)
        ref = base["tokens_per_s"] if base else None
        rows = []
        for r in torch:
            if r.get("workload") != w:
                continue
            if "error" in r:
                rows.append((f"torch {r.get('mode')}", None, None, None))
            else:
                rows.append((f"torch {r['mode']}", r["tokens_per_s"], r.get("mfu"), r.get("peak_mem_gib")))
        for r in fathom:
            if r.get("workload") == w:
                name = f"fathom {r['policy']}"
                if r.get("precision") not in (None, "bf16"):
                    name += f" {r['precision']}"
                rows.append((name, r["tokens_per_s"], r.get("mfu"), r.get("peak_gib")))
        for name, tps, mfu, peak in rows:
            if tps is None:
                print(f"{w:<12} {name:<28} {'error':>10}")
                continue
            ratio = f"{tps / ref:.2f}x" if ref else "-"
            mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            peak_s = f"{peak:.1f}" if peak is not None else "-"
            print(f"{w:<12} {name:<28} {tps:>10.0f} {ratio:>10} {mfu_s:>6} {peak_s:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
