#!/usr/bin/env bash
# The depth study's training runs on the GPU machine (docs/results/depth): builds fathom-train and
# fathom-diagnose with CUDA (and libsentencepiece from the corpus bundle when the machine has none),
# prepares the shards from .corpus/bundle (scripts/depth_corpus.sh shards), then starts one queue
# of runs per GPU, detached (setsid nohup), and returns. Each queue trains its runs one after the
# other and runs fathom-diagnose on each final checkpoint. Running this script again continues:
# finished runs are kept, a queue still running is left alone, and a run that was stopped resumes
# from its latest checkpoint. A run whose fathom-train failed (a NaN loss, say) leaves RUN/FAILED
# with the last lines of its log and is not tried again (delete the file to retry it). scripts/depth_status.sh shows progress and collects the results.
#
# Usage: scripts/depth_runs.sh [--plan] [--gpus N]
#   --plan     print the runs with their token counts and estimated minutes, and start nothing
#   --gpus N   queues to run side by side (default: the GPUs nvidia-smi lists; 1 or 2 expected)
#   env: RUNS (default runs/depth), TOKENS_12 (default 300M: the 12-block llama-130m runs),
#        TOKENS_24 (default 80M: the 24-block runs), TPS_12 / TPS_24 (assumed tokens/s of one GPU
#        for the plan: 600000 / 600000), FATHOM_BUILD_DIR (default build-depth), CUDA_ARCH (90a),
#        JOBS (16), BATCH (micro-batch, default 128; x GRAD_ACCUM 4 x seq 256 = 131,072 tokens a step)
#        For a rehearsal on a CPU machine with a CPU build (FATHOM_BUILD_DIR holding the three
#        programs, so nothing is built): DEVICE (cuda), PRECISION (bf16), SEQ_LEN (256),
#        MODEL_12 / MODEL_24 (fathom-train model flags of the two depths).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
plan_only=0
gpus=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --plan) plan_only=1; shift ;;
    --gpus) gpus="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "depth_runs: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done
runs="${RUNS:-runs/depth}"
build="${FATHOM_BUILD_DIR:-build-depth}"
seq_len="${SEQ_LEN:-256}"
device="${DEVICE:-cuda}"
precision="${PRECISION:-bf16}"
batch="${BATCH:-128}"
accum="${GRAD_ACCUM:-$((512 / batch))}"
tokens_per_step=$((batch * accum * seq_len))

count() {  # 300M, 8e7, 80000000 -> an integer
  python3 -c 'import sys; t=sys.argv[1]; m={"k":1e3,"K":1e3,"M":1e6,"G":1e9}
print(int(float(t[:-1])*m[t[-1]]) if t[-1] in m else int(float(t)))' "$1"
}
tokens_12="$(count "${TOKENS_12:-300M}")"
tokens_24="$(count "${TOKENS_24:-80M}")"
tps_12="${TPS_12:-600000}"
tps_24="${TPS_24:-600000}"
steps_12=$(((tokens_12 + tokens_per_step - 1) / tokens_per_step))
steps_24=$(((tokens_24 + tokens_per_step - 1) / tokens_per_step))

if [[ -z "$gpus" ]]; then
  gpus=1
  if command -v nvidia-smi >/dev/null 2>&1; then gpus="$(nvidia-smi -L | grep -c '^GPU' || echo 1)"; fi
  (( gpus > 2 )) && gpus=2
  (( gpus < 1 )) && gpus=1
fi

# The runs: name | model flags | policy | steps | seed. The paper's recipe scaled to the budget:
# Adam 0.9/0.999, lr 1e-3, no weight decay, no clipping, bf16, seq 256, 131,072 tokens a step,
# linear warmup over 10% of the steps, cosine to 10% of the peak. The 24-block model is
# llama-71m's width (d 512, 8 heads, d_ff 1368) at llama-250m's depth.
m12="${MODEL_12:---preset llama-130m}"
m24="${MODEL_24:---preset llama-71m --layers 24}"
run_list=(
  "130m-pre-ln|$m12|pre-ln|$steps_12|0"
  "130m-lns|$m12|lns|$steps_12|0"
  "24L-pre-ln|$m24|pre-ln|$steps_24|0"
  "24L-lns|$m24|lns|$steps_24|0"
  "24L-post-ln|$m24|post-ln|$steps_24|0"
  "24L-mix-ln|$m24|mix-ln|$steps_24|0"
  "24L-deepnorm|$m24|deepnorm|$steps_24|0"
  "24L-pre-ln-seed1|$m24|pre-ln|$steps_24|1"
)
# Queue i takes runs i, i + gpus, i + 2 gpus, ...: with two GPUs the 12-block pair runs side by
# side first, then the 24-block runs two at a time.
queue_of() { echo $(($1 % gpus)); }

minutes() { python3 -c "print(f'{$1 / $2 / 60:.1f}')"; }
echo "depth_runs: $gpus queue(s), $tokens_per_step tokens a step (batch $batch x grad-accum $accum x seq $seq_len)"
printf '  %-18s %-6s %-9s %6s %12s %8s\n' run queue policy steps tokens "est.min"
declare -a queue_minutes
for i in "${!run_list[@]}"; do
  IFS='|' read -r name model policy steps seed <<< "${run_list[$i]}"
  q=$(queue_of "$i")
  tps=$tps_24
  [[ "$name" == 130m-* ]] && tps=$tps_12
  mins="$(minutes "$((steps * tokens_per_step))" "$tps")"
  queue_minutes[$q]="$(python3 -c "print(f'{${queue_minutes[$q]:-0} + $mins:.1f}')")"
  printf '  %-18s %-6s %-9s %6d %12d %8s\n' "$name" "gpu$q" "$policy" "$steps" "$((steps * tokens_per_step))" "$mins"
done
for q in $(seq 0 $((gpus - 1))); do echo "  queue gpu$q: about ${queue_minutes[$q]} minutes of training"; done
if [[ -f .corpus/bundle/dataset.json ]]; then
  train_tokens="$(python3 -c 'import json; print(json.load(open(".corpus/bundle/dataset.json"))["train"]["tokens"])')"
  echo "  corpus: $train_tokens train tokens: $(python3 -c "print(f'{$tokens_12 / $train_tokens:.2f}')") epochs per 12-block run, $(python3 -c "print(f'{$tokens_24 / $train_tokens:.2f}')") per 24-block run"
fi
[[ "$plan_only" == 1 ]] && exit 0

start=$SECONDS
# --- build ---------------------------------------------------------------------------------------
if [[ ! -x "$build/bin/fathom-train" || ! -x "$build/bin/fathom-diagnose" || ! -x "$build/bin/fathom-prepare" ]]; then
  nvcc="$(command -v nvcc || true)"
  [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  [[ -n "$nvcc" ]] || { echo "depth_runs: nvcc not found" >&2; exit 1; }
  extra=()
  [[ -d .deps/include ]] && extra+=(-DFATHOM_EXTRA_INCLUDE="$repo/.deps/include")
  if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists sentencepiece; }; then
    extra+=(-DFATHOM_SENTENCEPIECE_ROOT="$(scripts/depth_corpus.sh sentencepiece)")
  fi
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  echo "==== building fathom-train, fathom-diagnose and fathom-prepare with CUDA in $build"
  mkdir -p "$build"
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DFATHOM_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" \
    -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=ON "${extra[@]}" > "$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; exit 1; }
  grep -i "sentencepiece" "$build/configure.log" || true
  cmake --build "$build" -j "${JOBS:-16}" --target fathom-train fathom-diagnose fathom-prepare
  echo "==== built in $((SECONDS - start)) s"
fi

# --- data ----------------------------------------------------------------------------------------
scripts/depth_corpus.sh shards --build "$build"
data=".corpus/shards"

# --- queues --------------------------------------------------------------------------------------
mkdir -p "$runs"
train="$(cd "$build" && pwd)/bin/fathom-train"
diagnose="$(cd "$build" && pwd)/bin/fathom-diagnose"
for q in $(seq 0 $((gpus - 1))); do
  pidfile="$runs/queue-gpu$q.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "depth_runs: queue gpu$q is running (pid $(cat "$pidfile")); left alone"
    continue
  fi
  script="$runs/queue-gpu$q.sh"
  {
    echo "#!/usr/bin/env bash"
    echo "# Written by scripts/depth_runs.sh: the runs of GPU $q, one after the other."
    echo "cd '$repo'"
    echo "export CUDA_VISIBLE_DEVICES=$q"
    for i in "${!run_list[@]}"; do
      [[ "$(queue_of "$i")" == "$q" ]] || continue
      IFS='|' read -r name model policy steps seed <<< "${run_list[$i]}"
      dir="$runs/$name"
      warmup=$((steps / 10))
      save_every=$(( steps / 4 > 100 ? steps / 4 : 100 ))
      cat <<EOF
if [[ ! -d '$dir/ckpt-$steps' && ! -f '$dir/FAILED' ]]; then
  mkdir -p '$dir'
  # A run with a checkpoint resumes; one stopped before its first checkpoint starts again, its
  # metrics.jsonl replaced (fathom-train refuses a folder holding a run otherwise).
  resume=(--overwrite)
  ls -d '$dir'/ckpt-* >/dev/null 2>&1 && resume=(--resume '$dir')
  '$train' $model --policy $policy --data '$data/train_*.bin' --val-data '$data/val_*.bin' \\
    --seq-len $seq_len --batch $batch --grad-accum $accum --steps $steps --warmup $warmup \\
    --lr 1e-3 --min-lr-ratio 0.1 --schedule cosine --optimizer adam --weight-decay 0 --clip 0 \\
    --precision $precision --device $device --seed $seed --eval-every $((steps / 8 > 50 ? steps / 8 : 50)) \\
    --eval-batches 8 --save-every $save_every --log-every 10 --diag-every $((steps / 8 > 50 ? steps / 8 : 50)) \\
    --no-live --out '$dir' "\${resume[@]}" >> '$dir.log' 2>&1 || tail -n 3 '$dir.log' > '$dir/FAILED'
  # Older checkpoints than the last two are not needed to resume.
  ls -d '$dir'/ckpt-* 2>/dev/null | sort -t- -k2 -n | head -n -2 | xargs -r rm -rf
fi
if [[ -d '$dir/ckpt-$steps' && ! -f '$dir/diagnose.json' ]]; then
  '$diagnose' '$dir/ckpt-$steps' --data '$data/val_*.bin' --batches 8 --batch 16 --seq-len $seq_len \\
    --device $device --out '$dir/diagnose.json.tmp' >> '$dir.log' 2>&1 && mv '$dir/diagnose.json.tmp' '$dir/diagnose.json'
fi
EOF
    done
  } > "$script"
  chmod +x "$script"
  setsid nohup bash "$script" > "$runs/queue-gpu$q.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  echo "depth_runs: queue gpu$q started (pid $!): $script"
done
echo "depth_runs: started after $((SECONDS - start)) s; progress: scripts/depth_status.sh"
