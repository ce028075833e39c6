#!/usr/bin/env bash
# fathom's main job (README "Quick start"): installs missing packages, builds fathom-train in
# Release and trains a model on the built-in corpus: on the GPU when one is present (built with
# CUDA), else on the CPU (built without CUDA, which compiles much faster). Extra arguments go to
# fathom-train and override the defaults below (e.g. --policy pre-ln --steps 100).
# The run folder is runs/quickstart, and each call replaces the run there (fathom-train --overwrite
# says what it removed), unless the arguments name their own --out (a folder that holds another
# run is then refused, as fathom-train does), --resume (continue the run) or --overwrite.
# Usage: scripts/run.sh [fathom-train args...]
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/release), JOBS (default nproc),
#        FATHOM_NO_APT=1
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${FATHOM_BUILD_DIR:-$repo/build}/release"
jobs="${JOBS:-$(nproc)}"

bash scripts/setup.sh

nvcc=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
gpu=0
if [[ -n "$nvcc" ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi

if [[ $gpu == 1 ]]; then
  # Hopper (compute capability 9.0) gets sm_90a code, which the wgmma attention kernels need.
  arch=native
  [[ "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)" == "9.0" ]] &&
    arch=90a
  cuda_args=(-DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch")
  # A 12-block byte-level Llama (9.6M parameters) with LayerNorm Scaling, bf16, 16M tokens.
  defaults=(--preset tiny --layers 12 --d-model 256 --heads 4 --d-ff 688 --policy lns --precision bf16
            --device cuda --batch 32 --seq-len 256 --steps 2000 --eval-every 500 --diag-every 100)
else
  cuda_args=(-DFATHOM_ENABLE_CUDA=OFF)
  # The tiny preset (4 blocks, d 64) with LayerNorm Scaling on the CPU: 400 steps of 16 x 128 tokens.
  defaults=(--preset tiny --policy lns --device cpu --batch 16 --seq-len 128 --steps 400 --lr 3e-3
            --eval-every 100 --diag-every 50)
fi

# Ninja (scripts/setup.sh installs it); a folder configured already keeps its generator, since
# CMake refuses to switch (e.g. build/release made by `cmake -S . -B build/release` alone).
generator=(-G Ninja)
[[ -f "$build/CMakeCache.txt" ]] && generator=()
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_EXAMPLES=ON \
  -DFATHOM_BUILD_TESTS=OFF "${cuda_args[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target fathom-train

program="$build/bin/fathom-train"
out="$repo/runs/quickstart"
own_out=0 chosen=0
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  case "${args[i]}" in
    --out) own_out=1 out="${args[i + 1]:-}" ;;
    --out=*) own_out=1 out="${args[i]#--out=}" ;;
    --resume | --resume=* | --overwrite) chosen=1 ;;
  esac
done
folder=()
[[ $own_out == 1 ]] || folder=(--out "$out")
[[ $own_out == 1 || $chosen == 1 ]] || folder+=(--overwrite)  # the quickstart's run is replaced
echo "+ $program ${defaults[*]} ${folder[*]} --sample 120 $*"
"$program" "${defaults[@]}" "${folder[@]}" --sample 120 "$@"
echo "Run folder: $out (metrics.jsonl, ckpt-*). Sample more text with:"
echo "  $program --generate $out --prompt '(3+' --tokens 200"
