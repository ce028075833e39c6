#!/usr/bin/env python3
# plot.py: pictures of fathom runs. Turns fathom-train's metrics.jsonl files (one per run) and
# fathom-diagnose JSON files into PNGs: loss curves, per-layer variance over training, angular-
# distance heatmaps, per-layer variance and gradient norms, layer-removal bars.
"""Pictures of fathom runs, as PNG files.

  plot.py metrics  RUN|metrics.jsonl ...  [--labels a,b] [--out DIR] [--x step|tokens] [--smooth A]
  plot.py diagnose RUN|diagnose.json ...  [--labels a,b] [--out DIR]
  plot.py runs     RUNS_DIR               [--out DIR]   (every RUNS_DIR/*/metrics.jsonl and diagnose.json)

A run folder stands for its metrics.jsonl (metrics) or diagnose.json (diagnose). A run's label is
its folder's name in every picture (a JSON file outside a run folder: its file name), unless
--labels says otherwise; a policy's colour is the same in every picture. Each file written is printed on its own line; what could not be drawn (a missing field, a
run that logged no layer variance) is said on stderr and skipped. Needs matplotlib for drawing
(Debian: python3-matplotlib); the reading and summary functions below work without it, so other
tools can import them.
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

# Fixed colours for fathom's policies, so a policy looks the same in every picture.
POLICY_COLOURS = {
    "pre-ln": "tab:blue",
    "lns": "tab:red",
    "post-ln": "tab:green",
    "deepnorm": "tab:purple",
    "mix-ln": "tab:orange",
    "sandwich-ln": "tab:brown",
}
OTHER_COLOURS = ["tab:cyan", "tab:olive", "tab:pink", "tab:gray", "black", "gold"]


def warn(msg):
    print(f"plot.py: {msg}", file=sys.stderr)


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_list(v):
    """A list of numbers with None/NaN/non-numbers as None; anything that is not a list gives []."""
    if not isinstance(v, list):
        return []
    return [float(x) if finite(x) else None for x in v]


# ---------------------------------------------------------------------------------------------
# Reading


def metrics_path(p):
    p = Path(p)
    return p / "metrics.jsonl" if p.is_dir() else p


def diagnose_path(p):
    p = Path(p)
    return p / "diagnose.json" if p.is_dir() else p


def run_name(path):
    """The run folder's name for DIR/metrics.jsonl or DIR/diagnose.json, else the file's stem."""
    path = Path(path)
    if path.name in ("metrics.jsonl", "diagnose.json") and path.parent.name not in ("", "."):
        return path.parent.name
    if path.parent.name not in ("", ".") and path.stem in ("metrics", "diagnose"):
        return path.parent.name
    return path.stem


def read_metrics(path):
    """fathom-train's metrics.jsonl as lists sorted by step. Lines that are not JSON objects are
    skipped; for a step logged twice (a resumed run appends), the later line wins.

    Returns {"path", "train": [(step, tokens|None, loss|None)], "val": [(step, tokens|None, val_loss|None)],
             "variance": [(step, [var per block, None where missing])], "tokens_per_step": float|None,
             "bad_lines": int}"""
    path = metrics_path(path)
    train, val, var = {}, {}, {}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(rec, dict) or not finite(rec.get("step")):
                bad += 1
                continue
            step = int(rec["step"])
            if "loss" in rec:
                train[step] = (step, rec.get("tokens") if finite(rec.get("tokens")) else None,
                               float(rec["loss"]) if finite(rec.get("loss")) else None)
            if "val_loss" in rec:
                val[step] = float(rec["val_loss"]) if finite(rec.get("val_loss")) else None
            if "layer_variance" in rec:
                var[step] = finite_list(rec["layer_variance"])
    tps = [t / s for s, t, _ in train.values() if t is not None and s > 0]
    tokens_per_step = sorted(tps)[len(tps) // 2] if tps else None

    def tokens_at(step):
        if step in train and train[step][1] is not None:
            return train[step][1]
        return step * tokens_per_step if tokens_per_step else None

    return {
        "path": str(path),
        "train": [train[s] for s in sorted(train)],
        "val": [(s, tokens_at(s), val[s]) for s in sorted(val)],
        "variance": [(s, var[s]) for s in sorted(var)],
        "tokens_per_step": tokens_per_step,
        "bad_lines": bad,
    }


def read_diagnose(path):
    """fathom-diagnose's JSON (diag::Diagnostics::to_json plus checkpoint/policy/model)."""
    path = diagnose_path(path)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    d["_path"] = str(path)
    return d


def unique_labels(labels, fallbacks):
    """Labels made unique: a repeated label takes its fallback (the run folder) in parentheses."""
    out = []
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            lab = f"{lab} ({fallbacks[i]})"
        while lab in out:
            lab += "'"
        out.append(lab)
    return out


def parse_labels(arg, n):
    if not arg:
        return None
    labels = [s.strip() for s in arg.split(",")]
    if len(labels) != n:
        raise SystemExit(f"plot.py: --labels names {len(labels)} runs, but {n} inputs were given")
    return labels


def colour_map(labels, policies=None):
    """Label -> colour: a policy's fixed colour when the label (or its policy) is one of fathom's."""
    colours, spare = {}, iter(OTHER_COLOURS * 4)
    for i, lab in enumerate(labels):
        key = (policies[i] if policies and policies[i] else lab).lower()
        base = next((c for p, c in POLICY_COLOURS.items() if key == p), None)
        if base is None or base in colours.values():
            base = next(spare)
        colours[lab] = base
    return colours


# ---------------------------------------------------------------------------------------------
# Summaries (numbers for a report; no matplotlib)


def deep_blocks(layers):
    """The deepest quarter of the blocks (at least one), 0-based."""
    q = max(1, layers // 4)
    return list(range(layers - q, layers))


def mean(xs):
    xs = [x for x in xs if finite(x)]
    return sum(xs) / len(xs) if xs else None


def summarize_metrics(m):
    """Final numbers of one metrics file: final validation loss and its step, last train loss,
    tokens, whether a loss went non-finite, and the last logged layer variance."""
    s = {"final_val_loss": None, "final_val_step": None, "last_step": None, "last_train_loss": None,
         "tokens": None, "nonfinite_loss": False, "final_layer_variance": None, "final_variance_step": None}
    if m["train"]:
        step, tokens, loss = m["train"][-1]
        s["last_step"], s["tokens"], s["last_train_loss"] = step, tokens, loss
        s["nonfinite_loss"] = any(l is None for _, _, l in m["train"])
    for step, _, v in reversed(m["val"]):
        if v is not None:
            s["final_val_loss"], s["final_val_step"] = v, step
            break
    for step, v in reversed(m["variance"]):
        if any(x is not None for x in v):
            s["final_layer_variance"], s["final_variance_step"] = v, step
            break
    return s


def summarize_diagnose(d):
    """The per-layer findings of one diagnose JSON: last-layer and first-layer output variance, the
    mean angular distance d(x_l, x_{l+1}) over the deepest quarter of blocks (and over all), and the
    loss increase when removing each of the deepest blocks (mean and max), plus the block whose
    removal hurts most."""
    L = d.get("layers") if isinstance(d.get("layers"), int) else None
    var = finite_list(d.get("block_output_variance"))
    if L is None and var:
        L = len(var)
    s = {"layers": L, "loss": d.get("loss") if finite(d.get("loss")) else None, "policy": d.get("policy"),
         "last_layer_variance": None, "first_layer_variance": None, "deep_angular": None, "all_angular": None,
         "deep_removal_mean": None, "deep_removal_max": None, "worst_removal_block": None, "deep_blocks": None}
    if not L:
        return s
    deep = deep_blocks(L)
    s["deep_blocks"] = [i + 1 for i in deep]
    if len(var) == L:
        s["last_layer_variance"], s["first_layer_variance"] = var[-1], var[0]
    ang = d.get("angular_distance")
    if isinstance(ang, list):
        step1 = [row[1] if isinstance(row, list) and len(row) > 1 and finite(row[1]) else None for row in ang[:L]]
        s["deep_angular"] = mean([step1[i] for i in deep if i < len(step1)])
        s["all_angular"] = mean(step1)
    inc = finite_list(d.get("loss_increase"))
    if len(inc) == L:
        deep_inc = [inc[i] for i in deep if inc[i] is not None]
        s["deep_removal_mean"] = mean(deep_inc)
        s["deep_removal_max"] = max(deep_inc) if deep_inc else None
        known = [(v, i) for i, v in enumerate(inc) if v is not None]
        if known:
            s["worst_removal_block"] = max(known)[1] + 1
    return s


# ---------------------------------------------------------------------------------------------
# Drawing


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(f"plot.py: matplotlib is not installed for {sys.executable} (Debian: apt-get install "
                         f"python3-matplotlib; pip: {sys.executable} -m pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def integer_ticks(*axes):
    from matplotlib.ticker import MaxNLocator
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def safe_name(label):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


class Writer:
    """Saves figures into the output folder and remembers what it wrote."""

    def __init__(self, out):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.written = []

    def save(self, fig, name):
        plt = pyplot()
        path = self.out / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.written.append(str(path))
        print(path, flush=True)


def ema(values, alpha):
    out, acc = [], None
    for v in values:
        if v is None:
            out.append(None)
            continue
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def points(xs, ys, positive=False):
    """(xs, ys) with the pairs where either is missing (or, for log axes, not positive) left out."""
    keep = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and (not positive or y > 0)]
    return [x for x, _ in keep], [y for _, y in keep]


def plot_metrics(runs, labels, w, x_axis="step", smooth=0.0):
    """runs: read_metrics results. Draws loss curves, last-layer variance over training, the final
    variance by layer per run, and per run the variance by layer at several steps."""
    plt = pyplot()
    colours = colour_map(labels)
    xi = 1 if x_axis == "tokens" else 0
    xlabel = "tokens" if x_axis == "tokens" else "step"

    # Loss curves: train and validation side by side, same x axis.
    if any(m["train"] or m["val"] for m in runs):
        fig, (a_train, a_val) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
        for m, lab in zip(runs, labels):
            if m["train"]:
                xs = [r[xi] for r in m["train"]]
                ys = [r[2] for r in m["train"]]
                if smooth > 0:
                    a_train.plot(*points(xs, ys), color=colours[lab], alpha=0.25, lw=0.8)
                    a_train.plot(*points(xs, ema(ys, smooth)), color=colours[lab], lw=1.5, label=lab)
                else:
                    a_train.plot(*points(xs, ys), color=colours[lab], lw=1.2, label=lab)
            if m["val"]:
                xs, ys = points([r[xi] for r in m["val"]], [r[2] for r in m["val"]])
                if xs:
                    a_val.plot(xs, ys, "o-", color=colours[lab], ms=3.5, lw=1.2, label=lab)
                    a_val.annotate(f"{ys[-1]:.3f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 0),
                                   fontsize=8, color=colours[lab])
        a_train.set_title("training loss" + (f" (EMA {smooth})" if smooth > 0 else ""))
        a_val.set_title("validation loss")
        for a in (a_train, a_val):
            a.set_xlabel(xlabel)
            a.set_ylabel("cross-entropy (nats/token)")
            a.grid(alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=8)
        fig.tight_layout()
        w.save(fig, "loss.png")
    else:
        warn("metrics: no loss or val_loss lines in any input; loss.png skipped")

    with_var = [(m, lab) for m, lab in zip(runs, labels) if m["variance"]]
    for m, lab in zip(runs, labels):
        if not m["variance"]:
            warn(f"metrics: {m['path']} has no layer_variance lines (fathom-train --diag-every N); variance plots skip it")
    if not with_var:
        return

    # Growth over training: the last block's output variance (solid) and the first's (dotted).
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for m, lab in with_var:
        steps = [s for s, _ in m["variance"]]
        xs = steps if x_axis == "step" else [s * m["tokens_per_step"] if m["tokens_per_step"] else None for s in steps]
        last = [v[-1] if v else None for _, v in m["variance"]]
        first = [v[0] if v else None for _, v in m["variance"]]
        px, py = points(xs, last, positive=True)
        if px:
            ax.plot(px, py, "-", color=colours[lab], lw=1.6, label=f"{lab}: last layer")
            drawn = True
        px, py = points(xs, first, positive=True)
        if px:
            ax.plot(px, py, ":", color=colours[lab], lw=1.2, label=f"{lab}: first layer")
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("variance of the block's output")
        ax.set_title("output variance over training")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        w.save(fig, "layer_variance_growth.png")
    else:
        plt.close(fig)

    # Final variance by layer, one line per run.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for m, lab in with_var:
        step, v = next(((s, v) for s, v in reversed(m["variance"]) if any(x is not None for x in v)), (None, []))
        px, py = points(list(range(1, len(v) + 1)), v, positive=True)
        if px:
            ax.plot(px, py, "o-", color=colours[lab], ms=3.5, label=f"{lab} (step {step})")
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("layer l (block output)")
        integer_ticks(ax.xaxis)
        ax.set_ylabel("variance")
        ax.set_title("output variance by layer, end of training")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        w.save(fig, "layer_variance_final.png")
    else:
        plt.close(fig)

    # Per run, one panel each: variance by layer at up to 8 logged steps, early (dark) to late
    # (light: viridis runs from dark purple to yellow), on one shared log axis.
    cmap = plt.get_cmap("viridis")
    rows_, cols = grid_shape(len(with_var))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.6 * cols, 3.8 * rows_), squeeze=False, sharey=True)
    drawn = False
    for k, (m, lab) in enumerate(with_var):
        ax = axes[k // cols][k % cols]
        rows = m["variance"]
        pick = sorted({round(i * (len(rows) - 1) / 7) for i in range(8)}) if len(rows) > 8 else range(len(rows))
        for j, i in enumerate(pick):
            step, v = rows[i]
            px, py = points(list(range(1, len(v) + 1)), v, positive=True)
            if px:
                ax.plot(px, py, "o-", ms=2.5, lw=1.1, color=cmap(j / max(1, len(pick) - 1)), label=f"step {step}")
                drawn = True
        ax.set_yscale("log")
        ax.set_title(lab, color=colours[lab])
        ax.set_xlabel("layer l (block output)")
        integer_ticks(ax.xaxis)
        if k % cols == 0:
            ax.set_ylabel("variance")
        ax.grid(alpha=0.3, which="both")
        if k == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)  # the same steps in every panel of a comparison
    for k in range(len(with_var), rows_ * cols):
        axes[k // cols][k % cols].axis("off")
    if drawn:
        fig.suptitle("output variance by layer during training (dark: early, light: late)")
        fig.tight_layout()
        w.save(fig, "layer_variance_by_step.png")
    else:
        plt.close(fig)


def grid_shape(n):
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


def plot_diagnose(diags, labels, w):
    """diags: read_diagnose results. Draws angular-distance heatmaps, variance by layer (block
    outputs and branches), gradient norm by layer, and layer-removal bars."""
    plt = pyplot()
    import numpy as np

    colours = colour_map(labels, [d.get("policy") for d in diags])

    # Angular distance d(x_l, x_{l+n}): x = l, y = n (n >= 1), one panel per run, shared colours.
    mats = []
    for d, lab in zip(diags, labels):
        ang = d.get("angular_distance")
        if not isinstance(ang, list) or len(ang) < 2:
            warn(f"diagnose: {d['_path']} has no angular_distance; heatmap skipped")
            continue
        L = len(ang) - 1
        M = np.full((L, L), np.nan)  # [n - 1][l]
        for l, row in enumerate(ang[:L]):
            for n, v in enumerate(finite_list(row)):
                if 1 <= n <= L - l and v is not None:
                    M[n - 1][l] = v
        if np.isnan(M).all():
            warn(f"diagnose: {d['_path']}: angular_distance holds no finite value; heatmap skipped")
            continue
        mats.append((lab, M))
    if mats:
        vmax = max(float(np.nanmax(M)) for _, M in mats)
        rows, cols = grid_shape(len(mats))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.8, 3.9 * rows), squeeze=False)
        fig.subplots_adjust(hspace=0.38)  # room for a panel's x label above the next row's title
        im = None
        for k, (lab, M) in enumerate(mats):
            ax = axes[k // cols][k % cols]
            L = M.shape[0]
            im = ax.imshow(M, origin="lower", cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                           extent=(-0.5, L - 0.5, 0.5, L + 0.5))
            ax.set_title(lab)
            ax.set_xlabel("layer l")
            ax.set_ylabel("n (layers ahead)")
            integer_ticks(ax.xaxis, ax.yaxis)
        for k in range(len(mats), rows * cols):
            axes[k // cols][k % cols].axis("off")
        fig.colorbar(im, ax=axes.ravel().tolist(), label="angular distance $d(x_l, x_{l+n})$")
        fig.suptitle("angular distance between layer inputs $x_l$ and $x_{l+n}$ (dark: the layers change the stream little)",
                     y=1.02)
        w.save(fig, "diag_angular_distance.png")

    # Variance by layer: block outputs, attention branches, MLP branches.
    series = [("block_output_variance", "block output x_l"), ("attn_branch_variance", "attention branch"),
              ("mlp_branch_variance", "MLP branch")]
    present = [(k, t) for k, t in series if any(finite_list(d.get(k)) for d in diags)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 4.3), squeeze=False)
        for ax, (key, title) in zip(axes[0], present):
            for d, lab in zip(diags, labels):
                v = finite_list(d.get(key))
                px, py = points(list(range(1, len(v) + 1)), v, positive=True)
                if px:
                    ax.plot(px, py, "o-", ms=3, color=colours[lab], label=lab)
            ax.set_yscale("log")
            ax.set_xlabel("layer l")
            integer_ticks(ax.xaxis)
            ax.set_ylabel("variance")
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle("variance by layer (held-out batches)")
        fig.tight_layout()
        w.save(fig, "diag_variance.png")
    else:
        warn("diagnose: no block_output_variance / branch variances in any input; diag_variance.png skipped")

    # Gradient norm by layer.
    if any(finite_list(d.get("grad_norm")) for d in diags):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for d, lab in zip(diags, labels):
            v = finite_list(d.get("grad_norm"))
            px, py = points(list(range(1, len(v) + 1)), v, positive=True)
            if px:
                ax.plot(px, py, "o-", ms=3, color=colours[lab], label=lab)
        ax.set_yscale("log")
        ax.set_xlabel("layer l")
        integer_ticks(ax.xaxis)
        ax.set_ylabel("L2 norm of the block's parameter gradients")
        ax.set_title("gradient norm by layer")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        w.save(fig, "diag_grad_norm.png")
    else:
        warn("diagnose: no grad_norm in any input (fathom-diagnose --no-gradients?); diag_grad_norm.png skipped")

    # Layer removal: loss increase per removed block, bars grouped by block.
    removal = [(lab, finite_list(d.get("loss_increase"))) for d, lab in zip(diags, labels)]
    removal = [(lab, v) for lab, v in removal if any(x is not None for x in v)]
    if removal:
        L = max(len(v) for _, v in removal)
        width = 0.8 / len(removal)
        fig, ax = plt.subplots(figsize=(max(7, 0.55 * L * max(1, len(removal)) ** 0.5 + 3), 4.5))
        values = []
        for k, (lab, v) in enumerate(removal):
            xs = [i + 1 - 0.4 + width * (k + 0.5) for i in range(len(v))]
            px, py = points(xs, v)
            values += py
            ax.bar(px, py, width=width, color=colours[lab], label=lab)
        big = max(abs(x) for x in values) if values else 0
        small = sorted(abs(x) for x in values)[len(values) // 2] if values else 0
        if big > 0 and small > 0 and big / small > 50:
            # One block (usually the first) dominates: symlog keeps the deep blocks readable.
            ax.set_yscale("symlog", linthresh=max(small / 2, 1e-4))
            ax.set_ylabel("loss increase (nats/token, symlog)")
        else:
            ax.set_ylabel("loss increase (nats/token)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(1, L + 1))
        ax.set_xlabel("removed block l")
        ax.set_title("layer removal: loss with block l skipped minus the intact loss")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        fig.tight_layout()
        w.save(fig, "diag_layer_removal.png")
    else:
        warn("diagnose: no loss_increase in any input (fathom-diagnose --no-removal?); diag_layer_removal.png skipped")


# ---------------------------------------------------------------------------------------------
# Command line


def load_metrics(inputs, labels_arg):
    runs, names = [], []
    for p in inputs:
        try:
            runs.append(read_metrics(p))
            names.append(run_name(metrics_path(p)))
        except OSError as e:
            warn(f"metrics: cannot read {metrics_path(p)}: {e.strerror or e}; skipped")
            continue
        if runs[-1]["bad_lines"]:
            warn(f"metrics: {runs[-1]['path']}: {runs[-1]['bad_lines']} lines were not metric records; skipped them")
    labels = parse_labels(labels_arg, len(inputs))
    if labels and len(runs) != len(inputs):
        raise SystemExit("plot.py: --labels given, but some inputs could not be read")
    return runs, unique_labels(labels or names, names)


def load_diagnose(inputs, labels_arg):
    diags, names, policies = [], [], []
    for p in inputs:
        try:
            diags.append(read_diagnose(p))
        except (OSError, ValueError) as e:
            warn(f"diagnose: cannot read {diagnose_path(p)}: {e}; skipped")
            continue
        names.append(run_name(diagnose_path(p)))
        pol = diags[-1].get("policy")
        policies.append(pol if isinstance(pol, str) and pol else names[-1])
    labels = parse_labels(labels_arg, len(inputs))
    if labels and len(diags) != len(inputs):
        raise SystemExit("plot.py: --labels given, but some inputs could not be read")
    # Labelled by run folder, as the metrics pictures are (compare_policies.py names folders by
    # policy); colours still follow the policy recorded in each file.
    return diags, unique_labels(labels or names, names)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="plot.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    pm = sub.add_parser("metrics", help="loss curves and per-layer variance over training from metrics.jsonl files")
    pm.add_argument("inputs", nargs="+", help="run folders or metrics.jsonl files, one per run")
    pm.add_argument("--labels", help="comma-separated labels, one per input (default: the run folder names)")
    pm.add_argument("--x", choices=["step", "tokens"], default="step", help="x axis of the curves (default: step)")
    pm.add_argument("--smooth", type=float, default=0.0,
                    help="EMA factor in [0, 1) for the training loss (0: raw; 0.9 smooths a noisy curve)")
    pm.add_argument("--out", default="plots", help="folder for the PNGs (default: plots)")
    pd = sub.add_parser("diagnose", help="heatmaps, variance, gradient norms and layer removal from fathom-diagnose JSON")
    pd.add_argument("inputs", nargs="+", help="run folders (their diagnose.json) or fathom-diagnose JSON files")
    pd.add_argument("--labels", help="comma-separated labels, one per input (default: the policy in each file)")
    pd.add_argument("--out", default="plots", help="folder for the PNGs (default: plots)")
    pr = sub.add_parser("runs", help="both of the above for every RUNS_DIR/*/ holding metrics.jsonl or diagnose.json")
    pr.add_argument("runs_dir", help="a folder of run folders (as written by compare_policies.py)")
    pr.add_argument("--x", choices=["step", "tokens"], default="step")
    pr.add_argument("--smooth", type=float, default=0.0)
    pr.add_argument("--out", help="folder for the PNGs (default: RUNS_DIR/plots)")
    a = ap.parse_args(argv)
    if getattr(a, "smooth", 0.0) and not 0.0 <= a.smooth < 1.0:
        ap.error(f"--smooth expects a factor in [0, 1), got {a.smooth}")

    if a.command == "runs":
        root = Path(a.runs_dir)
        if not root.is_dir():
            raise SystemExit(f"plot.py: runs: '{root}' is not a folder")
        out = Path(a.out) if a.out else root / "plots"
        metric_dirs = sorted(p.parent for p in root.glob("*/metrics.jsonl"))
        diag_dirs = sorted(p.parent for p in root.glob("*/diagnose.json"))
        if not metric_dirs and not diag_dirs:
            raise SystemExit(f"plot.py: runs: no '{root}/*/metrics.jsonl' or '{root}/*/diagnose.json'")
        w = Writer(out)
        if metric_dirs:
            runs, labels = load_metrics(metric_dirs, None)
            if runs:
                plot_metrics(runs, labels, w, a.x, a.smooth)
        if diag_dirs:
            diags, labels = load_diagnose(diag_dirs, None)
            if diags:
                plot_diagnose(diags, labels, w)
    elif a.command == "metrics":
        runs, labels = load_metrics(a.inputs, a.labels)
        if not runs:
            raise SystemExit("plot.py: metrics: none of the inputs could be read")
        w = Writer(a.out)
        plot_metrics(runs, labels, w, a.x, a.smooth)
    else:
        diags, labels = load_diagnose(a.inputs, a.labels)
        if not diags:
            raise SystemExit("plot.py: diagnose: none of the inputs could be read")
        w = Writer(a.out)
        plot_diagnose(diags, labels, w)
    if not w.written:
        raise SystemExit("plot.py: nothing to draw (see the messages above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
