#!/usr/bin/env bash
# Several GPUs of one host (2 H200s): builds what data-parallel training needs and checks it.
#   1. NCCL against the in-process backend: every collective, under the torchrun environment and
#      under mpirun (fathom_nccl_tests "[nccl]").
#   2. Faults: rank 1 exits, or hangs; the other rank must stop within the timeout with a line
#      naming rank 1.
#   3. Equivalence in fp32: 2 ranks x batch B against 1 rank x B x grad-accum 2, 50 steps; losses
#      equal to 1e-5 relative.
#   3b. Delayed fp8 scaling on 2 ranks (the amax histories reduced to their maximum over the ranks
#      after each step): 20 steps straight, and resumed from the straight run's step-10
#      checkpoint; the losses of steps 11-20 equal bit for bit.
#   4. Scaling: fathom-bench --nproc 2 on llama-130m (128 x 256 a GPU) and gpt2-124m (32 x 1024 a
#      GPU): tokens/s on 1 and 2 GPUs, efficiency.
#   5. Memory: peak GiB a GPU with and without --zero 1 for llama-350m and llama-1b.
# Then a short table. Logs under $OUT (else <build>/logs). nlohmann-json and CLI11 from
# .deps/include when their packages are missing (scripts/deps.sh).
# Usage: scripts/dist_gpu.sh   env: FATHOM_BUILD_DIR (default build; uses <dir>/dist-gpu), or
#        FATHOM_DIST_BUILD (the build tree itself, e.g. scripts/gpu.sh's), JOBS,
#        CUDA_ARCH (default 90a), NPROC (default 2), ONE_B_BATCH (llama-1b batch a GPU, default 16),
#        DIST_BENCH=0 (checks 1-3b only: skips the scaling and memory benchmarks, 4 and 5)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build="${FATHOM_DIST_BUILD:-${FATHOM_BUILD_DIR:-$repo/build}/dist-gpu}"
jobs="${JOBS:-16}"
arch="${CUDA_ARCH:-90a}"
nproc="${NPROC:-2}"
bench="${DIST_BENCH:-1}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
table=()
failed=0
note() { table+=("$1"); echo ">>> $1"; }

echo "==== build (log: $logs/build.log)"
{
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_TESTS=ON \
    -DFATHOM_BUILD_EXAMPLES=ON -DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" &&
    cmake --build "$build" -j "$jobs" --target fathom_nccl_tests fathom-train \
      $([[ $bench == 0 ]] || echo fathom-bench)
} >"$logs/build.log" 2>&1
if [[ $? -ne 0 ]]; then
  tail -40 "$logs/build.log"
  echo "build failed (is NCCL found? look for 'fathom: NCCL' in $logs/build.log)"
  exit 1
fi
bin="$build/bin"

# 1. Collectives, two launchers.
port=$((29000 + RANDOM % 1000))
(
  pids=()
  for ((r = 0; r < nproc; r++)); do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=$nproc MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$bin/fathom_nccl_tests" "[nccl]" >"$logs/nccl_torchrun_rank$r.log" 2>&1 &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  exit $rc
)
if [[ $? -eq 0 ]]; then note "nccl collectives (torchrun env): ok"; else
  note "nccl collectives (torchrun env): FAILED (logs nccl_torchrun_rank*.log)"; failed=1; fi
if command -v mpirun >/dev/null 2>&1; then
  MASTER_PORT=$((port + 1)) mpirun --allow-run-as-root -np "$nproc" -x MASTER_PORT \
    "$bin/fathom_nccl_tests" "[nccl]" >"$logs/nccl_mpirun.log" 2>&1
  if [[ $? -eq 0 ]]; then note "nccl collectives (mpirun): ok"; else
    note "nccl collectives (mpirun): FAILED (log nccl_mpirun.log)"; failed=1; fi
else
  note "nccl collectives (mpirun): skipped, no mpirun"
fi

# 2. Faults: rank 0 must stop, naming rank 1, within the 20 s timeout (+ slack).
for kind in dead hang; do
  start=$SECONDS
  (
    for ((r = 0; r < 2; r++)); do
      FATHOM_TEST_NCCL_TIMEOUT=20 RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 \
        MASTER_PORT=$((port + 2)) timeout 300 "$bin/fathom_nccl_tests" "[.nccl-$kind]" \
        >"$logs/fault_${kind}_rank$r.log" 2>&1 &
    done
    wait
  )
  took=$((SECONDS - start))
  line=$(grep -h "fathom: rank 0: stopping" "$logs/fault_${kind}_rank0.log" | head -1)
  if [[ "$line" == *"rank 1"* && $took -lt 120 ]]; then
    note "fault ($kind rank 1): ok in ${took} s: $line"
  else
    note "fault ($kind rank 1): FAILED after ${took} s: '${line}' (log fault_${kind}_rank0.log)"
    failed=1
  fi
done

# 3. Equivalence in fp32.
small=(--preset llama-71m --seq-len 256 --batch 16 --steps 50 --log-every 1 --eval-every 0
  --eval-batches 1 --device cuda --precision fp32 --no-live --lr 1e-3)
rm -rf "$build/eq1" "$build/eq2"
"$bin/fathom-train" "${small[@]}" --grad-accum 2 --out "$build/eq1" >"$logs/equiv_1rank.log" 2>&1
"$bin/fathom-train" "${small[@]}" --nproc 2 --out "$build/eq2" >"$logs/equiv_2ranks.log" 2>&1
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,}]*\).*/\1/'; }
if [[ -s "$build/eq1/metrics.jsonl" && -s "$build/eq2/metrics.jsonl" ]]; then
  worst=$(paste <(losses "$build/eq1") <(losses "$build/eq2") |
    awk '{d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > w) w = r; n++}
         END {printf "%.3g %d", w, n}')
  rel=${worst% *}
  n=${worst#* }
  if awk -v r="$rel" -v n="$n" 'BEGIN {exit !(n == 50 && r <= 1e-5)}'; then
    note "equivalence fp32, 2 ranks x 16 vs 1 rank x 16 x accum 2: $n steps, max rel. loss diff $rel: ok"
  else
    note "equivalence fp32: $n steps, max rel. loss diff $rel: FAILED (limit 1e-5)"
    failed=1
  fi
else
  note "equivalence fp32: FAILED (no metrics; logs equiv_*.log)"
  failed=1
fi

# 3b. Delayed fp8 on 2 ranks resumes bit for bit (the ranks share their amax histories).
fp8=(--preset llama-71m --seq-len 256 --batch 16 --steps 20 --save-every 10 --log-every 1
  --eval-every 0 --eval-batches 1 --device cuda --precision fp8 --fp8-scaling delayed --no-live
  --lr 1e-3 --nproc 2)
rm -rf "$build/fp8-straight" "$build/fp8-resumed"
"$bin/fathom-train" "${fp8[@]}" --out "$build/fp8-straight" >"$logs/fp8_delayed_straight.log" 2>&1
"$bin/fathom-train" "${fp8[@]}" --resume "$build/fp8-straight/ckpt-10" --out "$build/fp8-resumed" \
  >"$logs/fp8_delayed_resumed.log" 2>&1
step_losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,}]*\).*"step":\([0-9]*\).*/\2 \1/'; }
if [[ -s "$build/fp8-straight/metrics.jsonl" && -s "$build/fp8-resumed/metrics.jsonl" ]]; then
  straight=$(step_losses "$build/fp8-straight" | awk '$1 > 10')
  resumed=$(step_losses "$build/fp8-resumed")
  if [[ -n "$resumed" && "$straight" == "$resumed" ]]; then
    note "fp8 delayed, 2 ranks: steps 11-20 resumed from step 10 equal the straight run's: ok"
  else
    note "fp8 delayed, 2 ranks: the resumed losses differ from the straight run's: FAILED"
    failed=1
  fi
else
  note "fp8 delayed, 2 ranks: FAILED (no metrics; logs fp8_delayed_*.log)"
  failed=1
fi

if [[ $bench != 0 ]]; then
# 4. Scaling (bf16, the issue's shapes).
"$bin/fathom-bench" --nproc "$nproc" --workloads llama-130m,gpt2-124m --policies pre-ln \
  --json-out "$logs/scaling.jsonl" 2>&1 | tee "$logs/scaling.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || failed=1

# 5. Memory with and without ZeRO-1.
for zero in 0 1; do
  "$bin/fathom-bench" --nproc "$nproc" --zero "$zero" --workloads llama-350m --policies pre-ln \
    --batch 16 --seq-len 1024 --steps 5 --warmup 3 --json-out "$logs/memory.jsonl" 2>&1 |
    tee "$logs/memory_350m_zero$zero.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || failed=1
  "$bin/fathom-bench" --nproc "$nproc" --zero "$zero" --workloads llama-1b --policies pre-ln \
    --batch "${ONE_B_BATCH:-16}" --seq-len 1024 --steps 5 --warmup 3 --json-out "$logs/memory.jsonl" 2>&1 |
    tee "$logs/memory_1b_zero$zero.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || failed=1
done
fi

echo
echo "==== data parallel on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) x $nproc"
for line in "${table[@]}"; do echo "$line"; done
echo "scaling and memory (workload, gpus, zero, batch/GPU, 1-GPU tok/s, total tok/s, efficiency, 1-GPU GiB, GiB/GPU):"
cat "$logs/scaling.jsonl" "$logs/memory.jsonl" 2>/dev/null |
  sed -E 's/.*"batch_per_gpu":([0-9]+).*"gpus":([0-9]+).*"peak_gib_one_gpu":([0-9.e+-]+).*"peak_gib_per_gpu":\[([^]]*)\].*"scaling_efficiency":([0-9.e+-]+).*"tokens_per_s_one_gpu":([0-9.e+-]+).*"tokens_per_s_total":([0-9.e+-]+).*"workload":"([^"]*)".*"zero":([0-9]).*/\8 \2 \9 \1 \6 \7 \5 \3 [\4]/' |
  awk '{printf "  %-11s gpus %s zero %s batch %4s  1 GPU %9.0f  total %9.0f  eff %5.1f%%  1 GPU %6.2f GiB  per GPU %s GiB\n", $1, $2, $3, $4, $5, $6, 100 * $7, $8, $9}'
echo "logs: $logs"
exit $failed
