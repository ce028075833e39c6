#!/usr/bin/env bash
# fathom-train's tokens/s next to fathom-bench's for one workload on one GPU: both run the same
# train::TrainStep (forward, backward, clipping on the device, AdamW); fathom-train adds its data
# sampler, the upload of each batch and a loss read per logged window. Default: llama-130m, bf16,
# batch 128 x 256 tokens, Pre-LN.
# Usage: bench/trainer_vs_bench.sh BUILD_DIR [STEPS] [POLICY]
#   BUILD_DIR holds bin/fathom-train and bin/fathom-bench built with CUDA (Release).
set -euo pipefail
build="${1:?usage: bench/trainer_vs_bench.sh BUILD_DIR [STEPS] [POLICY]}"
steps="${2:-60}"
policy="${3:-pre-ln}"
preset=llama-130m batch=128 seq=256
out="$(mktemp -d "${TMPDIR:-/tmp}/fathom-trainer-vs-bench.XXXXXX")"
trap 'rm -rf "$out"' EXIT

echo "== fathom-bench ($preset, $policy, bf16, $batch x $seq)"
"$build/bin/fathom-bench" --workloads "$preset" --policies "$policy" --precision bf16 \
  --batch "$batch" --seq-len "$seq" --steps 25 --warmup 8 --json-out "$out/bench.jsonl"

echo "== fathom-train ($preset, $policy, bf16, $batch x $seq, $steps steps on the built-in corpus)"
"$build/bin/fathom-train" --preset "$preset" --policy "$policy" --precision bf16 --device cuda \
  --batch "$batch" --seq-len "$seq" --steps "$steps" --log-every 10 --eval-every 0 \
  --eval-batches 1 --no-live --out "$out/run" | tail -n 4

python3 - "$out/bench.jsonl" "$out/run/metrics.jsonl" "$steps" <<'PY'
import json, statistics, sys
bench = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
steps = int(sys.argv[3])
# Logged windows of 10 steps after the first 20 (warm-up: GEMM plans, the allocator's cache).
windows = [r["tokens_per_s"] for r in map(json.loads, open(sys.argv[2]))
           if "tokens_per_s" in r and r["step"] > 20 and r["step"] % 10 == 0]
if not windows:
    sys.exit(f"trainer_vs_bench: no logged window after step 20 in {steps} steps; give more steps")
train = statistics.median(windows)
print()
print(f"{'program':<14} {'tokens/s':>12}")
print(f"{'fathom-bench':<14} {bench['tokens_per_s']:>12.0f}")
print(f"{'fathom-train':<14} {train:>12.0f}   (median of {len(windows)} windows of 10 steps)")
print(f"fathom-train / fathom-bench = {train / bench['tokens_per_s']:.3f} on {bench['device']}")
PY
