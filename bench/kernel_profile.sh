#!/usr/bin/env bash
# Per-kernel times of one steady-state fathom-bench training step (the NVTX range "profile_step"),
# through Nsight Compute with the clocks left alone, then grouped by kernel (kernel_profile.py).
# Usage: bench/kernel_profile.sh BUILD_DIR WORKLOAD POLICY [OUT_DIR] [fathom-bench options...]
#   env: FATHOM_PROFILE_BYTES=1 also counts each kernel's DRAM bytes (read and written), so the
#        table shows the rate each kernel moved memory at.
#   e.g. bench/kernel_profile.sh build/gpu llama-130m pre-ln /tmp/prof --precision fp8
set -euo pipefail
build="${1:?usage: bench/kernel_profile.sh BUILD_DIR WORKLOAD POLICY [OUT_DIR]}"
workload="${2:?workload}"
policy="${3:?policy}"
out="${OUT:-$build/logs}"
shift $(( $# < 3 ? $# : 3 ))
# OUT_DIR is optional: an argument starting with "-" is the first fathom-bench option.
if [[ $# -gt 0 && "$1" != -* ]]; then
  out="$1"
  shift
fi
tag=""
[[ $# -gt 0 ]] && tag="_$(echo "$*" | tr -c 'A-Za-z0-9.-' '_' | sed 's/_*$//')"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1 || true)"
[[ -n "$ncu" ]] || { echo "kernel_profile.sh: ncu (Nsight Compute) not found" >&2; exit 1; }
mkdir -p "$out"
csv="$out/kernels_${workload}_${policy}${tag}.csv"
metrics=gpu__time_duration.sum
[[ "${FATHOM_PROFILE_BYTES:-0}" == 1 ]] && metrics+=",dram__bytes_read.sum,dram__bytes_write.sum"
"$ncu" --clock-control none --metrics "$metrics" --csv --print-units base \
  --nvtx --nvtx-include "profile_step/" --log-file "$csv" \
  "$build/bin/fathom-bench" --workloads "$workload" --policies "$policy" --steps 1 --warmup 2 \
  --peak-tflops 799 "$@" >/dev/null
python3 "$here/kernel_profile.py" "$csv"
