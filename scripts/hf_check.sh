#!/usr/bin/env bash
# Checks that fathom checkpoints load in Hugging Face transformers and give fathom's logits: trains
# a tiny Llama and a tiny GPT-2 (pre-ln, fp32) for a few steps, dumps fathom's logits on held-out
# tokens with fathom-diagnose --logits-out, and runs scripts/hf_compare.py on each.
# Usage: scripts/hf_check.sh BUILD_DIR [OUT_DIR] [TOL]   (needs python3 with torch and transformers)
#   Larger presets: FATHOM_HF_PRESETS="llama-71m gpt2-124m" (random-init weights, 2 steps).
set -euo pipefail
build="${1:?usage: scripts/hf_check.sh BUILD_DIR [OUT_DIR] [TOL]}"
out="${2:-$(mktemp -d)}"
tol="${3:-1e-4}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
presets="${FATHOM_HF_PRESETS:-tiny gpt2-tiny}"
mkdir -p "$out"
rc=0
for preset in $presets; do
  run="$out/hf-$preset"
  rm -rf "$run"
  "$build/bin/fathom-train" --preset "$preset" --policy pre-ln --precision fp32 --steps 3 --batch 2 \
    --seq-len 64 --out "$run" --eval-every 0 --no-live >"$run.train.log" 2>&1 ||
    { echo "hf_check: training $preset failed (see $run.train.log)"; rc=1; continue; }
  "$build/bin/fathom-diagnose" "$run" --batches 1 --batch 2 --seq-len 64 --no-removal --no-gradients \
    --logits-out "$run/compare" --out "$run/diagnose.json" 2>>"$run.train.log"
  python3 "$here/hf_compare.py" "$run/ckpt-3" --input "$run/compare/compare_input.json" --tol "$tol" || rc=1
done
exit $rc
