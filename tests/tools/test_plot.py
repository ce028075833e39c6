#!/usr/bin/env python3
# Test of tools/plot.py: renders PNGs from a small hand-written metrics.jsonl and diagnose JSON
# (valid PNG files, the names printed are the files written), tolerates missing fields, bad lines
# and nulls, and fails on inputs it cannot read. Exits 77 (ctest SKIP_RETURN_CODE) without matplotlib.
# Usage: test_plot.py PLOT_PY WORK_DIR

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

SKIP = 77
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def python_with_matplotlib():
    """This interpreter, or another python3 on the machine, that can import matplotlib."""
    for py in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if py and Path(py).exists() and subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return py
    return None


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAILED: {what}")


def run(py, plot, *args):
    r = subprocess.run([py, str(plot), *args], capture_output=True, text=True)
    return r.returncode, [l for l in r.stdout.splitlines() if l.strip()], r.stderr


def check_pngs(printed, out, expected):
    names = {Path(p).name for p in printed}
    for name in expected:
        check(name in names, f"{name} printed (printed: {sorted(names)})")
    for p in printed:
        path = Path(p)
        check(path.parent.resolve() == out.resolve(), f"{p} is in {out}")
        check(path.is_file() and path.stat().st_size > 1000, f"{p} exists and is not tiny")
        if path.is_file():
            check(path.read_bytes()[:8] == PNG_MAGIC, f"{p} starts with the PNG signature")
    on_disk = {p.name for p in out.glob("*.png")}
    check(on_disk == names, f"the PNGs on disk {sorted(on_disk)} are the ones printed {sorted(names)}")


def metrics_lines(rng, layers, steps, growth):
    lines, tokens = [], 0
    for step in range(1, steps + 1):
        tokens += 512
        if step == 1 or step % 5 == 0:
            lines.append({"step": step, "loss": 5.5 - 2.0 * step / steps + rng.uniform(-0.05, 0.05), "lr": 1e-3,
                          "tokens": tokens, "tokens_per_s": rng.uniform(900, 1100)})
        if step == 1 or step % 10 == 0:
            scale = 1e-3 * (1 + step)
            lines.append({"step": step, "layer_variance": [scale * growth ** l * rng.uniform(0.9, 1.1) for l in range(layers)]})
        if step % 20 == 0:
            lines.append({"step": step, "val_loss": 4.0 - step / steps + rng.uniform(-0.02, 0.02)})
    return lines


def diagnose_json(rng, layers, policy, growth):
    var = [0.01 * growth ** l * rng.uniform(0.9, 1.1) for l in range(layers)]
    ang = [[0.0] + [min(1.0, 0.1 * n * rng.uniform(0.5, 1.5)) for n in range(1, layers + 1 - l)] for l in range(layers + 1)]
    inc = [rng.uniform(0.001, 0.05) for _ in range(layers)]
    inc[0] = 3.0  # removing the first block is usually catastrophic: exercises the symlog axis
    return {"layers": layers, "batches": 2, "loss": 3.5, "policy": policy,
            "block_output_variance": var, "input_variance": [0.001] + var,
            "attn_branch_variance": [v / 10 for v in var], "mlp_branch_variance": [v / 5 for v in var],
            "angular_distance": ang, "grad_norm": [rng.uniform(0.05, 0.5) for _ in range(layers)],
            "loss_without_block": [3.5 + x for x in inc], "loss_increase": inc,
            "checkpoint": f"runs/{policy}/ckpt-100", "model": {"arch": "llama", "layers": layers}}


def main():
    if len(sys.argv) != 3:
        print("usage: test_plot.py PLOT_PY WORK_DIR")
        return 2
    plot, work = Path(sys.argv[1]), Path(sys.argv[2])
    py = python_with_matplotlib()
    if py is None:
        print("SKIPPED: no python3 with matplotlib (Debian: python3-matplotlib)")
        return SKIP
    print(f"python with matplotlib: {py}")
    shutil.rmtree(work, ignore_errors=True)
    rng = random.Random(20240520)
    L = 6

    # Two runs as fathom-train writes them, one with problems a real file can have: a line that is
    # not JSON, a NaN variance written as null, a resumed run's repeated step.
    for policy, growth in (("pre-ln", 1.8), ("lns", 1.2)):
        (work / "runs" / policy).mkdir(parents=True)
        lines = [json.dumps(x) for x in metrics_lines(rng, L, 100, growth)]
        if policy == "lns":
            lines.insert(3, "not json {")
            lines.append(json.dumps({"step": 100, "layer_variance": [None] + [0.01] * (L - 1)}))
            lines.append(json.dumps({"step": 100, "loss": None, "tokens": 51200}))
        (work / "runs" / policy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (work / "runs" / policy / "diagnose.json").write_text(json.dumps(diagnose_json(rng, L, policy, growth)))

    out = work / "metrics_plots"
    rc, printed, err = run(py, plot, "metrics", str(work / "runs" / "pre-ln"), str(work / "runs" / "lns" / "metrics.jsonl"),
                           "--out", str(out), "--x", "tokens", "--smooth", "0.5")
    check(rc == 0, f"plot.py metrics exits 0 (got {rc}: {err})")
    check_pngs(printed, out, ["loss.png", "layer_variance_growth.png", "layer_variance_final.png", "layer_variance_by_step.png"])
    check("1 lines were not metric records" in err, f"the bad line is reported on stderr (stderr: {err!r})")

    out = work / "diagnose_plots"
    rc, printed, err = run(py, plot, "diagnose", str(work / "runs" / "pre-ln" / "diagnose.json"), str(work / "runs" / "lns"),
                           "--labels", "Pre-LN,LNS", "--out", str(out))
    check(rc == 0, f"plot.py diagnose exits 0 (got {rc}: {err})")
    check_pngs(printed, out, ["diag_angular_distance.png", "diag_variance.png", "diag_grad_norm.png", "diag_layer_removal.png"])

    # Missing fields: a diagnose file with only variance draws that and says what it skipped.
    sparse = work / "sparse"
    sparse.mkdir()
    (sparse / "diagnose.json").write_text(json.dumps({"layers": 3, "block_output_variance": [0.1, 0.4, None]}))
    out = work / "sparse_plots"
    rc, printed, err = run(py, plot, "diagnose", str(sparse), "--out", str(out))
    check(rc == 0, f"a sparse diagnose file still draws (got {rc}: {err})")
    check_pngs(printed, out, ["diag_variance.png"])
    for skipped in ("heatmap skipped", "diag_grad_norm.png skipped", "diag_layer_removal.png skipped"):
        check(skipped in err, f"stderr says '{skipped}' (stderr: {err!r})")

    # A metrics file without layer_variance lines: loss curves only.
    plain = work / "plain"
    plain.mkdir()
    (plain / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0, "tokens": 64}\n{"step": 2, "val_loss": 4.9}\n')
    out = work / "plain_plots"
    rc, printed, err = run(py, plot, "metrics", str(plain), "--out", str(out))
    check(rc == 0, f"a metrics file without variance still draws (got {rc}: {err})")
    check_pngs(printed, out, ["loss.png"])
    check("no layer_variance lines" in err, "stderr says the variance plots skip the run")

    # `runs` finds every run folder of a comparison.
    rc, printed, err = run(py, plot, "runs", str(work / "runs"))
    check(rc == 0, f"plot.py runs exits 0 (got {rc}: {err})")
    check_pngs(printed, work / "runs" / "plots", ["loss.png", "diag_layer_removal.png", "diag_angular_distance.png"])

    # Failures: nothing readable, and --labels of the wrong length.
    rc, printed, err = run(py, plot, "metrics", str(work / "no_such_run"), "--out", str(work / "none"))
    check(rc != 0 and not printed, f"a missing input fails without output (rc {rc}, printed {printed})")
    rc, _, err = run(py, plot, "diagnose", str(sparse), "--labels", "a,b", "--out", str(work / "none"))
    check(rc != 0 and "--labels names 2 runs" in err, f"--labels of the wrong length is refused (rc {rc}, {err!r})")
    rc, printed, _ = run(py, plot, "--help")
    check(rc == 0 and any("metrics" in l for l in printed), "--help works")

    if failures:
        print(f"{len(failures)} checks failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
