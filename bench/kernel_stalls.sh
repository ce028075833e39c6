#!/usr/bin/env bash
# Why a kernel runs below the card's rate: Nsight Compute's speed-of-light, occupancy, scheduler,
# warp-state, memory and launch sections for the first launch of each named kernel inside one
# steady-state fathom-bench step (the NVTX range "profile_step", clocks left alone), then a short
# summary a kernel: time, DRAM and SM throughput, registers and shared memory, theoretical and
# eligible warps a scheduler, instructions issued a cycle, cycles with no eligible warp, and
# Nsight Compute's own findings. bench/kernel_profile.sh says which kernels to ask about.
# Usage: bench/kernel_stalls.sh BUILD_DIR WORKLOAD POLICY KERNEL [KERNEL...] [-- fathom-bench options]
#   KERNEL: the start of a kernel's name (e.g. backward_dkdv_wgmma, norm_backward_resident_kernel)
#   env: OUT (where each kernel's full report goes; default BUILD_DIR/logs)
#   e.g. bench/kernel_stalls.sh build/gpu llama-130m pre-ln forward_wgmma -- --batch 128 --seq-len 256
set -uo pipefail
usage="usage: bench/kernel_stalls.sh BUILD_DIR WORKLOAD POLICY KERNEL [KERNEL...] [-- fathom-bench options]"
[[ $# -ge 4 ]] || { echo "$usage" >&2; exit 2; }
build="$1" workload="$2" policy="$3"
shift 3
kernels=()
while [[ $# -gt 0 && "$1" != -- ]]; do kernels+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the --
out="${OUT:-$build/logs}"
bench="$build/bin/fathom-bench"
[[ -x "$bench" ]] || { echo "kernel_stalls.sh: no fathom-bench in $build/bin (build it first)" >&2; exit 1; }
ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1 || true)"
[[ -n "$ncu" ]] || { echo "kernel_stalls.sh: ncu (Nsight Compute) not found" >&2; exit 1; }
mkdir -p "$out"
rc=0
for k in "${kernels[@]}"; do
  report="$out/stalls_${workload}_${policy}_$k.txt"
  if ! "$ncu" --clock-control none --nvtx --nvtx-include "profile_step/" -k "regex:^$k" -c 1 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section MemoryWorkloadAnalysis --section LaunchStats --print-units base \
      "$bench" --workloads "$workload" --policies "$policy" --steps 1 --warmup 2 --peak-tflops 799 \
      "$@" >"$report" 2>&1; then
    echo "kernel_stalls.sh: Nsight Compute failed on $k (last lines of $report):" >&2
    tail -5 "$report" >&2
    rc=1
    continue
  fi
  echo "== $k (full report: $report)"
  if ! grep -q "Duration" "$report"; then
    echo "   no launch of a kernel named $k* inside profile_step"
    rc=1
    continue
  fi
  grep -E "^ +(Duration|DRAM Throughput|Compute \(SM\) Throughput|Registers Per Thread|Dynamic Shared Memory Per Block|Theoretical Occupancy|Achieved Occupancy|Active Warps Per Scheduler|Eligible Warps Per Scheduler|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued Instruction) " \
    "$report" | sed 's/  */ /g'
  grep -A2 -E "^ +OPT " "$report" | grep -v "^--" | sed 's/  */ /g' | cut -c1-200
done
exit $rc
