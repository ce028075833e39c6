#!/usr/bin/env bash
# The loss curves of bf16 and fp8 training side by side: fathom-train in bf16, then in fp8 with
# each scaling recipe, same seed, same data; for each fp8 run the gap of every 100-step window of
# the training loss and of the validation losses to bf16's, and a picture (tools/plot.py, needs
# matplotlib).
# Usage: bench/fp8_curve.sh [BUILD_DIR (default build/gpu)] [OUT_DIR (default BUILD_DIR/logs)]
#   env: FATHOM_FP8_CURVE_PRESET (llama-130m), _STEPS (2000), _BATCH (32 on .data/real-large, else
#        64), _SEQ (256), _LR (1e-3), _SEED (0),
#        _DATA and _VAL_DATA (token shard globs; default: .data/real-large from
#        `scripts/prepare_real_corpus.sh --dictionary 16` when it is there (21M tokens: 2000 steps of
#        32 x 256 read 16.4M, none twice), else .data/real from scripts/prepare_real_corpus.sh (4.2M
#        tokens: 2000 steps of 64 x 256 pass over it 8 times, so the late training loss measures
#        memorization), else the built-in corpus),
#        _SCALINGS (the fp8 runs' --fp8-scaling values, default "current delayed"; run "fp8" is
#        current scaling, "fp8-delayed" delayed), _PARALLEL (1: start the runs together on the one
#        card; each run's numbers are the same either way), _DEVICE (cuda)
# The build must hold fathom-train (bench/fp8.sh builds it).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${1:-build/gpu}"
out="${2:-${OUT:-$build/logs}}"
mkdir -p "$out"
data="${FATHOM_FP8_CURVE_DATA:-}"
val="${FATHOM_FP8_CURVE_VAL_DATA:-}"
batch="${FATHOM_FP8_CURVE_BATCH:-64}"
if [[ -z "$data" ]]; then
  for corpus in .data/real-large .data/real; do
    if [[ -f "$corpus/dataset.json" ]]; then
      data="$corpus/train_*.bin"
      val="$corpus/val_*.bin"
      [[ "$corpus" == .data/real-large ]] && batch="${FATHOM_FP8_CURVE_BATCH:-32}"
      break
    fi
  done
fi
data_args=()
[[ -n "$data" ]] && data_args+=(--data "$data")
[[ -n "$val" ]] && data_args+=(--val-data "$val")
steps="${FATHOM_FP8_CURVE_STEPS:-2000}"
seq="${FATHOM_FP8_CURVE_SEQ:-256}"
passes=""
if [[ -n "$data" ]] && command -v python3 >/dev/null 2>&1 && [[ -f "$(dirname "$data")/dataset.json" ]]; then
  passes=$(python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["train"]["tokens"]; print(f", {int(sys.argv[2]) / t:.2f} passes over its {t:,} training tokens")' \
    "$(dirname "$data")/dataset.json" $((steps * batch * seq)) 2>/dev/null)
fi
echo "fp8_curve: ${FATHOM_FP8_CURVE_PRESET:-llama-130m}, $steps steps of $batch x $seq," \
  "data: ${data:-built-in corpus}$passes"
runs=(bf16)
for scaling in ${FATHOM_FP8_CURVE_SCALINGS:-current delayed}; do
  [[ "$scaling" == current ]] && runs+=(fp8) || runs+=("fp8-$scaling")
done
rc=0
train() {  # one run: its log and metrics under $out/curve_RUN
  local run=$1 precision="${1%%-*}" scaling=current
  [[ "$run" == fp8-* ]] && scaling="${run#fp8-}"
  rm -rf "$out/curve_$run"
  "$build/bin/fathom-train" --preset "${FATHOM_FP8_CURVE_PRESET:-llama-130m}" --policy pre-ln \
    --precision "$precision" --fp8-scaling "$scaling" --device "${FATHOM_FP8_CURVE_DEVICE:-cuda}" \
    --steps "$steps" --batch "$batch" --seq-len "$seq" --seed "${FATHOM_FP8_CURVE_SEED:-0}" \
    --lr "${FATHOM_FP8_CURVE_LR:-1e-3}" --warmup 200 --eval-every 500 --log-every 1 \
    "${data_args[@]}" --out "$out/curve_$run" >"$out/curve_$run.log" 2>&1
}
if [[ "${FATHOM_FP8_CURVE_PARALLEL:-0}" == 1 ]]; then
  pids=()
  for run in "${runs[@]}"; do train "$run" & pids+=($!); done
  for i in "${!runs[@]}"; do
    wait "${pids[$i]}" || rc=1
    echo "==== loss curve: ${runs[$i]}"
    tail -4 "$out/curve_${runs[$i]}.log"
  done
else
  for run in "${runs[@]}"; do
    echo "==== loss curve: $run"
    train "$run" || rc=1
    tail -4 "$out/curve_$run.log"
  done
fi
for run in "${runs[@]:1}"; do
echo "==== $run against bf16"
python3 - "$out/curve_bf16/metrics.jsonl" "$out/curve_$run/metrics.jsonl" "$run" <<'PY' |
import json, sys
def read(path):
    train, val = {}, {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r:
            train[r["step"]] = r["loss"]
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
    return train, val
(a, va), (b, vb) = read(sys.argv[1]), read(sys.argv[2])
steps = sorted(set(a) & set(b))
worst = 0.0
for i in range(0, len(steps) - 99, 100):
    w = steps[i:i + 100]
    ma, mb = sum(a[s] for s in w) / 100, sum(b[s] for s in w) / 100
    gap = (mb - ma) / ma
    worst = max(worst, abs(gap))
    print(f"steps {w[0]:5d}-{w[-1]:5d}: bf16 {ma:.4f} {sys.argv[3]} {mb:.4f} gap {100 * gap:+.2f}%")
for s in sorted(set(va) & set(vb)):
    print(f"val_loss at step {s}: bf16 {va[s]:.4f} {sys.argv[3]} {vb[s]:.4f} gap {100 * (vb[s] - va[s]) / va[s]:+.2f}%")
print(f"{sys.argv[3]}: largest 100-step window gap {100 * worst:.2f}% (goal: within 1%)")
PY
  tee "$out/${run}_curve_gap.txt"
done
dirs=() labels=()
for run in "${runs[@]}"; do dirs+=("$out/curve_$run"); labels+=("$run"); done
python3 tools/plot.py metrics "${dirs[@]}" --labels "$(IFS=,; echo "${labels[*]}")" \
  --out "$out/fp8_curves" || echo "fp8_curve: no picture (tools/plot.py needs matplotlib)"
exit $rc
