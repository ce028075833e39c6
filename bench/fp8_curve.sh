#!/usr/bin/env bash
# The loss curves of bf16 and fp8 training side by side: fathom-train in bf16, then in fp8 with
# each scaling recipe, same seed, same data; for each fp8 run the gap of every 100-step window of
# the training loss and of the validation losses to bf16's, and a picture (tools/plot.py, needs
# matplotlib).
# Usage: bench/fp8_curve.sh [BUILD_DIR (default build/gpu)] [OUT_DIR (default BUILD_DIR/logs)]
#   env: FATHOM_FP8_CURVE_PRESET (llama-130m), _STEPS (2000), _BATCH (64), _SEQ (256), _LR (1e-3),
#        _DATA and _VAL_DATA (token shard globs; default .data/real from
#        scripts/prepare_real_corpus.sh when it is there, else the built-in corpus),
#        _SCALINGS (the fp8 runs' --fp8-scaling values, default "current delayed"; run "fp8" is
#        current scaling, "fp8-delayed" delayed)
# The build must hold fathom-train (bench/fp8.sh builds it).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${1:-build/gpu}"
out="${2:-${OUT:-$build/logs}}"
mkdir -p "$out"
data="${FATHOM_FP8_CURVE_DATA:-}"
val="${FATHOM_FP8_CURVE_VAL_DATA:-}"
if [[ -z "$data" && -f .data/real/dataset.json ]]; then
  data='.data/real/train_*.bin'
  val='.data/real/val_*.bin'
fi
data_args=()
[[ -n "$data" ]] && data_args+=(--data "$data")
[[ -n "$val" ]] && data_args+=(--val-data "$val")
echo "fp8_curve: ${FATHOM_FP8_CURVE_PRESET:-llama-130m}, ${FATHOM_FP8_CURVE_STEPS:-2000} steps of" \
  "${FATHOM_FP8_CURVE_BATCH:-64} x ${FATHOM_FP8_CURVE_SEQ:-256}, data: ${data:-built-in corpus}"
runs=(bf16)
for scaling in ${FATHOM_FP8_CURVE_SCALINGS:-current delayed}; do
  [[ "$scaling" == current ]] && runs+=(fp8) || runs+=("fp8-$scaling")
done
rc=0
for run in "${runs[@]}"; do
  echo "==== loss curve: $run"
  rm -rf "$out/curve_$run"
  precision="${run%%-*}"
  scaling=current
  [[ "$run" == fp8-* ]] && scaling="${run#fp8-}"
  "$build/bin/fathom-train" --preset "${FATHOM_FP8_CURVE_PRESET:-llama-130m}" --policy pre-ln \
    --precision "$precision" --fp8-scaling "$scaling" --device cuda \
    --steps "${FATHOM_FP8_CURVE_STEPS:-2000}" \
    --batch "${FATHOM_FP8_CURVE_BATCH:-64}" --seq-len "${FATHOM_FP8_CURVE_SEQ:-256}" \
    --lr "${FATHOM_FP8_CURVE_LR:-1e-3}" --warmup 200 --eval-every 500 --log-every 1 \
    "${data_args[@]}" --out "$out/curve_$run" >"$out/curve_$run.log" 2>&1 || rc=1
  tail -4 "$out/curve_$run.log"
done
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
