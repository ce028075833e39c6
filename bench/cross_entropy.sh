#!/usr/bin/env bash
# The fused cross-entropy's forms on a GPU machine: builds fathom_cuda_tests and fathom-bench
# (scripts/gpu.sh, Release), runs the [softmax] CUDA tests (every form of the fused forward against
# the CPU reference and bit for bit against each other), then times the pipelined form against
# the default (shared-row) form with bench/ab.sh, and profiles one step of each
# (bench/kernel_profile.sh, with DRAM bytes; it needs Nsight Compute).
# Usage: bench/cross_entropy.sh
#   env: FATHOM_BUILD_DIR (default build; scripts/gpu.sh builds in <dir>/gpu), OUT (logs),
#        FATHOM_AB_WORKLOADS (default llama-130m,gpt2-124m), FATHOM_BENCH_STEPS, FATHOM_BENCH_WARMUP
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
build="${FATHOM_BUILD_DIR:-$repo/build}/gpu"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
FATHOM_GPU_TARGETS="fathom_cuda_tests fathom-bench" FATHOM_GPU_SKIP_BENCH=1 scripts/gpu.sh \
  "[softmax]"
tests_rc=$?
FATHOM_CE_PIPELINED=1 FATHOM_AB_BASE_ENV="FATHOM_CE_PIPELINED=0" \
  FATHOM_AB_WORKLOADS="${FATHOM_AB_WORKLOADS:-llama-130m,gpt2-124m}" \
  bench/ab.sh env "$build" "$logs/cross_entropy_ab" 2>&1 | tee "$logs/cross_entropy_ab.log"
ab_rc=${PIPESTATUS[0]}
profile_rc=0  # kernel_profile.sh says so when Nsight Compute is not installed
for pipelined in 0 1; do
  FATHOM_PROFILE_BYTES=1 FATHOM_CE_PIPELINED=$pipelined bench/kernel_profile.sh "$build" \
    llama-130m pre-ln "$logs/cross_entropy_profile_$pipelined" --batch 128 --seq-len 256 \
    2>&1 | tee "$logs/cross_entropy_profile_$pipelined.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || profile_rc=1
done
echo "cross_entropy.sh: tests exit $tests_rc, A/B exit $ab_rc, profiles exit $profile_rc"
[[ $tests_rc -eq 0 && $ab_rc -eq 0 ]]
