#!/usr/bin/env bash
# The bias-gradient routes on a GPU machine: builds fathom_cuda_tests and fathom-bench
# (scripts/gpu.sh, Release, sm_90), runs the [gemm] CUDA tests (gemm_bias_grad and the GELU GEMMs
# on every route), then times gpt2-124m with each route in one fathom-bench run (fused, dgelu,
# separate) and, where Nsight Compute is installed, profiles one step of the fused and the separate
# route (bench/kernel_profile.sh).
# Usage: bench/bias_grad.sh [extra fathom-bench arguments]
#   env: FATHOM_BUILD_DIR (default build; scripts/gpu.sh builds in <dir>/gpu), OUT (logs), JOBS
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
build="${FATHOM_BUILD_DIR:-$repo/build}/gpu"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
FATHOM_GPU_TARGETS="fathom_cuda_tests fathom-bench" FATHOM_GPU_SKIP_BENCH=1 scripts/gpu.sh "[gemm]"
tests_rc=$?
"$build/bin/fathom-bench" --workloads gpt2-124m --policies pre-ln \
  --bias-grad fused,dgelu,separate "$@" 2>&1 | tee "$logs/bias_grad_bench.log"
bench_rc=${PIPESTATUS[0]}
profile_rc=0
if command -v ncu >/dev/null 2>&1 || ls /opt/nvidia/nsight-compute/*/ncu >/dev/null 2>&1; then
  for route in fused separate; do
    bench/kernel_profile.sh "$build" gpt2-124m pre-ln "$logs" --bias-grad "$route" \
      2>&1 | tee "$logs/bias_grad_profile_$route.log" || profile_rc=1
  done
else
  echo "bias_grad.sh: ncu not found, no kernel profiles"
fi
echo "bias_grad.sh: tests exit $tests_rc, bench exit $bench_rc, profiles exit $profile_rc"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
