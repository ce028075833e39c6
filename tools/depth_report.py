#!/usr/bin/env python3
"""The depth study's report: docs/results/depth/README.md and its pictures, from the runs that
scripts/depth_runs.sh trained and scripts/depth_status.sh --collect packed.

  depth_report.py RESULTS [--out docs/results/depth] [--gpu-minutes M] [--machine TEXT]
  depth_report.py corpus MANIFEST DATASET_JSON [--out docs/results/depth]   (corpus.md only)

RESULTS is depth-results.tar.gz or the folder it unpacks to (one folder per run holding
metrics.jsonl, diagnose.json, config.json, trainer_state.json, train.log, maybe FAILED; and the
corpus's dataset.json and manifest.json). The pictures come from tools/plot.py (loss curves, output
variance by layer and over training, angular distance heatmaps, loss increase on layer removal), one
set per depth; they need matplotlib, and without it the report is written without them and says so.
Each run's metrics.jsonl and diagnose.json are copied beside the report.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(TOOLS))
import plot  # noqa: E402

# The paper's Table 1 (C4 validation perplexity, T5 tokenizer), by model and policy.
PAPER = {
    "130M": {"post-ln": 26.95, "deepnorm": 27.17, "mix-ln": 26.07, "pre-ln": 26.73, "lns": 25.76},
    "250M": {"post-ln": 1409.79, "deepnorm": 22.77, "mix-ln": 21.39, "pre-ln": 21.92, "lns": 20.35},
}
NAMES = {"pre-ln": "Pre-LN", "lns": "LNS", "post-ln": "Post-LN", "mix-ln": "Mix-LN",
         "deepnorm": "DeepNorm", "sandwich-ln": "Sandwich-LN"}
DIVERGED_LOSS = 6.0  # a validation loss above this (perplexity > 400) has not learned the text


def fmt(x, spec=".4f"):
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def ppl(loss):
    return math.exp(loss) if isinstance(loss, (int, float)) and loss < 50 else None


def load(results):
    root = Path(results)
    if root.is_file():
        tmp = Path(tempfile.mkdtemp())
        with tarfile.open(root) as t:
            t.extractall(tmp)
        root = next(tmp.iterdir())
    runs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        r = {"name": d.name, "dir": d}
        cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
        fields = plot_fields(cfg)
        r["policy"] = fields.get("policy") or d.name.split("-", 1)[1].replace("-seed1", "")
        r["model"] = fields.get("model", {})
        state = json.loads((d / "trainer_state.json").read_text()) if (d / "trainer_state.json").is_file() else {}
        r["seed"] = state.get("seed", 0)
        r["metrics"] = plot.read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else None
        r["summary"] = plot.summarize_metrics(r["metrics"]) if r["metrics"] else {}
        r["diag"] = plot.read_diagnose(d / "diagnose.json") if (d / "diagnose.json").is_file() else None
        r["diag_summary"] = plot.summarize_diagnose(r["diag"]) if r["diag"] else {}
        r["failed"] = (d / "FAILED").read_text().strip() if (d / "FAILED").is_file() else None
        r["layers"] = r["model"].get("layers") or (12 if d.name.startswith("130m") else 24)
        # The study's two depths, by the run's name (scripts/depth_runs.sh): 130m-* are the
        # 12-block runs, compared with the paper's 130M column; the rest are 24-block (250M).
        r["group"] = "12-block" if d.name.startswith("130m") else "24-block"
        runs.append(r)
    meta = {}
    for f in ("dataset.json", "manifest.json"):
        if (root / f).is_file():
            meta[f] = json.loads((root / f).read_text())
    return root, runs, meta


def plot_fields(cfg):
    """fathom's own fields of a checkpoint's config.json."""
    for key in ("fathom", "fathom_fields"):
        if isinstance(cfg.get(key), dict):
            return cfg[key]
    return cfg


def status(r):
    s = r["summary"]
    if r["failed"]:
        return "failed: " + r["failed"].splitlines()[-1][:80]
    if s.get("nonfinite_loss"):
        return "non-finite loss"
    v = s.get("final_val_loss")
    if v is None:
        return "no evaluation"
    return "diverged" if v > DIVERGED_LOSS else "ok"


def python_with_matplotlib():
    for py in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if py and Path(py).exists() and subprocess.run([py, "-c", "import matplotlib"],
                                                       capture_output=True).returncode == 0:
            return py
    return None


def draw(groups, out):
    py = python_with_matplotlib()
    if not py:
        return {}, "no matplotlib here: run tools/depth_report.py where python3-matplotlib is installed for the pictures"
    files = {}
    for group, runs in groups.items():
        dest = out / "plots" / group
        dest.mkdir(parents=True, exist_ok=True)
        labels = ",".join(r["name"] for r in runs)
        with_metrics = [r for r in runs if r["metrics"]]
        if with_metrics:
            res = subprocess.run([py, str(TOOLS / "plot.py"), "metrics", *[str(r["dir"]) for r in with_metrics],
                                  "--labels", ",".join(r["name"] for r in with_metrics), "--x", "tokens",
                                  "--out", str(dest)], capture_output=True, text=True)
            files.setdefault(group, []).extend(res.stdout.split())
        with_diag = [r for r in runs if r["diag"]]
        if with_diag:
            res = subprocess.run([py, str(TOOLS / "plot.py"), "diagnose", *[str(r["dir"]) for r in with_diag],
                                  "--labels", ",".join(r["name"] for r in with_diag), "--out", str(dest)],
                                 capture_output=True, text=True)
            files.setdefault(group, []).extend(res.stdout.split())
        del labels
    return files, None


def corpus_page(manifest, dataset):
    """docs/results/depth/corpus.md: the packages with their licences and sizes, and the tokens."""
    tok = dataset.get("tokenizer", {})
    train, val = dataset.get("train", {}), dataset.get("val", {})
    splits = manifest.get("splits", {})
    lines = ["# The depth study's corpus", "",
             "English text from Debian's packages only (scripts/depth_corpus.sh; tools/corpus_text.py reads "
             "each kind of file). Exact duplicate documents and paragraphs (64 characters or more) are "
             f"dropped ({manifest.get('duplicate_documents_dropped', 0)} documents), and short lines repeated "
             f"in more than 40 documents ({manifest.get('boilerplate_lines', 0)} distinct lines: navigation, "
             "headers, footers) are dropped as page furniture. Validation is "
             f"{manifest.get('val_permille', 10) / 10:g}% of the documents, chosen by a hash of their text; no "
             "document and no paragraph of 64 characters or more is in both splits (corpus_text.py --check).", "",
             "| package | licence | documents | characters (M) |", "|---|---|---:|---:|"]
    for p in sorted(manifest.get("packages", []), key=lambda p: -p.get("chars_kept", 0)):
        lines.append(f"| {p['package']} | {p['licence']} | {p.get('documents_kept', 0):,} | "
                     f"{p.get('chars_kept', 0) / 1e6:.1f} |")
    total_chars = sum(p.get("chars_kept", 0) for p in manifest.get("packages", []))
    lines.append(f"| all | | {sum(p.get('documents_kept', 0) for p in manifest.get('packages', [])):,} | "
                 f"{total_chars / 1e6:.1f} |")
    lines += ["", "| split | documents | bytes | tokens | bytes per token |", "|---|---:|---:|---:|---:|"]
    for name, s in (("train", train), ("validation", val)):
        m = splits.get("train" if name == "train" else "val", {})
        bpt = m.get("bytes", 0) / s["tokens"] if s.get("tokens") else None
        lines.append(f"| {name} | {m.get('documents', 0):,} | {m.get('bytes', 0):,} | {s.get('tokens', 0):,} | "
                     f"{fmt(bpt, '.2f')} |")
    lines += ["", f"Tokenizer: SentencePiece BPE trained by `fathom-prepare --train-tokenizer "
              f"{tok.get('vocab_size')}` on the training split (a seeded sample of its lines), byte fallback, "
              "digits split, text kept as it is (identity normalization), so every byte string round-trips.", ""]
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "corpus":
        cp = argparse.ArgumentParser(description="write corpus.md from a corpus manifest and dataset.json")
        cp.add_argument("cmd")
        cp.add_argument("manifest")
        cp.add_argument("dataset")
        cp.add_argument("--out", default="docs/results/depth")
        c = cp.parse_args()
        out = Path(c.out)
        out.mkdir(parents=True, exist_ok=True)
        page = corpus_page(json.loads(Path(c.manifest).read_text()), json.loads(Path(c.dataset).read_text()))
        (out / "corpus.md").write_text(page)
        print(f"depth_report: {out / 'corpus.md'}")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="depth-results.tar.gz or its folder")
    ap.add_argument("--out", default="docs/results/depth")
    ap.add_argument("--gpu-minutes", help="the GPU time spent, in words (\"25 minutes\")")
    ap.add_argument("--runs-command", default="scripts/depth_runs.sh",
                    help="the command that started the runs, as it was typed")
    ap.add_argument("--machine", default="", help="the GPU machine, in words")
    ap.add_argument("--notes", help="a Markdown file of hand-written findings, placed after the tables "
                    "(default: OUT/findings.md when it exists)")
    a = ap.parse_args()
    root, runs, meta = load(a.results)
    if not runs:
        raise SystemExit(f"depth_report: no run folders in {a.results}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        dest = out / "runs" / r["name"]
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "diagnose.json", "config.json"):
            if (r["dir"] / f).is_file():
                shutil.copy(r["dir"] / f, dest / f)
    groups = {g: [r for r in runs if r["group"] == g] for g in ("12-block", "24-block")}
    groups = {k: v for k, v in groups.items() if v}
    files, plot_note = draw(groups, out)

    ds = meta.get("dataset.json", {})
    train_tokens = ds.get("train", {}).get("tokens")
    lines = ["# The curse of depth at the paper's shapes: real text, a subword tokenizer", ""]
    lines += ["Each run: the same corpus, the same tokenizer, the same schedule (the paper's: Adam "
              "0.9/0.999, lr 1e-3, no weight decay, no clipping, bf16, sequence 256, 131,072 tokens a "
              "step, linear warmup over 10% of the steps, cosine to 10%), and the same seed (so the same "
              "batches in the same order) unless the run says seed 1. Only the normalization policy differs.", ""]
    if a.machine:
        lines += [f"- machine: {a.machine}"]
    if ds and meta.get("manifest.json") and not (out / "corpus.md").exists():
        (out / "corpus.md").write_text(corpus_page(meta["manifest.json"], ds))  # else kept as it is
    if ds:
        tok = ds.get("tokenizer", {})
        lines += [f"- corpus: {train_tokens:,} train tokens, {ds.get('val', {}).get('tokens', 0):,} validation "
                  f"tokens (held-out documents), {tok.get('type')} tokenizer, vocabulary {tok.get('vocab_size')} "
                  "([corpus.md](corpus.md): packages, licences, sizes)"]
    if a.gpu_minutes:
        lines += [f"- GPU time: {a.gpu_minutes}"]
    lines += [""]

    lines += ["## Final validation perplexity", "",
              "| run | blocks x width | policy | seed | steps | tokens | epochs | val loss | perplexity | paper (C4) | status |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        s = r["summary"]
        m = r["model"]
        shape = f"{m.get('layers', r['layers'])} x {m.get('d_model', '?')}"
        paper_col = "130M" if r["group"] == "12-block" else "250M"
        paper = PAPER[paper_col].get(r["policy"])
        epochs = s["tokens"] / train_tokens if s.get("tokens") and train_tokens else None
        lines.append(f"| {r['name']} | {shape} | {NAMES.get(r['policy'], r['policy'])} | {r['seed']} | "
                     f"{s.get('last_step') or '-'} | {s.get('tokens') or '-'} | {fmt(epochs, '.2f')} | "
                     f"{fmt(s.get('final_val_loss'))} | {fmt(ppl(s.get('final_val_loss')), '.2f')} | "
                     f"{fmt(paper, '.2f')} ({paper_col}) | {status(r)} |")
    lines += ["", "The paper's numbers are C4 perplexities with the T5 tokenizer after 20k (130M) and 40k "
              "(250M) steps of 131k tokens; ours are on a different corpus with a different tokenizer and "
              "far fewer tokens, so only the order of the policies and which ones diverge can be compared, "
              "not the values. The paper's 24-block model is llama-250m (d 768); ours is llama-71m's width "
              "(d 512) at 24 blocks when the runs say so in 'blocks x width'.", ""]

    # Seed spread and the LNS - Pre-LN gaps.
    by = {r["name"]: r for r in runs}
    notes = []
    a0, a1 = by.get("24L-pre-ln"), by.get("24L-pre-ln-seed1")
    spread = None
    if a0 and a1 and a0["summary"].get("final_val_loss") and a1["summary"].get("final_val_loss"):
        spread = abs(a0["summary"]["final_val_loss"] - a1["summary"]["final_val_loss"])
        notes.append(f"Seed spread (24-block Pre-LN, seeds 0 and 1): {spread:.4f} nats of validation loss "
                     "(measured at 24 blocks only: the 12-block gap is compared with it for scale, not as "
                     "that shape's own noise).")
    for prefix in ("130m", "24L"):
        p, l = by.get(f"{prefix}-pre-ln"), by.get(f"{prefix}-lns")
        if p and l and p["summary"].get("final_val_loss") and l["summary"].get("final_val_loss"):
            gap = p["summary"]["final_val_loss"] - l["summary"]["final_val_loss"]
            verdict = ""
            if spread is not None:
                verdict = (" — larger than the seed spread" if abs(gap) > spread else
                           " — within the seed spread, so not a finding")
            notes.append(f"{prefix}: Pre-LN minus LNS = {gap:+.4f} nats "
                         f"({'LNS ahead' if gap > 0 else 'Pre-LN ahead'}){verdict}.")
    diverged = [r["name"] for r in runs if status(r) != "ok"]
    notes.append("Runs that diverged or failed: " + (", ".join(diverged) if diverged else "none") +
                 ". The paper's Table 1 has Post-LN diverging at 250M (24 blocks, d 768), and DeepNorm and "
                 "Mix-LN too at 350M (24 blocks, d 1024) and 1B.")
    lines += ["## What agrees with the paper and what does not", ""] + [f"- {n}" for n in notes] + [""]

    lines += ["## Per-layer findings (fathom-diagnose on each final checkpoint, held-out batches)", "",
              "| run | last-layer variance | last / first | d(x_l, x_l+1), deepest quarter | d, all | loss increase on removal, deepest quarter (mean / max) | most harmful removal |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        d = r["diag_summary"]
        if not d:
            continue
        ratio = (d["last_layer_variance"] / d["first_layer_variance"]
                 if d.get("last_layer_variance") and d.get("first_layer_variance") else None)
        lines.append(f"| {r['name']} | {fmt(d.get('last_layer_variance'), '.3g')} | {fmt(ratio, '.1f')} | "
                     f"{fmt(d.get('deep_angular'))} | {fmt(d.get('all_angular'))} | "
                     f"{fmt(d.get('deep_removal_mean'))} / {fmt(d.get('deep_removal_max'))} | "
                     f"block {d.get('worst_removal_block') or '-'} |")
    lines += ["", "The paper's picture: under Pre-LN the output variance grows with depth and the deep blocks "
              "sit close to their neighbours (small angular distance) and can be removed at little cost; "
              "under LNS the variance stays bounded and removing a deep block costs more.", ""]

    notes_file = Path(a.notes) if a.notes else out / "findings.md"
    if notes_file.is_file():
        lines += [notes_file.read_text().rstrip(), ""]
    elif a.notes:
        raise SystemExit(f"depth_report: --notes {a.notes}: no such file")

    lines += ["## Pictures", ""]
    if plot_note:
        lines += [plot_note, ""]
    for group, fs in files.items():
        lines += [f"### {group}", ""]
        for f in fs:
            rel = Path(f).resolve().relative_to(out.resolve())
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]

    lines += ["## Commands", "", "Here (a machine with Debian's registry): the corpus bundle, carried to the GPU machine.",
              "", "```", "scripts/deps.sh", "cmake -S . -B build -DFATHOM_BUILD_EXAMPLES=ON && cmake --build build --target fathom-prepare",
              "scripts/depth_corpus.sh bundle --build build", "```", "",
              "On the GPU machine (carry .deps, .corpus/bundle and .corpus/bundle-1): build, shards, the queued runs; then progress and the results.",
              "", "```", a.runs_command, "scripts/depth_status.sh", "scripts/depth_status.sh --collect   # $OUT/depth-results.tar.gz",
              "```", "", "The report: `tools/depth_report.py depth-results.tar.gz --out docs/results/depth`.", ""]
    queue_files = sorted(root.glob("queue-gpu*.sh"))
    if queue_files:
        lines += ["The exact fathom-train commands of each queue:", ""]
        for q in queue_files:
            lines += [f"<details><summary>{q.name}</summary>", "", "```bash", q.read_text().rstrip(), "```", "", "</details>", ""]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"depth_report: {out / 'README.md'}")


if __name__ == "__main__":
    main()
