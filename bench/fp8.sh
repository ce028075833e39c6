#!/usr/bin/env bash
# fp8 on a GPU machine: builds what the fp8 checks need, runs the [fp8] tests (CPU: conversions,
# reference kernels, linear_fp8 and the model switch; CUDA: every fp8 kernel against the CPU
# reference, the GEMM's cuBLASLt and tiled routes, and the 300-step loss curves of fp8 against
# bf16), a short fathom-train run with --precision fp8, then fathom-bench on llama-350m in bf16 and
# fp8 (same card, same run).
# Usage: bench/fp8.sh [BUILD_DIR (default build/gpu)] [OUT_DIR (default BUILD_DIR/logs)]
#   env: JOBS (default 16), CUDA_ARCH (default 90), FATHOM_FP8_WORKLOADS (default llama-350m),
#        FATHOM_FP8_POLICIES (default pre-ln,lns), FATHOM_BENCH_STEPS (25), FATHOM_BENCH_WARMUP (8),
#        FATHOM_FP8_CURVE=1 (and FATHOM_FP8_CURVE_PRESET, _STEPS, _DATA): the 2000-step loss curves
#        of bf16 and fp8, their gap per 100-step window, and a picture
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
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DFATHOM_BUILD_TESTS=ON -DFATHOM_BUILD_EXAMPLES=ON \
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

echo "==== fathom-bench bf16 vs fp8"
rm -f "$out/bench_fp8.jsonl"
for precision in bf16 fp8; do
  "$build/bin/fathom-bench" --workloads "${FATHOM_FP8_WORKLOADS:-llama-350m}" \
    --policies "${FATHOM_FP8_POLICIES:-pre-ln,lns}" --precision "$precision" \
    --steps "${FATHOM_BENCH_STEPS:-25}" --warmup "${FATHOM_BENCH_WARMUP:-8}" \
    --json-out "$out/bench_fp8.jsonl" || rc=1
done
python3 bench/compare.py "$out/bench_fp8.jsonl" /dev/null | tee "$out/bench_fp8_table.txt"

# FATHOM_FP8_CURVE=1: the loss curves of bf16 and fp8 over FATHOM_FP8_CURVE_STEPS (2000) steps of
# FATHOM_FP8_CURVE_PRESET (llama-130m, batch 128 x 256) on FATHOM_FP8_CURVE_DATA (token shards;
# default the built-in corpus), the gap of every 100-step window, and a picture (tools/plot.py).
if [[ "${FATHOM_FP8_CURVE:-0}" == 1 ]]; then
  data_args=()
  [[ -n "${FATHOM_FP8_CURVE_DATA:-}" ]] && data_args=(--data "$FATHOM_FP8_CURVE_DATA")
  for precision in bf16 fp8; do
    echo "==== loss curve: $precision"
    rm -rf "$out/curve_$precision"
    "$build/bin/fathom-train" --preset "${FATHOM_FP8_CURVE_PRESET:-llama-130m}" --policy pre-ln \
      --precision "$precision" --device cuda --steps "${FATHOM_FP8_CURVE_STEPS:-2000}" \
      --batch 128 --seq-len 256 --lr 1e-3 --warmup 200 --eval-every 0 --log-every 1 \
      "${data_args[@]}" --out "$out/curve_$precision" | tail -4 || rc=1
  done
  python3 - "$out/curve_bf16/metrics.jsonl" "$out/curve_fp8/metrics.jsonl" <<'PY' |
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
steps = sorted(set(a) & set(b))
worst = 0.0
for i in range(0, len(steps) - 99, 100):
    w = steps[i:i + 100]
    ma, mb = sum(a[s] for s in w) / 100, sum(b[s] for s in w) / 100
    gap = abs(mb - ma) / ma
    worst = max(worst, gap)
    print(f"steps {w[0]:5d}-{w[-1]:5d}: bf16 {ma:.4f} fp8 {mb:.4f} gap {100 * gap:.2f}%")
print(f"largest 100-step window gap {100 * worst:.2f}% (goal: within 1%)")
PY
    tee "$out/fp8_curve_gap.txt"
  python3 tools/plot.py metrics "$out/curve_bf16" "$out/curve_fp8" --labels bf16,fp8 \
    --out "$out/fp8_curves" || echo "fp8.sh: no picture (tools/plot.py needs matplotlib)"
fi
exit $rc
