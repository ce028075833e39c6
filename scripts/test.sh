#!/usr/bin/env bash
# fathom's test command (README "Tests"; .ci/run calls it): installs missing packages, builds with
# Ninja, runs the CPU tests, builds the examples and (where nvcc exists) the CUDA compile check and
# the CUDA tests, rebuilds the CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer and
# runs them, then builds the downstream consumer project three ways. Prints the time of each phase.
# Usage: scripts/test.sh
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/test and <dir>/asan), JOBS
#        (default nproc), FATHOM_SKIP_SANITIZE=1, FATHOM_SKIP_DOWNSTREAM=1, FATHOM_NO_APT=1
# CUDA code is only compiled here, never run (scripts/gpu.sh runs it on a GPU machine), so the CUDA
# tests and programs build for sm_90 only and without host optimization; the compile check of
# <fathom/cuda.hpp> still covers sm_80 and sm_90.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
root="${FATHOM_BUILD_DIR:-$repo/build}"
build="$root/test"
asan_build="$root/asan"
jobs="${JOBS:-$(nproc)}"

phase_names=()
phase_seconds=()
phase_start=0
begin() {
  phase_start=$SECONDS
  echo
  echo "==== $1"
  phase_names+=("$1")
}
end() {
  local took=$((SECONDS - phase_start))
  phase_seconds+=("$took")
  echo "==== ${phase_names[-1]}: ${took}s"
}
summary() {
  echo
  echo "phase                                   seconds"
  for i in "${!phase_names[@]}"; do
    printf '%-40s %6s\n' "${phase_names[$i]}" "${phase_seconds[$i]:-FAILED}"
  done
  printf '%-40s %6s\n' "total" "$SECONDS"
}
trap summary EXIT

begin "setup (apt-get what is missing)"
bash scripts/setup.sh
end

# nvcc is often installed outside PATH.
nvcc=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
cuda_args=(-DFATHOM_ENABLE_CUDA=OFF)
if [[ -n "$nvcc" ]]; then
  cuda_args=(-DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90
             "-DCMAKE_CUDA_FLAGS_RELEASE=-O0 -DNDEBUG")
  echo "nvcc: $nvcc ($("$nvcc" --version | tail -1))"
else
  echo "nvcc: not found, CUDA compile checks skipped"
fi

begin "configure"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_TESTS=ON \
  -DFATHOM_BUILD_EXAMPLES=ON "${cuda_args[@]}"
end

begin "build CPU tests"
cmake --build "$build" -j "$jobs" --target fathom_tests
end

begin "build examples${nvcc:+, CUDA compile check, CUDA tests}"
cmake --build "$build" -j "$jobs"
end

begin "run CPU tests (ctest)"
ctest --test-dir "$build" -L cpu -j "$jobs" --output-on-failure
echo "Catch2: $("$build/bin/fathom_tests" --list-tests | grep -Eo '[0-9]+ (matching )?test cases?' | tail -1)"
end

if [[ "${FATHOM_SKIP_SANITIZE:-0}" != 1 ]]; then
  begin "build CPU tests with ASan+UBSan"
  cmake -S . -B "$asan_build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
    -DFATHOM_BUILD_TESTS=ON -DFATHOM_BUILD_EXAMPLES=OFF -DFATHOM_ENABLE_CUDA=OFF \
    -DFATHOM_SANITIZE="address,undefined" >/dev/null
  cmake --build "$asan_build" -j "$jobs" --target fathom_tests
  end

  begin "run CPU tests with ASan+UBSan"
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    ctest --test-dir "$asan_build" -L cpu -j "$jobs" --output-on-failure
  end
fi

if [[ "${FATHOM_SKIP_DOWNSTREAM:-0}" != 1 ]]; then
  begin "downstream consumer (3 ways)"
  JOBS="$jobs" bash scripts/downstream.sh
  end
fi

echo
echo "scripts/test.sh: all phases passed"
