#!/usr/bin/env bash
# Whether GEMM autotuning keeps a training run's bits, and what it gains: for each workload, one
# fathom-bench process with rows of autotuning off, off again and on (each row a fresh model with
# the same seed and data, so equal code gives equal losses), then each row's last loss against the
# first row's, and its tokens/s. The second "off" row says whether two rows of one process agree
# at all, which the on row's comparison rests on.
# Usage: bench/autotune_bits.sh BUILD_DIR [OUT_DIR]
#   env: FATHOM_AB_WORKLOADS (llama-130m,gpt2-124m,llama-350m; each at bench/torch_baseline.py's
#        batch and sequence length), FATHOM_AUTOTUNE_ROWS (off,off,on), FATHOM_BENCH_STEPS (20),
#        FATHOM_BENCH_WARMUP (6)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:?usage: bench/autotune_bits.sh BUILD_DIR [OUT_DIR]}"
out="${2:-${OUT:-$build/logs}}"
mkdir -p "$out"
[[ -x "$build/bin/fathom-bench" ]] || { echo "autotune_bits.sh: no $build/bin/fathom-bench"; exit 1; }
rows="${FATHOM_AUTOTUNE_ROWS:-off,off,on}"
rm -f "$out/autotune_bits.jsonl"
rc=0
IFS=, read -r -a workloads <<<"${FATHOM_AB_WORKLOADS:-llama-130m,gpt2-124m,llama-350m}"
for w in "${workloads[@]}"; do
  read -r batch seq <<<"$(python3 "$repo/bench/torch_baseline.py" --shape "$w")" || { rc=1; continue; }
  "$build/bin/fathom-bench" --workloads "$w" --batch "$batch" --seq-len "$seq" --policies pre-ln \
    --gemm-autotune "$rows" --steps "${FATHOM_BENCH_STEPS:-20}" --warmup "${FATHOM_BENCH_WARMUP:-6}" \
    --json-out "$out/autotune_bits.jsonl" >"$out/autotune_bits_$w.log" 2>&1 || rc=1
  grep "gemm autotune:" "$out/autotune_bits_$w.log" | sed "s/^ */$w: /"
done
python3 - "$out/autotune_bits.jsonl" <<'PY' || rc=1
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
first = {}
print(f"{'workload':12} {'row':22} {'tokens/s':>10} {'vs first':>8}  last loss (against the first row)")
for r in rows:
    w = r["workload"]
    base = first.setdefault(w, r)
    same = "same bits" if r["loss_last"] == base["loss_last"] else f"differs from {base['loss_last']:.9g}"
    print(f"{w:12} {r['policy']:22} {r['tokens_per_s']:10.0f} {r['tokens_per_s'] / base['tokens_per_s']:8.3f}"
          f"  {r['loss_last']:.9g} {'' if r is base else same}")
PY
exit $rc
