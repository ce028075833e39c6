#!/usr/bin/env bash
# How the data-parallel step's collectives share the GPUs with the backward pass: fathom-bench
# --nproc N on llama-130m (128 x 256 a GPU) and gpt2-124m (32 x 1024 a GPU), once per setting of
# the NCCL stream's priority, NCCL's CTA cap and the bucket size. Each row: scaling efficiency
# against rank 0 alone in the same invocation, the step's collectives timed alone, the time they
# add to the step (exposed) and the share of them the backward hides (overlap).
# Usage: bench/dist_sweep.sh BUILD_DIR   (fathom-bench built with NCCL there)
#   env: NPROC (default 2), STEPS (default 50), WORKLOADS (default llama-130m,gpt2-124m),
#        SETTINGS: ';'-separated fathom-bench flag sets (default: the list below), OUT (logs)
set -uo pipefail

build="${1:?usage: bench/dist_sweep.sh BUILD_DIR}"
bench="$build/bin/fathom-bench"
[[ -x "$bench" ]] || { echo "dist_sweep: no $bench (build the fathom-bench target)"; exit 1; }
nproc="${NPROC:-2}"
steps="${STEPS:-50}"
workloads="${WORKLOADS:-llama-130m,gpt2-124m}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
json="$logs/dist_sweep.jsonl"
: >"$json"
settings="${SETTINGS:---comm-priority normal;--comm-priority high;--comm-priority high --nccl-max-ctas 4;--comm-priority high --nccl-max-ctas 8;--comm-priority high --nccl-max-ctas 16;--comm-priority high --bucket-mb 50;--comm-priority high --bucket-mb 100}"

IFS=';' read -r -a sets <<<"$settings"
for flags in "${sets[@]}"; do
  echo "==== fathom-bench --nproc $nproc $flags"
  # shellcheck disable=SC2086  # flags are words
  "$bench" --nproc "$nproc" --workloads "$workloads" --policies pre-ln --steps "$steps" \
    --peak-tflops 800 --json-out "$json" $flags 2>&1 | tee -a "$logs/dist_sweep.log"
done

echo
echo "==== summary ($nproc GPUs, $steps timed steps; ms are per step)"
python3 - "$json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'workload':<11} {'priority':<8} {'CTAs':>5} {'MiB':>4} {'1 GPU ms':>8} {'2 GPU ms':>8} "
      f"{'comm':>6} {'exposed':>7} {'overlap':>7} {'effic.':>7}")
for r in rows:
    ov = "-" if r.get("comm_ms") in (None, 0) else \
        f"{100 * (1 - (r['step_ms'] - r['no_comm_step_ms']) / r['comm_ms']):.0f}%"
    comm = "-" if r.get("comm_ms") is None else f"{r['comm_ms']:.2f}"
    exposed = "-" if r.get("no_comm_step_ms") is None else \
        f"{r['step_ms'] - r['no_comm_step_ms']:.2f}"
    print(f"{r['workload']:<11} {r['comm_priority']:<8} {r['nccl_max_ctas'] or 'nccl':>5} "
          f"{r['bucket_mb']:>4g} {r['one_gpu_step_ms']:>8.2f} {r['step_ms']:>8.2f} {comm:>6} "
          f"{exposed:>7} {ov:>7} {100 * r['scaling_efficiency']:>6.1f}%")
EOF
