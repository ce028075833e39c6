#!/usr/bin/env python3
# compare_policies.py: trains the same model with each chosen normalization policy on the same data
# for the same steps, runs fathom-diagnose on each final checkpoint, draws the pictures with
# tools/plot.py and writes RUNS/report.md (final validation loss and perplexity, per-layer findings).
"""Compare normalization policies on one model and one data set, end to end.

For each policy P: fathom-train --policy P --out RUNS/P --diag-every N <your flags>, then
fathom-diagnose RUNS/P --out RUNS/P/diagnose.json, then tools/plot.py into RUNS/plots and
RUNS/report.md. Every flag this script does not know goes to fathom-train unchanged, so all
policies share model, data, steps, batch, learning rate and seed (the seed fixes the data order).

Policies of your own: with --program PATH, a program built on fathom::programs that registers them
(examples/user_program, docs/programs.md) trains and diagnoses instead (PATH train ..., PATH
diagnose ...), and --policies may name any policy it knows (PATH policies lists them).

A run that stops (a non-finite loss, a crash) is recorded as such and the others go on. Everything
the report says is read back from files in RUNS, so --report-only rebuilds it later (for example
after copying RUNS from the machine that trained), and runs of one comparison can be split over
several calls with --skip-existing.

Example (CPU, a minute):
  tools/compare_policies.py --policies pre-ln,lns --build build/release --out runs/cmp \\
      --preset tiny --steps 60 --batch 4 --seq-len 64 --eval-every 20
  tools/compare_policies.py --program build/release/bin/user_program --policies scaled-branch,pre-ln \\
      --out runs/mine --preset tiny --steps 60 --batch 4 --seq-len 64 --eval-every 20
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(TOOLS))
import plot  # noqa: E402  (reading and summaries only; drawing happens in a subprocess)

ALL_POLICIES = ["pre-ln", "lns", "post-ln", "deepnorm", "mix-ln", "sandwich-ln"]
RESERVED = {"--policy": "--policies", "--out": "--out (the comparison folder)", "--resume": None, "--generate": None}
PAPER = {"pre-ln": "Pre-LN", "lns": "LNS", "post-ln": "Post-LN", "deepnorm": "DeepNorm", "mix-ln": "Mix-LN",
         "sandwich-ln": "Sandwich-LN"}


def say(msg):
    print(f"compare_policies: {msg}", flush=True)


def fail(msg):
    print(f"compare_policies: error: {msg}", file=sys.stderr)
    sys.exit(1)


def flag_value(args, name):
    """The value of `--name V` or `--name=V` in a fathom-train argument list (the last one wins)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def program_policies(train_cmd):
    """The policy names a training command knows (its --list-policies, one a line)."""
    try:
        r = subprocess.run(train_cmd + ["--list-policies"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        fail(f"cannot run {shlex.join(train_cmd)}: {e}")
    if r.returncode != 0:
        fail(f"{shlex.join(train_cmd)} --list-policies exited with {r.returncode}: {r.stderr.strip()}")
    return [l.strip() for l in r.stdout.splitlines() if l.strip()]


def user_program(path):
    """A program built on fathom::programs (train and diagnose subcommands)."""
    p = Path(path)
    if not (p.is_file() and os.access(p, os.X_OK)):
        fail(f"--program: '{path}' is not an executable file")
    return [str(p.resolve())]


def find_program(build, name, sub):
    for p in (Path(build) / "bin" / name, Path(build) / "examples" / sub / name):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    fail(f"{name} not found in '{build}/bin' or '{build}/examples/{sub}'; build it first "
         f"(cmake -S . -B {build} -DFATHOM_BUILD_EXAMPLES=ON && cmake --build {build} --target {name}) or pass --build")


def plotting_python(requested):
    """An interpreter that can import matplotlib: --python, this one, /usr/bin/python3, python3."""
    candidates = [requested] if requested else [sys.executable, "/usr/bin/python3", shutil.which("python3")]
    for py in candidates:
        if not py or not Path(py).exists():
            continue
        ok = subprocess.run([py, "-c", "import matplotlib"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if ok.returncode == 0:
            return py
    return None


def run_logged(cmd, log_path, prefix):
    """Runs cmd, writing its output (stdout and stderr) to log_path and echoing it with a prefix.
    Returns (return code, wall seconds, output lines)."""
    lines = []
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines.append(line.rstrip("\n"))
            print(f"[{prefix}] {line}", end="", flush=True)
        rc = proc.wait()
    return rc, time.monotonic() - t0, lines


def device_name():
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20)
            names = [n.strip() for n in r.stdout.splitlines() if n.strip()]
            if r.returncode == 0 and names:
                return ", ".join(names)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def git_commit():
    try:
        r = subprocess.run(["git", "-C", str(TOOLS.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------------------------
# Training and diagnosing


def train_and_diagnose(policy, a, train_args, train_cmd, diag_cmd, runs):
    run = runs / policy
    record = {"policy": policy}
    run.mkdir(parents=True, exist_ok=True)

    cmd = train_cmd + ["--policy", policy, "--out", str(run), "--diag-every", str(a.diag_every), "--no-live"] + train_args
    say(f"{policy}: training")
    rc, wall, lines = run_logged(cmd, run / "train.log", policy)
    record["train"] = {
        "command": cmd, "returncode": rc, "wall_s": round(wall, 1),
        "header": [l for l in lines[:4] if l.startswith(("fathom-train:", "data:", "parameters:"))],
        "done": [l.strip() for l in lines if l.startswith("done:") or l.strip().endswith(" tokens")][-2:],
        "error": next((l for l in reversed(lines) if "error" in l.lower()), lines[-1] if lines and rc else None),
    }
    if rc != 0:
        say(f"{policy}: training exited with {rc}; no diagnostics for it")
    else:
        val_data = flag_value(train_args, "--val-data") or flag_value(train_args, "--data")
        dcmd = diag_cmd + [str(run), "--out", str(run / "diagnose.json"), "--batches", str(a.diagnose_batches),
                "--batch", str(a.diagnose_batch)]
        if val_data:
            dcmd += ["--data", val_data]
        for f in ("--device", "--seq-len"):
            v = flag_value(train_args, f)
            if v is not None:
                dcmd += [f, v]
        say(f"{policy}: diagnosing")
        drc, dwall, dlines = run_logged(dcmd, run / "diagnose.log", policy)
        record["diagnose"] = {"command": dcmd, "returncode": drc, "wall_s": round(dwall, 1),
                              "error": dlines[-1] if drc and dlines else None}
        if drc != 0:
            say(f"{policy}: diagnosing exited with {drc}")
    if a.prune_checkpoints:
        for ckpt in run.glob("ckpt-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        record["checkpoints_pruned"] = True
    (run / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------------------------------------
# The report


def fmt(x, spec=".4f"):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def fmt_var(x):
    if x is None:
        return "—"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def ppl(loss):
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf


def load_run(runs, policy):
    run = runs / policy
    r = {"policy": policy, "record": {}, "metrics": None, "diag": None, "m": None, "d": None}
    if (run / "run.json").is_file():
        r["record"] = json.loads((run / "run.json").read_text())
    if (run / "metrics.jsonl").is_file():
        r["metrics"] = plot.read_metrics(run / "metrics.jsonl")
        r["m"] = plot.summarize_metrics(r["metrics"])
    if (run / "diagnose.json").is_file():
        try:
            r["diag"] = plot.read_diagnose(run / "diagnose.json")
            r["d"] = plot.summarize_diagnose(r["diag"])
        except (OSError, ValueError) as e:
            say(f"{policy}: cannot read diagnose.json: {e}")
    return r


def status_of(r):
    t = r["record"].get("train")
    if t is None:
        return "no run record" if r["metrics"] is None else "ok (no run.json)"
    if t["returncode"] != 0:
        err = (t.get("error") or "").split("error: ")[-1].replace("|", "\\|")
        m = re.search(r"loss is (\S+) at step (\d+)", err)
        if m:
            return f"diverged: loss {m.group(1)} at step {m.group(2)}"
        return f"failed (exit {t['returncode']}): " + err[:100]
    d = r["record"].get("diagnose")
    if d and d["returncode"] != 0:
        return f"trained; diagnose failed (exit {d['returncode']})"
    return "ok"


def block_range(blocks):
    if not blocks:
        return "no blocks"
    return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}"


def observations(rows):
    """Plain statements comparing LNS with Pre-LN (and the others) on what the paper predicts; each
    says what was measured, whichever way it came out."""
    by = {r["policy"]: r for r in rows}
    out = []
    pre, lns = by.get("pre-ln"), by.get("lns")

    def val(r):
        return r["m"]["final_val_loss"] if r and r["m"] else None

    if pre and lns:
        vp, vl = val(pre), val(lns)
        if vp is not None and vl is not None:
            verdict = "lower, as the paper expects" if vl < vp else "not lower: the paper expects it lower"
            out.append(f"Validation loss: LNS {vl:.4f} (ppl {ppl(vl):.2f}) against Pre-LN {vp:.4f} (ppl {ppl(vp):.2f}); "
                       f"LNS is {abs(vl - vp):.4f} nats {verdict}.")
        dp, dl = pre["d"], lns["d"]
        if dp and dl and dp["last_layer_variance"] and dl["last_layer_variance"]:
            gp = dp["last_layer_variance"] / dp["first_layer_variance"] if dp["first_layer_variance"] else None
            gl = dl["last_layer_variance"] / dl["first_layer_variance"] if dl["first_layer_variance"] else None
            verdict = ("smaller, as the paper expects (LNS bounds the growth)" if dl["last_layer_variance"] < dp["last_layer_variance"]
                       else "not smaller: the paper expects LNS's to be smaller")
            out.append(f"Last-layer output variance: LNS {fmt_var(dl['last_layer_variance'])} against Pre-LN "
                       f"{fmt_var(dp['last_layer_variance'])}, {verdict}. Growth from the first to the last layer: "
                       f"LNS x{fmt(gl, '.1f')}, Pre-LN x{fmt(gp, '.1f')}.")
        if dp and dl and dp["deep_angular"] is not None and dl["deep_angular"] is not None:
            verdict = ("LNS's deep layers change the stream more, as the paper expects" if dl["deep_angular"] > dp["deep_angular"]
                       else "LNS's deep layers do not change the stream more than Pre-LN's here")
            out.append(f"Angular distance d(x_l, x_l+1) over the deepest quarter ({block_range(dp['deep_blocks'])}): "
                       f"LNS {dl['deep_angular']:.4f}, Pre-LN {dp['deep_angular']:.4f}; {verdict}.")
        if dp and dl and dp["deep_removal_mean"] is not None and dl["deep_removal_mean"] is not None:
            verdict = ("removing a deep block hurts LNS more, as the paper expects" if dl["deep_removal_mean"] > dp["deep_removal_mean"]
                       else "removing a deep block does not hurt LNS more here, unlike the paper")
            out.append(f"Layer removal, mean loss increase over the deepest quarter: LNS +{dl['deep_removal_mean']:.4f}, "
                       f"Pre-LN +{dp['deep_removal_mean']:.4f} nats; {verdict}.")
    else:
        out.append("Pre-LN and LNS are not both in this comparison, so the paper's two central contrasts are not drawn.")
    finished = [(val(r), r["policy"]) for r in rows if val(r) is not None]
    if finished:
        best = min(finished)
        out.append(f"Lowest validation loss: {PAPER.get(best[1], best[1])} ({best[0]:.4f}).")
    stopped = [PAPER.get(r["policy"], r["policy"]) for r in rows if status_of(r).startswith(("diverged", "failed"))]
    if stopped:
        out.append("Stopped before the end: " + ", ".join(stopped) + " (see the status column).")
    return out


def write_report(runs, policies, meta, plot_files, plot_note, publish=None):
    rows = [load_run(runs, p) for p in policies]
    lines = ["# Normalization policies compared: loss and the curse of depth", ""]
    first = next((r for r in rows if r["record"].get("train")), None)
    header = first["record"]["train"]["header"] if first else []
    lines += ["One model, one data set, the same steps, batch, learning-rate schedule and seed (so the same",
              "batches in the same order) for every policy; only the normalization policy differs.", ""]
    if meta.get("device"):
        lines.append(f"- machine: {meta['device']}")
    if meta.get("commit"):
        lines.append(f"- fathom commit: {meta['commit']}")
    if meta.get("date"):
        lines.append(f"- date: {meta['date']}")
    for h in header:
        lines.append(f"- `{h}`")
    lines.append("")

    lines += ["## Final validation loss", "",
              "| policy | steps | tokens | final val loss | val perplexity | last train loss | tokens/s | train s | status |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r["m"] or {}
        t = r["record"].get("train", {})
        tps = None
        if r["metrics"] and r["metrics"]["train"] and t.get("wall_s"):
            tps = (m.get("tokens") or 0) / t["wall_s"] if m.get("tokens") else None
        lines.append(f"| {PAPER.get(r['policy'], r['policy'])} | {m.get('last_step') or '—'} | "
                     f"{m.get('tokens') if m.get('tokens') is not None else '—'} | {fmt(m.get('final_val_loss'))} | "
                     f"{fmt(ppl(m.get('final_val_loss')), '.2f')} | {fmt(m.get('last_train_loss'))} | "
                     f"{fmt(tps, '.0f')} | {fmt(t.get('wall_s'), '.1f')} | {status_of(r)} |")
    lines += ["", "Perplexity is exp(validation loss) per token (bytes, with the byte tokenizer). tokens/s here is",
              "tokens over the whole fathom-train wall time, evaluations and saving included.", ""]

    lines += ["## Per-layer findings", "",
              "From fathom-diagnose on each final checkpoint (held-out batches). The deepest quarter is the last",
              "max(1, L/4) blocks. Variance is over all elements of a block's output x_l; the angular distance",
              "d(x_l, x_l+1) = arccos(cos_sim(x_l, x_l+1)) / pi is averaged over tokens; layer removal skips one",
              "block (no retraining) and reports the loss increase.", "",
              "| policy | last-layer variance | last / first layer | last-layer variance in training | "
              "d(x_l, x_l+1), deepest quarter | d(x_l, x_l+1), all | loss increase, deepest quarter (mean / max) | "
              "most harmful removal |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r["d"] or {}
        m = r["m"] or {}
        ratio = (d["last_layer_variance"] / d["first_layer_variance"]
                 if d.get("last_layer_variance") and d.get("first_layer_variance") else None)
        train_var = m.get("final_layer_variance")
        train_last = train_var[-1] if train_var else None
        worst = d.get("worst_removal_block")
        lines.append(f"| {PAPER.get(r['policy'], r['policy'])} | {fmt_var(d.get('last_layer_variance'))} | "
                     f"{fmt(ratio, '.1f')} | {fmt_var(train_last)}"
                     f"{' (step ' + str(m['final_variance_step']) + ')' if train_last is not None else ''} | "
                     f"{fmt(d.get('deep_angular'))} | {fmt(d.get('all_angular'))} | "
                     f"{fmt(d.get('deep_removal_mean'))} / {fmt(d.get('deep_removal_max'))} | "
                     f"{'block ' + str(worst) if worst else '—'} |")
    lines.append("")

    lines += ["## What the numbers say", ""]
    lines += [f"- {o}" for o in observations(rows)]
    lines += ["", "The paper (130M-1B models, 10k+ steps on C4) expects Pre-LN's output variance to grow with depth",
              "while LNS's stays bounded, LNS's validation loss to be lower, Pre-LN's deep layers to sit close to",
              "their neighbours, and removing a deep block to hurt LNS more. A short run on a small model can",
              "show these trends weakly or not at all; the statements above are what this run measured.", ""]

    lines += ["## Pictures", ""]
    captions = {
        "loss.png": "Training and validation loss per policy.",
        "layer_variance_growth.png": "Output variance of the last (solid) and first (dotted) block over training.",
        "layer_variance_final.png": "Output variance by layer at the last logged step.",
        "layer_variance_by_step.png": "Output variance by layer at several steps of training, one panel per policy.",
        "diag_variance.png": "Variance by layer on held-out batches: block outputs, attention and MLP branches.",
        "diag_angular_distance.png": "Angular distance d(x_l, x_l+n) between layer inputs (x: l, y: n).",
        "diag_grad_norm.png": "Gradient norm of each block's parameters on held-out batches.",
        "diag_layer_removal.png": "Loss increase when one block is skipped.",
    }
    if plot_files:
        names = [Path(f).name for f in plot_files]
        for name in names:
            cap = captions.get(name)
            lines += [f"{cap or name}", "", f"![{name}](plots/{name})", ""]
    if plot_note:
        lines += [plot_note, ""]

    lines += ["## Commands", "", "Run from the repository root.", "", "```sh"]
    for note in meta.get("notes", []):
        lines += [f"# {note['label']}" if note.get("label") else "# entry point", note["command"]]
    for inv in meta.get("invocations", []):
        lines.append("# the comparison" + (f" ({inv['date']})" if inv.get("date") else ""))
        lines.append(shlex.join(inv["argv"]))
    lines.append("# what it ran, per policy")
    for r in rows:
        for key in ("train", "diagnose"):
            c = r["record"].get(key, {}).get("command")
            if c:
                lines.append(shlex.join(c))
    if plot_files or plot_note:
        lines.append(f"python3 tools/plot.py metrics {' '.join(str(runs / p) for p in policies)} --out {runs / 'plots'}")
        lines.append(f"python3 tools/plot.py diagnose {' '.join(str(runs / p) for p in policies)} --out {runs / 'plots'}")
    lines += ["```", "",
              f"Per-policy files: `<policy>/metrics.jsonl`, `<policy>/diagnose.json`, `<policy>/train.log`, "
              f"`<policy>/run.json`. Rebuild this report from them with `tools/compare_policies.py --report-only "
              f"--out {runs} --policies {','.join(policies)}`.", ""]

    report = runs / "report.md"
    report.write_text("\n".join(lines))
    say(f"wrote {report}")
    if publish:
        dest = Path(publish)
        (dest / "plots").mkdir(parents=True, exist_ok=True)
        shutil.copy2(report, dest / "README.md")
        for f in plot_files:
            shutil.copy2(f, dest / "plots" / Path(f).name)
        for p in policies:
            (dest / p).mkdir(exist_ok=True)
            for name in ("metrics.jsonl", "diagnose.json", "train.log", "diagnose.log", "run.json"):
                if (runs / p / name).is_file():
                    shutil.copy2(runs / p / name, dest / p / name)
        say(f"published the report, plots and per-policy files to {dest} (README.md)")
    return report


PLOT_ORDER = ["loss.png", "layer_variance_growth.png", "layer_variance_final.png", "layer_variance_by_step.png",
              "diag_variance.png", "diag_angular_distance.png", "diag_grad_norm.png", "diag_layer_removal.png"]


def existing_plots(runs):
    """The PNGs already in RUNS/plots, in the order plot.py draws them."""
    found = sorted((runs / "plots").glob("*.png")) if (runs / "plots").is_dir() else []
    rank = {n: i for i, n in enumerate(PLOT_ORDER)}
    return [str(p) for p in sorted(found, key=lambda p: (rank.get(p.name, len(rank)), p.name))]


def draw(runs, policies, python):
    """Runs tools/plot.py for the metrics and the diagnostics; returns (PNG paths, note)."""
    if python is None:
        return [], ("Pictures not drawn: no Python with matplotlib here. Draw them with the plot.py commands "
                    "below (Debian: python3-matplotlib), then rebuild the report with --report-only.")
    files, errors = [], []
    out = runs / "plots"
    for kind, name in (("metrics", "metrics.jsonl"), ("diagnose", "diagnose.json")):
        present = [str(runs / p) for p in policies if (runs / p / name).is_file()]
        if not present:
            continue
        r = subprocess.run([python, str(TOOLS / "plot.py"), kind, *present, "--out", str(out)], capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        files += [l.strip() for l in r.stdout.splitlines() if l.strip().endswith(".png")]
        if r.returncode != 0:
            errors.append(f"plot.py {kind} exited with {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    for f in files:
        say(f"drew {f}")
    return files, ("; ".join(errors) if errors else None)


def main():
    ap = argparse.ArgumentParser(prog="compare_policies.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Any other flag goes to fathom-train (fathom-train --help lists them).")
    ap.add_argument("--policies", default=",".join(ALL_POLICIES),
                    help=f"comma-separated policies, in report order (default: {','.join(ALL_POLICIES)})")
    ap.add_argument("--build", default="build/release",
                    help="CMake build folder holding bin/fathom-train and bin/fathom-diagnose (scripts/run.sh builds "
                         "build/release)")
    ap.add_argument("--program", metavar="PATH",
                    help="a program of your own with train and diagnose commands (fathom::programs, "
                         "examples/user_program) instead of fathom-train and fathom-diagnose")
    ap.add_argument("--out", default="runs/compare", help="comparison folder: one run folder per policy, plots/, report.md")
    ap.add_argument("--diag-every", type=int, default=0,
                    help="log per-layer variance every N steps (0: about 20 times per run)")
    ap.add_argument("--diagnose-batches", type=int, default=8, help="held-out batches fathom-diagnose averages over")
    ap.add_argument("--diagnose-batch", type=int, default=8, help="sequences per fathom-diagnose batch")
    ap.add_argument("--skip-existing", action="store_true",
                    help="keep policies whose run folder has run.json (a finished run); rerun unfinished ones")
    ap.add_argument("--overwrite", action="store_true", help="delete existing run folders of the chosen policies first")
    ap.add_argument("--report-only", action="store_true", help="train nothing: redraw and rewrite the report from RUNS")
    ap.add_argument("--no-plots", action="store_true", help="write the report without drawing")
    ap.add_argument("--prune-checkpoints", action="store_true",
                    help="delete each run's ckpt-* folders once diagnosed (keeps what the report needs, not the weights)")
    ap.add_argument("--publish", metavar="DIR", help="also copy report (as README.md), plots and per-policy files to DIR")
    ap.add_argument("--time-limit", type=float, default=0, metavar="S",
                    help="start no further policy once the slowest so far would end past S seconds (0: no limit)")
    ap.add_argument("--entry-command", metavar="CMD",
                    help="the command that called this script (a wrapper), listed first under the report's commands")
    ap.add_argument("--python", help="interpreter with matplotlib for tools/plot.py (default: the first that has it)")
    a, train_args = ap.parse_known_args()
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]

    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    if not policies:
        fail("--policies names no policy")
    if len(set(policies)) != len(policies):
        fail(f"--policies names a policy twice: {a.policies}")
    for flag, instead in RESERVED.items():
        if flag_value(train_args, flag) is not None or flag in train_args:
            fail(f"{flag} is set by this script per policy" + (f"; use {instead}" if instead else ""))
    runs = Path(a.out)
    meta_path = runs / "compare.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"policies": [], "invocations": []}

    if not a.report_only:
        if a.program:
            prog = user_program(a.program)
            train_cmd, diag_cmd = prog + ["train"], prog + ["diagnose"]
        else:
            train_cmd = [str(find_program(a.build, "fathom-train", "train"))]
            diag_cmd = [str(find_program(a.build, "fathom-diagnose", "diagnose"))]
        known = program_policies(train_cmd)
        unknown = [p for p in policies if p not in known]
        if unknown:
            fail(f"unknown policies {unknown}; {shlex.join(train_cmd)} knows {', '.join(known)}")
        if a.diag_every <= 0:
            steps = int(flag_value(train_args, "--steps") or 200)
            a.diag_every = max(1, steps // 20)
        todo = []
        for p in policies:
            run = runs / p
            if run.exists() and any(run.iterdir()):
                if a.skip_existing and (run / "run.json").is_file():
                    say(f"{p}: {run} has a finished run; kept (--skip-existing)")
                    continue
                if a.skip_existing:
                    say(f"{p}: {run} holds an unfinished run (no run.json); running it again")
                elif not a.overwrite:
                    fail(f"'{run}' already holds a run; pass --overwrite to replace it "
                         "or --skip-existing to keep finished runs")
                shutil.rmtree(run)
            todo.append(p)
        runs.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        meta["invocations"].append({"argv": ["tools/compare_policies.py"] + sys.argv[1:], "date": now})
        meta["device"] = device_name()
        meta["commit"] = git_commit() or meta.get("commit")
        meta["date"] = now
        meta["policies"] = meta["policies"] + [p for p in policies if p not in meta["policies"]]
        if a.entry_command and a.entry_command not in [n["command"] for n in meta.setdefault("notes", [])]:
            meta["notes"].append({"label": f"entry point ({now})", "command": a.entry_command})
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        t0, took = time.monotonic(), []
        for k, p in enumerate(todo):
            elapsed = time.monotonic() - t0
            if a.time_limit and took and elapsed + max(took) > a.time_limit:
                say(f"time limit: {elapsed:.0f} s used, a policy takes up to {max(took):.0f} s, {a.time_limit:.0f} s "
                    f"allowed; not starting {', '.join(todo[k:])}. Run the same command with --skip-existing to go on.")
                break
            start = time.monotonic()
            train_and_diagnose(p, a, train_args, train_cmd, diag_cmd, runs)
            took.append(time.monotonic() - start)
    elif not runs.is_dir():
        fail(f"--report-only: '{runs}' is not a folder")

    # The report covers every policy of this comparison folder, in the order first asked for.
    order = [p for p in (meta.get("policies") or []) if (runs / p).is_dir()]
    order += [p for p in policies if p not in order and (runs / p).is_dir()]
    if not order:
        fail(f"no run folders for {', '.join(policies)} in '{runs}'")
    if a.no_plots:
        files, note = existing_plots(runs), None if existing_plots(runs) else "Pictures not drawn (--no-plots)."
    else:
        files, note = draw(runs, order, plotting_python(a.python))
    write_report(runs, order, meta, files, note, a.publish)
    bad = [p for p in order if status_of(load_run(runs, p)) != "ok"]
    if bad:
        say(f"finished; not ok: {', '.join(bad)} (see the report's status column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
