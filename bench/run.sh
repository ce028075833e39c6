#!/usr/bin/env bash
# fathom-bench and the PyTorch baselines on the same card in one run, then one side-by-side table.
# Called by scripts/gpu.sh after the build; usage: bench/run.sh BUILD_DIR [OUT_DIR]
#   env: FATHOM_BENCH_POLICIES (default: all six), FATHOM_BENCH_WORKLOADS, FATHOM_BENCH_TORCH_MODES,
#        FATHOM_BENCH_STEPS (timed steps, default 25), FATHOM_BENCH_WARMUP (default 8),
#        FATHOM_BENCH_FP8_POLICIES (policies also run with --precision fp8; default pre-ln, empty:
#        no fp8 rows), FATHOM_BENCH_FP8_SCALINGS (their --fp8-scaling values; default
#        current,delayed), FATHOM_BENCH_GEMM_AUTOTUNE (fathom-bench's --gemm-autotune: off, on or
#        off,on; default on, the library's default; rows without it are labelled -autotune)
set -uo pipefail
build="${1:-${FATHOM_BUILD_DIR:?usage: bench/run.sh BUILD_DIR [OUT_DIR] (or FATHOM_BUILD_DIR set)}}"
out="${2:-${OUT:-$build/logs}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$out"
workloads="${FATHOM_BENCH_WORKLOADS:-llama-130m,gpt2-124m,llama-350m}"
policies="${FATHOM_BENCH_POLICIES:-pre-ln,lns,post-ln,deepnorm,mix-ln,sandwich-ln}"
modes="${FATHOM_BENCH_TORCH_MODES:-eager,compile}"
steps="${FATHOM_BENCH_STEPS:-25}"
warmup="${FATHOM_BENCH_WARMUP:-8}"
fp8_policies="${FATHOM_BENCH_FP8_POLICIES-pre-ln}"
IFS=, read -r -a fp8_scalings <<<"${FATHOM_BENCH_FP8_SCALINGS:-current,delayed}"
autotune="${FATHOM_BENCH_GEMM_AUTOTUNE:-on}"
rm -f "$out/bench_fathom.jsonl" "$out/bench_torch.jsonl"
rc=0
# One fathom-bench call per workload, at the batch and sequence length the PyTorch baseline uses.
IFS=, read -r -a workload_list <<<"$workloads"
for w in "${workload_list[@]}"; do
  if ! shape="$(python3 "$here/torch_baseline.py" --shape "$w")"; then
    rc=1
    continue
  fi
  read -r batch seq <<<"$shape"
  "$build/bin/fathom-bench" --workloads "$w" --batch "$batch" --seq-len "$seq" \
    --policies "$policies" --steps "$steps" --warmup "$warmup" --gemm-autotune "$autotune" \
    --json-out "$out/bench_fathom.jsonl" || rc=1
  if [[ -n "$fp8_policies" ]]; then
    for scaling in "${fp8_scalings[@]}"; do
      "$build/bin/fathom-bench" --workloads "$w" --batch "$batch" --seq-len "$seq" \
        --policies "$fp8_policies" --precision fp8 --fp8-scaling "$scaling" --steps "$steps" \
        --warmup "$warmup" --gemm-autotune "$autotune" --json-out "$out/bench_fathom.jsonl" || rc=1
    done
  fi
done
if python3 -c "import torch" 2>/dev/null; then
  PYTHONUNBUFFERED=1 python3 "$here/torch_baseline.py" --workloads "$workloads" --modes "$modes" \
    --steps "$steps" --warmup "$warmup" --json-out "$out/bench_torch.jsonl" || rc=1
else
  echo "bench/run.sh: python3 has no torch; PyTorch baselines skipped"
fi
echo
echo "==== fathom vs PyTorch (same card, same run)"
python3 "$here/compare.py" "$out/bench_fathom.jsonl" "$out/bench_torch.jsonl" | tee "$out/bench_table.txt"
exit $rc
