#!/usr/bin/env bash
# Builds tests/downstream, a project that uses fathom, three ways: find_package(fathom) against an
# install into a temporary prefix, add_subdirectory of this source tree, and FetchContent of it.
# Runs the resulting program each time. With nvcc available, the find_package build also compiles
# and links a CUDA translation unit against fathom::cuda; where fathom's build found NCCL, a
# program against fathom::nccl is built and run too.
# Usage: scripts/downstream.sh   (env: JOBS, FATHOM_DOWNSTREAM_DIR to keep the work folder)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="${JOBS:-$(nproc)}"
work="${FATHOM_DOWNSTREAM_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fathom-downstream.XXXXXX")}"
if [[ -z "${FATHOM_DOWNSTREAM_DIR:-}" ]]; then
  trap 'rm -rf "$work"' EXIT
fi

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

nvcc=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi

step() { echo; echo "== downstream: $*"; }

# 1. Install fathom (no tests, no examples) into a temporary prefix.
step "install fathom into $work/prefix"
cmake -S "$repo" -B "$work/fathom-build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=OFF -DFATHOM_ENABLE_CUDA=OFF \
  -DCMAKE_INSTALL_PREFIX="$work/prefix" >"$work/fathom-configure.log"
cmake --build "$work/fathom-build" -j "$jobs" >/dev/null
cmake --install "$work/fathom-build" >"$work/fathom-install.log"
test -f "$work/prefix/include/fathom/fathom.hpp"
test -f "$work/prefix/share/cmake/fathom/fathomConfig.cmake"

# 2. find_package(fathom) against that prefix.
cuda_args=()
if [[ -n "$nvcc" ]]; then
  cuda_args=(-DFATHOM_DOWNSTREAM_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
fi
# fathom::nccl is installed where fathom's build found NCCL (the CUDA toolkit often has it).
nccl=""
if [[ -f "$work/prefix/share/cmake/fathom/fathomNcclTargets.cmake" ]]; then
  nccl=1
  cuda_args+=(-DFATHOM_DOWNSTREAM_NCCL=ON)
fi
step "find_package(fathom)${nvcc:+ with fathom::cuda}${nccl:+ and fathom::nccl}"
cmake -S "$repo/tests/downstream" -B "$work/package" "${generator[@]}" \
  -DFATHOM_DOWNSTREAM_MODE=package -DCMAKE_PREFIX_PATH="$work/prefix" "${cuda_args[@]}"
cmake --build "$work/package" -j "$jobs"
"$work/package/downstream"
if [[ -n "$nvcc" ]]; then
  "$work/package/downstream_cuda" || { echo "downstream_cuda failed"; exit 1; }
fi
if [[ -n "$nccl" ]]; then
  "$work/package/downstream_nccl" || { echo "downstream_nccl failed"; exit 1; }
else
  echo "downstream: no fathom::nccl installed (fathom's build found no NCCL); its consumer skipped"
fi

# 3. add_subdirectory of the source tree, and 4. FetchContent of it, without asking for CUDA: the
# consumer's configure must not enable it (tests/downstream/CMakeLists.txt checks).
for mode in subdirectory fetchcontent; do
  step "$mode"
  cmake -S "$repo/tests/downstream" -B "$work/$mode" "${generator[@]}" \
    -DFATHOM_DOWNSTREAM_MODE="$mode" -DFATHOM_SOURCE_DIR="$repo"
  cmake --build "$work/$mode" -j "$jobs"
  "$work/$mode/downstream"
done

echo
echo "downstream: find_package, add_subdirectory and FetchContent builds all ok"
