#!/usr/bin/env bash
# The comparison behind docs/results: on a GPU machine, a 12-block Llama-style byte-level model
# trained with each normalization policy on the real corpus (fortunes + the Jargon File, prepared
# here by scripts/prepare_real_corpus.sh into .data/real and carried along), the same tokens for
# each, then fathom-diagnose, the plots and the report. Builds fathom-train and fathom-diagnose with
# CUDA first when they are missing. The report, plots and small per-policy files land in
# $RESULTS (default $OUT/results, else docs/results), laid out as docs/results.
#
# Usage: docs/results/run.sh [--policies a,b] [more fathom-train flags, none of those set below]
#   env: FATHOM_BUILD_DIR (default build-gpu); RUNS (default <build>/compare, kept between calls on
#        a warm machine, so the same command again goes on where a call stopped); RESULTS; STEPS
#        (default 400); BATCH (default 32); PRECISION (default fp32; bf16 is faster); DEVICE (default
#        cuda); TIME_LIMIT (seconds, default 480: no policy is started that would end past it);
#        CUDA_ARCH (default 90); JOBS (default 16)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
build="${FATHOM_BUILD_DIR:-build-gpu}"
runs="${RUNS:-$build/compare}"
results="${RESULTS:-${OUT:+$OUT/results}}"
results="${results:-docs/results}"
steps="${STEPS:-400}"
batch="${BATCH:-32}"
device="${DEVICE:-cuda}"
precision="${PRECISION:-fp32}"
time_limit="${TIME_LIMIT:-480}"
policies="pre-ln,lns,post-ln,deepnorm,mix-ln,sandwich-ln"
if [[ "${1:-}" == "--policies" ]]; then
  policies="$2"
  shift 2
fi

if ! compgen -G ".data/real/train_*.bin" >/dev/null || ! compgen -G ".data/real/val_*.bin" >/dev/null; then
  echo "run.sh: no shards in .data/real; prepare them (scripts/prepare_real_corpus.sh) and carry .data/real" >&2
  exit 1
fi

start=$SECONDS
if [[ ! -x "$build/bin/fathom-train" || ! -x "$build/bin/fathom-diagnose" ]]; then
  nvcc="$(command -v nvcc || true)"
  [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  if [[ -z "$nvcc" ]]; then echo "run.sh: nvcc not found" >&2; exit 1; fi
  extra=()
  [[ -d .deps/include ]] && extra=(-DFATHOM_EXTRA_INCLUDE="$repo/.deps/include")
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  echo "==== building fathom-train and fathom-diagnose with CUDA in $build"
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DFATHOM_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
    -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=ON "${extra[@]}" >/dev/null
  cmake --build "$build" -j "${JOBS:-16}" --target fathom-train fathom-diagnose
  echo "==== built in $((SECONDS - start)) s"
fi
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi

# 12 blocks x d_model 256 (4 heads of 64, SwiGLU d_ff 688), RMSNorm and RoPE, byte vocabulary:
# about 9.6M parameters. 32 x 256 = 8192 tokens a step, 400 steps = 3.3M tokens a policy (0.8
# passes over the 4.2M training tokens). The paper's recipe otherwise: AdamW, lr 1e-3, cosine to
# 10%, 10% warmup, clipping at 1.0, the same seed (and so the same batches) for every policy.
remaining=$(( time_limit - (SECONDS - start) ))
(( remaining > 60 )) || remaining=60
entry="docs/results/run.sh --policies $policies${*:+ $*}"
entry="STEPS=$steps BATCH=$batch PRECISION=$precision DEVICE=$device $entry"
python3 tools/compare_policies.py --policies "$policies" --build "$build" --out "$runs" --skip-existing \
  --entry-command "$entry" \
  --prune-checkpoints --time-limit "$remaining" --diagnose-batches 8 --diagnose-batch 8 --publish "$results" \
  --preset tiny --layers 12 --d-model 256 --heads 4 --d-ff 688 --vocab 257 --seq-len 256 --batch "$batch" \
  --steps "$steps" --lr 1e-3 --warmup $((steps / 10)) --clip 1.0 --seed 0 --precision "$precision" \
  --eval-every $((steps / 4)) --eval-batches 8 --log-every 10 --device "$device" \
  --data '.data/real/train_*.bin' --val-data '.data/real/val_*.bin' "$@"
echo "==== run.sh: $((SECONDS - start)) s; report: $results/README.md"
