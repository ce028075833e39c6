#!/usr/bin/env bash
# fathom's main job (README "Quick start"): installs missing packages, builds the main program in
# Release and runs it. Extra arguments go to the program.
# Usage: scripts/run.sh [program args...]
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/release), JOBS (default nproc),
#        FATHOM_NO_APT=1
set -euo pipefail

# ---- The main job: program (a CMake target in <build>/bin) and its arguments. ONE LINE TO CHANGE.
MAIN_JOB=(custom_policy)
# ------------------------------------------------------------------------------------------------

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
cuda_args=(-DFATHOM_ENABLE_CUDA=OFF)
if [[ -n "$nvcc" ]]; then
  cuda_args=(-DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
  # Build for the GPU that is here, if there is one; otherwise fathom's default architectures.
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    cuda_args+=(-DCMAKE_CUDA_ARCHITECTURES=native)
  fi
fi

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_EXAMPLES=ON \
  "${cuda_args[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target "${MAIN_JOB[0]}"

program="$build/bin/${MAIN_JOB[0]}"
echo "+ $program ${MAIN_JOB[*]:1} $*"
exec "$program" "${MAIN_JOB[@]:1}" "$@"
