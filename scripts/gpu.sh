#!/usr/bin/env bash
# The one project script for the GPU machine: configures Release for sm_90a, builds everything,
# runs the CPU tests and all [cuda] tests (fathom_cuda_tests), then the benchmarks (bench/run.sh)
# if present. Logs go to $OUT (else <build>/logs); a summary table ends the output.
# nlohmann-json and CLI11 come from .deps/include when their packages are missing (scripts/deps.sh
# fills it on a machine that has them; carry .deps along with the working tree).
# Usage: scripts/gpu.sh [extra Catch2 arguments for fathom_cuda_tests]
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/gpu), JOBS (default 16),
#        CUDA_ARCH (default 90a), FATHOM_GPU_SKIP_CPU_TESTS=1, FATHOM_GPU_SKIP_BENCH=1,
#        FATHOM_GPU_SKIP_DIST=1 (else, with 2+ GPUs, scripts/dist_gpu.sh runs on this build),
#        FATHOM_GPU_TARGETS="targets to build" (then only their phases run)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${FATHOM_BUILD_DIR:-$repo/build}/gpu"
jobs="${JOBS:-16}"
arch="${CUDA_ARCH:-90a}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"

names=()
results=()
seconds=()
notes=()
failed=0

# run_phase NAME LOGFILE COMMAND...: runs COMMAND with output to the console and LOGFILE.
run_phase() {
  local name="$1" log="$2"
  shift 2
  echo
  echo "==== $name (log: $log)"
  local start=$SECONDS
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  names+=("$name")
  seconds+=("$((SECONDS - start))")
  if [[ $rc -eq 0 ]]; then results+=("ok"); else results+=("FAILED ($rc)"); failed=1; fi
  return "$rc"
}
skip_phase() {
  names+=("$1"); results+=("skipped"); seconds+=("-"); notes+=("$1: $2")
}

summary() {
  echo
  echo "==== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
      sed 's/^/gpu: /'
  fi
  printf '%-28s %-14s %8s\n' "phase" "result" "seconds"
  for i in "${!names[@]}"; do
    printf '%-28s %-14s %8s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
  done
  for n in "${notes[@]}"; do echo "$n"; done
  echo "logs: $logs"
} 
trap 'summary | tee "$logs/summary.txt"' EXIT

nvcc=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [[ -z "$nvcc" ]]; then
  echo "gpu.sh: nvcc not found (looked on PATH and in /usr/local/cuda/bin)" >&2
  skip_phase "configure" "no nvcc"
  exit 1
fi

extra_include=()
if [[ -d "$repo/.deps/include" ]]; then
  extra_include=(-DFATHOM_EXTRA_INCLUDE="$repo/.deps/include")
fi

generator=(-G Ninja)
command -v ninja >/dev/null 2>&1 || generator=()

run_phase "configure" "$logs/configure.log" \
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DFATHOM_BUILD_TESTS=ON -DFATHOM_BUILD_EXAMPLES=ON "${extra_include[@]}" || exit 1

# FATHOM_GPU_TARGETS="a b": build only these targets (default: everything).
targets=()
for t in ${FATHOM_GPU_TARGETS:-}; do targets+=(--target "$t"); done
# Keep going past a broken target so that one bad file does not hide every other result; each
# later phase first checks that its own target is up to date (a stale binary is never run).
keep_going=(-- -k 0)
[[ ${#generator[@]} -eq 0 ]] && keep_going=(-- -k)
run_phase "build${FATHOM_GPU_TARGETS:+ $FATHOM_GPU_TARGETS} (-j$jobs)" "$logs/build.log" \
  cmake --build "$build" -j "$jobs" "${targets[@]}" "${keep_going[@]}"

built() { cmake --build "$build" -j "$jobs" --target "$1" >/dev/null 2>&1; }
# A phase runs when its target was asked for (all are, without FATHOM_GPU_TARGETS).
wanted() { [[ -z "${FATHOM_GPU_TARGETS:-}" || " $FATHOM_GPU_TARGETS " == *" $1 "* ]]; }

if [[ "${FATHOM_GPU_SKIP_CPU_TESTS:-0}" == 1 ]]; then
  skip_phase "CPU tests (ctest)" "FATHOM_GPU_SKIP_CPU_TESTS=1"
elif ! wanted fathom_tests; then
  skip_phase "CPU tests (ctest)" "fathom_tests not in FATHOM_GPU_TARGETS"
elif built fathom_tests; then
  run_phase "CPU tests (ctest)" "$logs/cpu_tests.log" \
    ctest --test-dir "$build" -L cpu -j "$jobs" --output-on-failure
  notes+=("CPU tests: $(grep -Eo '[0-9]+% tests passed.*' "$logs/cpu_tests.log" | tail -1)")
else
  names+=("CPU tests (ctest)"); results+=("NOT BUILT"); seconds+=("-"); failed=1
fi

if ! grep -q "fathom_cuda_tests" "$build/build.ninja" "$build/Makefile" 2>/dev/null; then
  skip_phase "CUDA tests [cuda]" "no tests/**/*.cu, so no fathom_cuda_tests"
elif ! wanted fathom_cuda_tests; then
  skip_phase "CUDA tests [cuda]" "fathom_cuda_tests not in FATHOM_GPU_TARGETS"
elif built fathom_cuda_tests; then
  run_phase "CUDA tests [cuda]" "$logs/cuda_tests.log" \
    "$build/bin/fathom_cuda_tests" --durations yes "$@"
  notes+=("CUDA tests: $(grep -E '^(All tests passed|test cases:)' "$logs/cuda_tests.log" |
                          tail -1)")
else
  names+=("CUDA tests [cuda]"); results+=("NOT BUILT"); seconds+=("-"); failed=1
fi

if [[ "${FATHOM_GPU_SKIP_BENCH:-0}" == 1 ]]; then
  skip_phase "bench" "FATHOM_GPU_SKIP_BENCH=1"
elif ! wanted fathom-bench; then
  skip_phase "bench" "fathom-bench not in FATHOM_GPU_TARGETS"
elif [[ -f bench/run.sh ]]; then
  run_phase "bench (bench/run.sh)" "$logs/bench.log" \
    bash bench/run.sh "$build" "$logs"
else
  skip_phase "bench" "bench/run.sh not present"
fi

ngpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [[ "${FATHOM_GPU_SKIP_DIST:-0}" == 1 ]]; then
  skip_phase "data parallel" "FATHOM_GPU_SKIP_DIST=1"
elif [[ "${ngpus:-0}" -lt 2 ]]; then
  skip_phase "data parallel" "fewer than 2 GPUs"
elif [[ -n "${FATHOM_GPU_TARGETS:-}" ]]; then
  skip_phase "data parallel" "FATHOM_GPU_TARGETS set"
else
  run_phase "data parallel (scripts/dist_gpu.sh)" "$logs/dist.log" \
    env FATHOM_DIST_BUILD="$build" OUT="$logs/dist" bash scripts/dist_gpu.sh
fi

if [[ "${FATHOM_GPU_SKIP_BENCH:-0}" == 1 || -n "${FATHOM_GPU_TARGETS:-}" ]]; then
  skip_phase "trainer vs bench" "benchmarks skipped"
else
  run_phase "trainer vs bench" "$logs/trainer_vs_bench.log" bash bench/trainer_vs_bench.sh "$build"
fi

exit "$failed"
