#!/usr/bin/env bash
# Llama's stacked q/k/v GEMM and in-place RoPE on a GPU machine: builds fathom_cuda_tests and
# fathom-bench (scripts/gpu.sh, Release, sm_90), runs the CUDA tests that cover them ([rope]: the
# rope_qkv kernel and op against the CPU; [nn]: whole Llama and GPT-2 models against the CPU;
# [fp8]: the fp8 linear layers and loss curves), then times llama-130m (128 x 256) and llama-350m
# (128 x 256) in bf16 and fp8 and, where Nsight Compute is installed, profiles one llama-130m step
# (bench/kernel_profile.sh: compare the RoPE and GEMM rows with the v4 profile in bench/NOTES.md).
# With FATHOM_QKV_BASE=<commit> (e.g. the commit before "Llama attention: q, k and v in one GEMM"),
# fathom-bench of that commit is built beside it (git worktree) and timed in the same call first.
# Usage: bench/qkv_rope.sh [extra fathom-bench arguments]
#   env: FATHOM_BUILD_DIR (default build; scripts/gpu.sh builds in <dir>/gpu), OUT (logs), JOBS,
#        FATHOM_QKV_BASE
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
build="${FATHOM_BUILD_DIR:-$repo/build}/gpu"
logs="${OUT:-$build/logs}"
jobs="${JOBS:-16}"
mkdir -p "$logs"
FATHOM_GPU_TARGETS="fathom_cuda_tests fathom-bench" FATHOM_GPU_SKIP_BENCH=1 \
  FATHOM_GPU_SKIP_CPU_TESTS=1 FATHOM_GPU_SKIP_DIST=1 scripts/gpu.sh "[rope],[nn],[fp8]"
tests_rc=$?

# One fathom-bench binary over the two Llama workloads, bf16 then fp8.
time_llama() {
  local bench="$1" tag="$2"
  shift 2
  local rc=0
  for precision in bf16 fp8; do
    for workload in llama-130m llama-350m; do
      "$bench" --workloads "$workload" --batch 128 --policies pre-ln,lns --precision "$precision" \
        "$@" 2>&1 | tee -a "$logs/qkv_rope_bench_$tag.log"
      [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
    done
  done
  return $rc
}

base_rc=0
if [[ -n "${FATHOM_QKV_BASE:-}" ]]; then
  base_src="$build-base-src"
  base_build="$build-base"
  rm -rf "$base_src"
  git worktree prune
  if git worktree add --detach "$base_src" "$FATHOM_QKV_BASE" >"$logs/qkv_rope_base.log" 2>&1 &&
    cmake -S "$base_src" -B "$base_build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
      -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=ON >>"$logs/qkv_rope_base.log" 2>&1 &&
    cmake --build "$base_build" -j "$jobs" --target fathom-bench >>"$logs/qkv_rope_base.log" 2>&1
  then
    echo "==== base $FATHOM_QKV_BASE"
    time_llama "$base_build/bin/fathom-bench" base "$@" || base_rc=1
  else
    echo "qkv_rope.sh: building fathom-bench at $FATHOM_QKV_BASE failed (see $logs/qkv_rope_base.log)"
    base_rc=1
  fi
fi

echo "==== this tree"
time_llama "$build/bin/fathom-bench" head "$@"
bench_rc=$?

profile_rc=0
if command -v ncu >/dev/null 2>&1 || ls /opt/nvidia/nsight-compute/*/ncu >/dev/null 2>&1; then
  bench/kernel_profile.sh "$build" llama-130m pre-ln "$logs" 2>&1 |
    tee "$logs/qkv_rope_profile.log" || profile_rc=1
else
  echo "qkv_rope.sh: ncu not found, no kernel profile"
fi
echo "qkv_rope.sh: tests exit $tests_rc, base bench exit $base_rc, bench exit $bench_rc," \
  "profile exit $profile_rc"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
