#!/usr/bin/env bash
# The CUDA attention kernels on a GPU machine: builds fathom_cuda_tests and fathom-attention-bench
# (scripts/gpu.sh, Release, sm_90a), runs the [attention] tests, then times the kernel variants at
# GPT-2's shape (B 32, H 12, T 1024) and Llama-130m's (B 128, H 12, T 256), head_dim 64, causal:
# the wgmma kernels (Hopper) and their alternative shapes, then the mma kernels and theirs.
# Usage: bench/attention.sh [extra fathom-attention-bench arguments]
#   env: FATHOM_BUILD_DIR (default build; scripts/gpu.sh builds in <dir>/gpu), OUT (logs), JOBS
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${FATHOM_BUILD_DIR:-$repo/build}/gpu"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
FATHOM_GPU_TARGETS="fathom_cuda_tests fathom-attention-bench" scripts/gpu.sh "[attention]"
tests_rc=$?
variants=wgmma,wgmma-wide,wgmma-narrow,wgmma-long-keys  # skipped without sm_90a code
variants+=,current,previous,forward-128-rows,pair-order,dq-128-rows,backward-128-rows
"$build/bin/fathom-attention-bench" --variants "$variants" "$@" 2>&1 | tee "$logs/attention_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "attention.sh: tests exit $tests_rc, bench exit $bench_rc"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
