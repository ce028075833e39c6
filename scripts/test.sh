#!/usr/bin/env bash
# fathom's test command (README "Tests"; .ci/run calls it): installs missing packages, checks the
# source format (scripts/check_format.sh, clang-format 14), then compiles three build trees at once
# with Ninja: the example programs (Release), the CUDA compile check and CUDA tests (where nvcc
# exists), and the CPU unit tests (fathom_tests) under AddressSanitizer + UndefinedBehaviorSanitizer.
# Then it runs the programs' ctest cases and the sanitized unit tests, fuzzes the file readers where
# clang is found (scripts/fuzz.sh), and builds the downstream consumer project three ways. Prints
# the wall and CPU seconds of each phase. (The unit tests are built once, sanitized; with
# FATHOM_SKIP_SANITIZE=1 they are built and run in the Release tree instead.)
# Usage: scripts/test.sh
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/test, <dir>/cuda, <dir>/asan and
#        puts the build logs in <dir>/logs), JOBS (default nproc), FATHOM_TEST_CUDA_EXAMPLES=1 (also
#        compile the CUDA parts of the example programs), FATHOM_SKIP_SANITIZE=1,
#        FATHOM_SKIP_DOWNSTREAM=1, FATHOM_NO_APT=1, FATHOM_SKIP_FUZZ=1, FATHOM_FUZZ_SECONDS
#        (default 20 a target)
# CUDA code is only compiled here, never run (scripts/gpu.sh builds and runs all of it on a GPU
# machine), so the CUDA tests build for sm_90a only, without host optimization and as one unity
# translation unit (FATHOM_TESTS_UNITY); the compile check of <fathom/cuda.hpp> still covers sm_80
# and sm_90a. The CUDA parts of the example programs are left to gpu.sh by default: they are the
# costliest translation units of the project. bench/NOTES.md ("CI time") has the phases' costs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
root="${FATHOM_BUILD_DIR:-$repo/build}"
build="$root/test"
cuda_build="$root/cuda"
asan_build="$root/asan"
jobs="${JOBS:-$(nproc)}"

# Each phase reports wall seconds and the CPU seconds of its child processes (user + system): on a
# shared machine the second says what the phase costs, whatever else is running.
phase_names=()
phase_seconds=()
phase_cpu=()
phase_start=0
cpu_start=0
children_cpu() {  # CPU seconds used so far by this shell's finished child processes
  # /proc/PID/stat fields 16 and 17: cutime and cstime in clock ticks (the name field, 2, has no
  # spaces here: it is "bash").
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($16 + $17) / hz }' "/proc/$$/stat"
}
begin() {
  phase_start=$SECONDS
  cpu_start=$(children_cpu)
  echo
  echo "==== $1"
  phase_names+=("$1")
}
end() {
  local took=$((SECONDS - phase_start)) cpu=$(($(children_cpu) - cpu_start))
  phase_seconds+=("$took")
  phase_cpu+=("$cpu")
  echo "==== ${phase_names[-1]}: ${took}s (${cpu} CPU s)"
}
summary() {
  echo
  printf '%-44s %8s %8s\n' "phase" "wall s" "CPU s"
  local total_cpu=0
  for i in "${!phase_names[@]}"; do
    printf '%-44s %8s %8s\n' "${phase_names[$i]}" "${phase_seconds[$i]:-FAILED}" "${phase_cpu[$i]:-}"
    total_cpu=$((total_cpu + ${phase_cpu[$i]:-0}))
  done
  printf '%-44s %8s %8s\n' "total" "$SECONDS" "$total_cpu"
}
trap summary EXIT

begin "setup (apt-get what is missing)"
bash scripts/setup.sh clang-format
end

begin "format (scripts/check_format.sh)"
bash scripts/check_format.sh
end

# nvcc is often installed outside PATH.
nvcc=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [[ -n "$nvcc" ]]; then
  echo "nvcc: $nvcc ($("$nvcc" --version | tail -1))"
else
  echo "nvcc: not found, CUDA compile checks skipped"
fi

sanitize=1
[[ "${FATHOM_SKIP_SANITIZE:-0}" == 1 ]] && sanitize=0

begin "configure"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_TESTS=ON \
  -DFATHOM_BUILD_EXAMPLES=ON -DFATHOM_ENABLE_CUDA=OFF
cuda_targets=()
if [[ -n "$nvcc" ]]; then
  cuda_examples=OFF
  cuda_targets=(--target fathom_cuda_compile)
  if [[ "${FATHOM_TEST_CUDA_EXAMPLES:-0}" == 1 ]]; then
    cuda_examples=ON
    cuda_targets=(--target all)
  fi
  cmake -S . -B "$cuda_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_TESTS=ON \
    -DFATHOM_BUILD_EXAMPLES="$cuda_examples" -DFATHOM_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90a -DFATHOM_TESTS_UNITY=ON \
    "-DCMAKE_CUDA_FLAGS_RELEASE=-O0 -DNDEBUG" >/dev/null
  if [[ $cuda_examples == OFF ]] && grep -q "fathom_cuda_tests" "$cuda_build/build.ninja"; then
    cuda_targets+=(--target fathom_cuda_tests)
  fi
  if [[ $cuda_examples == OFF ]] && grep -q "fathom_nccl_tests" "$cuda_build/build.ninja"; then
    cuda_targets+=(--target fathom_nccl_tests)  # only where NCCL is found
  fi
fi
if [[ $sanitize == 1 ]]; then
  cmake -S . -B "$asan_build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-Og -g1" \
    -DFATHOM_BUILD_TESTS=ON -DFATHOM_BUILD_EXAMPLES=OFF -DFATHOM_ENABLE_CUDA=OFF \
    -DFATHOM_SANITIZE="address,undefined" >/dev/null
fi
end

# The three build trees compile at once: each alone ends with one long translation unit on one core
# while the other waits (the CUDA unity file, a CPU backend of the programs, an ASan test file).
# The sanitized tests get $jobs jobs, the others half as many each. Each build's output goes to
# <dir>/logs/build-<name>.log and is shown when it fails.
begin "build Release + CUDA + ASan trees (at once)"
logs="$root/logs"
mkdir -p "$logs"
half=$(((jobs + 1) / 2))
build_names=()
build_pids=()
start_build() {  # start_build NAME JOBS TREE TARGET...: cmake --build in the background
  local name=$1 j=$2 tree=$3
  shift 3
  (
    t0=$SECONDS
    cmake --build "$tree" -j "$j" "$@" >"$logs/build-$name.log" 2>&1
    echo "build $name: $((SECONDS - t0)) s (-j$j)"
  ) &
  build_names+=("$name")
  build_pids+=($!)
}
cpu_targets=(--target fathom_examples)
[[ $sanitize == 0 ]] && cpu_targets+=(--target fathom_tests)
start_build "release" "$half" "$build" "${cpu_targets[@]}"
if [[ -n "$nvcc" ]]; then
  start_build "cuda" "$half" "$cuda_build" "${cuda_targets[@]}"
fi
if [[ $sanitize == 1 ]]; then
  start_build "asan" "$jobs" "$asan_build" --target fathom_tests
fi
build_failed=0
for i in "${!build_pids[@]}"; do
  if ! wait "${build_pids[$i]}"; then
    echo "build ${build_names[$i]}: FAILED; the end of $logs/build-${build_names[$i]}.log:"
    tail -60 "$logs/build-${build_names[$i]}.log"
    build_failed=1
  fi
done
[[ $build_failed == 0 ]] || exit 1
end

# Catch2's case count of a fathom_tests binary (v2's --list-tests exits with the count).
count_cases() {
  local cases
  cases="$({ "$1" --list-tests || true; } | grep -Eo '[0-9]+ (matching )?test cases?' | tail -1)"
  echo "Catch2: $cases in fathom_tests"
}

if [[ $sanitize == 0 ]]; then
  begin "run CPU tests (ctest)"
  ctest --test-dir "$build" -L cpu -j "$jobs" --output-on-failure
  count_cases "$build/bin/fathom_tests"
  end
else
  begin "run program tests (ctest, Release)"
  ctest --test-dir "$build" -L cpu -LE unit -j "$jobs" --output-on-failure
  end

  begin "run CPU tests with ASan+UBSan (ctest)"
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    ctest --test-dir "$asan_build" -L unit -j "$jobs" --output-on-failure
  count_cases "$asan_build/bin/fathom_tests"
  end
fi

if [[ "${FATHOM_SKIP_FUZZ:-0}" != 1 ]]; then
  if command -v "${CXX_FUZZ:-clang++}" >/dev/null 2>&1; then
    begin "fuzz the file readers (libFuzzer, ${FATHOM_FUZZ_SECONDS:-20} s a target)"
    FATHOM_BUILD_DIR="$root" JOBS="$jobs" bash scripts/fuzz.sh
    end
  else
    echo "clang++: not found, fuzzing skipped (.ci/run installs clang and libFuzzer)"
  fi
fi

if [[ "${FATHOM_SKIP_DOWNSTREAM:-0}" != 1 ]]; then
  begin "downstream consumer (3 ways)"
  JOBS="$jobs" bash scripts/downstream.sh
  end
fi

echo
echo "scripts/test.sh: all phases passed"
