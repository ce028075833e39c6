#!/usr/bin/env python3
# Test of tools/compare_policies.py's report: from hand-written run folders (metrics.jsonl,
# diagnose.json, run.json) with known answers, --report-only --no-plots must write report.md with
# the right final validation loss and perplexity, per-layer findings (last-layer variance, mean
# angular distance and loss increase over the deepest quarter), a diverged run's status, and
# statements that follow the numbers. Needs no matplotlib and no fathom binaries.
# Usage: test_compare_report.py COMPARE_PY WORK_DIR

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAILED: {what}")


def row_of(report, policy):
    """The cells of the table rows that start with `| policy |`, in order of appearance."""
    return [[c.strip() for c in l.strip().strip("|").split("|")] for l in report.splitlines()
            if l.startswith(f"| {policy} |")]


def main():
    if len(sys.argv) != 3:
        print("usage: test_compare_report.py COMPARE_PY WORK_DIR")
        return 2
    compare, work = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    runs = work / "runs"
    rng = random.Random(7)
    L = 8  # deepest quarter: blocks 7 and 8 (0-based 6, 7)
    expect = {}
    for policy, val, growth, deep_step, deep_inc in (("pre-ln", 3.25, 2.0, 0.05, 0.01), ("lns", 3.125, 1.1, 0.2, 0.3)):
        run = runs / policy
        run.mkdir(parents=True)
        var = [0.5 * growth ** l for l in range(L)]
        ang = [[0.0] + [rng.uniform(0.3, 0.6) for _ in range(1, L + 1 - l)] for l in range(L + 1)]
        ang[6][1], ang[7][1] = deep_step - 0.01, deep_step + 0.01
        inc = [rng.uniform(0.5, 2.0) for _ in range(L)]
        inc[6], inc[7] = deep_inc - 0.005, deep_inc + 0.005
        inc[2] = 9.0  # the most harmful removal: block 3
        (run / "diagnose.json").write_text(json.dumps({
            "layers": L, "loss": val, "policy": policy, "block_output_variance": var, "angular_distance": ang,
            "loss_increase": inc, "grad_norm": [0.1] * L}))
        lines = [{"step": 50, "loss": 4.0, "tokens": 25600}, {"step": 50, "layer_variance": var},
                 {"step": 100, "loss": val + 0.1, "tokens": 51200}, {"step": 100, "val_loss": val + 1.0},
                 {"step": 100, "val_loss": val}]  # a repeated step: the later line wins
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (run / "run.json").write_text(json.dumps({"policy": policy, "train": {
            "command": ["build/bin/fathom-train", "--policy", policy], "returncode": 0, "wall_s": 10.0,
            "header": ["fathom-train: test model"], "done": [], "error": None}}))
        expect[policy] = {"val": val, "last_var": var[-1], "ratio": var[-1] / var[0], "deep_ang": deep_step,
                          "deep_inc": deep_inc}
    # A run that diverged: a few metric lines, no diagnostics.
    run = runs / "post-ln"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.5, "tokens": 512}) + "\n")
    (run / "run.json").write_text(json.dumps({"policy": "post-ln", "train": {
        "command": ["build/bin/fathom-train", "--policy", "post-ln"], "returncode": 1, "wall_s": 1.0, "header": [],
        "done": [], "error": "fathom-train: error: loss is nan at step 37; last good checkpoint: none"}}))

    r = subprocess.run([sys.executable, str(compare), "--report-only", "--no-plots", "--out", str(runs),
                        "--policies", "pre-ln,lns,post-ln"], capture_output=True, text=True)
    check(r.returncode == 0, f"--report-only exits 0 (got {r.returncode}: {r.stderr})")
    report_path = runs / "report.md"
    check(report_path.is_file(), "report.md written")
    if not report_path.is_file():
        return 1
    report = report_path.read_text()

    for policy, name in (("pre-ln", "Pre-LN"), ("lns", "LNS")):
        e = expect[policy]
        rows = row_of(report, name)
        check(len(rows) == 2, f"{name} has a row in both tables (got {len(rows)})")
        if len(rows) != 2:
            continue
        loss_row, layer_row = rows
        check(loss_row[1] == "100" and loss_row[2] == "51200", f"{name}: steps and tokens (got {loss_row[1:3]})")
        check(loss_row[3] == f"{e['val']:.4f}", f"{name}: final val loss {e['val']:.4f} (got {loss_row[3]})")
        check(loss_row[4] == f"{math.exp(e['val']):.2f}", f"{name}: perplexity {math.exp(e['val']):.2f} (got {loss_row[4]})")
        check(loss_row[-1] == "ok", f"{name}: status ok (got {loss_row[-1]})")
        check(float(layer_row[1]) == float(f"{e['last_var']:.3g}"), f"{name}: last-layer variance (got {layer_row[1]})")
        check(layer_row[2] == f"{e['ratio']:.1f}", f"{name}: last/first variance {e['ratio']:.1f} (got {layer_row[2]})")
        check(layer_row[4] == f"{e['deep_ang']:.4f}", f"{name}: deep angular distance {e['deep_ang']:.4f} (got {layer_row[4]})")
        check(layer_row[6].startswith(f"{e['deep_inc']:.4f} / {e['deep_inc'] + 0.005:.4f}"),
              f"{name}: deep removal mean / max (got {layer_row[6]})")
        check(layer_row[7] == "block 3", f"{name}: most harmful removal is block 3 (got {layer_row[7]})")

    post = row_of(report, "Post-LN")
    check(bool(post) and post[0][-1] == "diverged: loss nan at step 37", f"Post-LN's status (got {post[0][-1] if post else None})")
    check("LNS is 0.1250 nats lower, as the paper expects" in report, "the validation-loss statement follows the numbers")
    check("smaller, as the paper expects" in report, "the variance statement follows the numbers")
    check("LNS's deep layers change the stream more" in report, "the angular statement follows the numbers")
    check("removing a deep block hurts LNS more" in report, "the removal statement follows the numbers")
    check("Stopped before the end: Post-LN" in report, "the diverged run is named")
    check("build/bin/fathom-train --policy lns" in report, "the commands are listed")

    if failures:
        print(f"{len(failures)} checks failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
