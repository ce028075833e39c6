#!/usr/bin/env bash
# fp8 on a GPU machine: builds what the fp8 checks need, runs the [fp8] tests (CPU: conversions,
# reference kernels, linear_fp8 and the model switch; CUDA: every fp8 kernel against the CPU
# reference, the GEMM's cuBLASLt and tiled routes, and the 300-step loss curves of fp8 against
# bf16), a short fathom-train run with --precision fp8, then fathom-bench on llama-350m in bf16 and
# fp8 with each scaling recipe (same card, same run).
# Usage: bench/fp8.sh [BUILD_DIR (default build/gpu)] [OUT_DIR (default BUILD_DIR/logs)]
#   env: JOBS (default 16), CUDA_ARCH (default 90a), FATHOM_FP8_WORKLOADS (default llama-350m),
#        FATHOM_FP8_POLICIES (default pre-ln,lns), FATHOM_BENCH_STEPS (25), FATHOM_BENCH_WARMUP (8),
#        FATHOM_FP8_CURVE=1: then bench/fp8_curve.sh (the 2000-step loss curves of bf16 and fp8)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${1:-build/gpu}"
out="${2:-${OUT:-$build/logs}}"
jobs="${JOBS:-16}"
mkdir -p "$out"
extra_include=()
[[ -d .deps/include ]] && extra_include=(-DFATHOM_EXTRA_INCLUDE="$repo/.deps/include")
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" -DFATHOM_BUILD_TESTS=ON -DFATHOM_BUILD_EXAMPLES=ON \
  "${extra_include[@]}" >"$out/fp8_configure.log" || { echo "fp8.sh: configure failed"; exit 1; }
cmake --build "$build" -j "$jobs" --target fathom_tests fathom_cuda_tests fathom-train fathom-bench ||
  { echo "fp8.sh: build failed"; exit 1; }

rc=0
echo "==== CPU [fp8] tests"
"$build/bin/fathom_tests" "[fp8]" | tee "$out/fp8_cpu_tests.log" || rc=1
echo "==== CUDA [fp8] tests"
"$build/bin/fathom_cuda_tests" "[fp8]" --durations yes | tee "$out/fp8_cuda_tests.log" || rc=1

echo "==== fathom-train --precision fp8 (tiny, built-in corpus, 200 steps)"
rm -rf "$out/fp8_train_run"
"$build/bin/fathom-train" --preset tiny --policy lns --precision fp8 --device cuda --steps 200 \
  --batch 16 --seq-len 128 --out "$out/fp8_train_run" | tee "$out/fp8_train.log" || rc=1

echo "==== fathom-bench bf16 vs fp8 (current and delayed scaling)"
rm -f "$out/bench_fp8.jsonl"
for run in bf16 fp8:current fp8:delayed; do
  "$build/bin/fathom-bench" --workloads "${FATHOM_FP8_WORKLOADS:-llama-350m}" \
    --policies "${FATHOM_FP8_POLICIES:-pre-ln,lns}" --precision "${run%%:*}" \
    $([[ "$run" == *:* ]] && echo --fp8-scaling "${run#*:}") \
    --steps "${FATHOM_BENCH_STEPS:-25}" --warmup "${FATHOM_BENCH_WARMUP:-8}" \
    --json-out "$out/bench_fp8.jsonl" || rc=1
done
python3 bench/compare.py "$out/bench_fp8.jsonl" /dev/null | tee "$out/bench_fp8_table.txt"

# FATHOM_FP8_CURVE=1: the 2000-step loss curves of bf16 and fp8 (bench/fp8_curve.sh).
if [[ "${FATHOM_FP8_CURVE:-0}" == 1 ]]; then
  bench/fp8_curve.sh "$build" "$out" || rc=1
fi
exit $rc
