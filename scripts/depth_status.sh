#!/usr/bin/env bash
# Progress of the depth study's runs (scripts/depth_runs.sh), and with --collect their small
# files packed for the report: each run's metrics.jsonl, diagnose.json, log, final config.json and
# trainer_state.json (and FAILED, where a run failed), with the corpus's dataset.json and
# manifest.json, as one depth-results.tar.gz in $OUT (else the current folder). tools/depth_report.py
# turns that archive into docs/results/depth.
# Usage: scripts/depth_status.sh [--collect]   env: RUNS (default runs/depth)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
runs="${RUNS:-runs/depth}"
collect=0
[[ "${1:-}" == "--collect" ]] && collect=1
[[ -d "$runs" ]] || { echo "depth_status: no runs in '$runs' (scripts/depth_runs.sh starts them)" >&2; exit 1; }

for pidfile in "$runs"/queue-gpu*.pid; do
  [[ -f "$pidfile" ]] || continue
  q="$(basename "$pidfile" .pid)"
  if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$q: running (pid $(cat "$pidfile"))"; else echo "$q: finished"; fi
done
python3 - "$runs" <<'PY'
import json, os, re, sys, glob
runs = sys.argv[1]
print(f"{'run':<18} {'step':>11} {'loss':>7} {'val':>7} {'ppl':>8} {'tok/s':>9} {'eta min':>7}  state")
for d in sorted(p for p in glob.glob(os.path.join(runs, "*")) if os.path.isdir(p)):
    name = os.path.basename(d)
    steps = None  # from the queue script's "if [[ ! -d 'RUNS/NAME/ckpt-STEPS' ..." line
    for q in glob.glob(os.path.join(runs, "queue-gpu*.sh")):
        for line in open(q):
            m = re.search(r"/" + re.escape(name) + r"/ckpt-(\d+)'", line)
            if m:
                steps = int(m.group(1))
    last, val, tps = {}, None, None
    mf = os.path.join(d, "metrics.jsonl")
    if os.path.isfile(mf):
        for line in open(mf):
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if "loss" in j:
                last = j
                tps = j.get("tokens_per_s", tps)
            if "val_loss" in j:
                val = j["val_loss"]
    step = last.get("step", 0)
    state = "failed" if os.path.isfile(os.path.join(d, "FAILED")) else \
            "done" if os.path.isfile(os.path.join(d, "diagnose.json")) else \
            "trained" if steps and os.path.isdir(os.path.join(d, f"ckpt-{steps}")) else "running/waiting"
    eta = ""
    if steps and tps and step < steps:
        eta = f"{(steps - step) * (last.get('tokens', 0) / max(step, 1)) / tps / 60:.1f}"
    import math
    ppl = f"{math.exp(val):.2f}" if isinstance(val, (int, float)) and val < 50 else "-"
    loss = f"{last['loss']:.3f}" if isinstance(last.get("loss"), (int, float)) else "-"
    vs = f"{val:.3f}" if isinstance(val, (int, float)) else "-"
    print(f"{name:<18} {step:>5}/{steps or '?':<5} {loss:>7} {vs:>7} {ppl:>8} {tps or 0:>9.0f} {eta:>7}  {state}")
PY

if [[ "$collect" == 1 ]]; then
  dest="${OUT:-.}"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/depth-results"
  for d in "$runs"/*/; do
    name="$(basename "$d")"
    out="$stage/depth-results/$name"
    mkdir -p "$out"
    for f in metrics.jsonl diagnose.json FAILED; do [[ -f "$d/$f" ]] && cp "$d/$f" "$out/"; done
    [[ -f "$runs/$name.log" ]] && tail -c 200000 "$runs/$name.log" > "$out/train.log"
    last="$(ls -d "$d"ckpt-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)"
    if [[ -n "$last" ]]; then
      cp "$last/config.json" "$out/config.json"
      cp "$last/trainer_state.json" "$out/trainer_state.json"
      echo "$(basename "$last")" > "$out/last_checkpoint"
    fi
  done
  for f in .corpus/bundle/dataset.json .corpus/bundle/manifest.json; do [[ -f "$f" ]] && cp "$f" "$stage/depth-results/"; done
  cp "$runs"/queue-gpu*.sh "$stage/depth-results/" 2>/dev/null || true
  mkdir -p "$dest"
  tar -C "$stage" -czf "$dest/depth-results.tar.gz" depth-results
  echo "depth_status: $dest/depth-results.tar.gz ($(du -h "$dest/depth-results.tar.gz" | cut -f1))"
fi
