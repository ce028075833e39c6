#!/usr/bin/env bash
# fathom-bench at two commits in one call on one card: BASE is built in a git worktree beside this
# tree, then each workload runs on BASE and on this tree back to back, and one table compares them.
# Usage: bench/ab.sh BASE [BUILD_DIR (default build/gpu)] [OUT_DIR]
#   BASE: a commit, or a folder holding the base's source (e.g. from `git archive`, for a machine
#   that gets the working tree without its git history), or `env`: this tree's fathom-bench on
#   both sides, the base side run with the variables in FATHOM_AB_BASE_ENV (e.g.
#   FATHOM_AB_BASE_ENV=FATHOM_ATTENTION_WGMMA=0 compares the wgmma attention with the mma one)
#   env: FATHOM_AB_WORKLOADS (llama-130m,gpt2-124m,llama-350m; each at bench/torch_baseline.py's
#        batch and sequence length), FATHOM_AB_POLICIES (pre-ln), FATHOM_AB_PRECISIONS (bf16;
#        fp8 is current scaling, fp8-delayed delayed), FATHOM_BENCH_STEPS (25),
#        FATHOM_BENCH_WARMUP (8), JOBS (16), CUDA_ARCH (90a)
# The build of this tree must hold fathom-bench already (scripts/gpu.sh or cmake --build).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
base="${1:?usage: bench/ab.sh BASE_COMMIT [BUILD_DIR] [OUT_DIR]}"
build="${2:-build/gpu}"
out="${3:-${OUT:-$build/logs}}"
mkdir -p "$out"
base_src="$build-ab-src" base_build="$build-ab"
extra_include=()
[[ -d .deps/include ]] && extra_include=(-DFATHOM_EXTRA_INCLUDE="$repo/.deps/include")
base_env=()
if [[ "$base" == env ]]; then
  read -r -a base_env <<<"${FATHOM_AB_BASE_ENV:?ab.sh: BASE env needs FATHOM_AB_BASE_ENV}"
  base_build="$build"
elif [[ -d "$base" ]]; then
  base_src="$(cd "$base" && pwd)"
else
  rm -rf "$base_src"
  git worktree prune
  git worktree add --detach "$base_src" "$base" >"$out/ab_base_build.log" 2>&1 ||
    { echo "ab.sh: no commit or folder '$base'"; exit 1; }
fi
if [[ "$base" != env ]] && ! {
  cmake -S "$base_src" -B "$base_build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFATHOM_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" \
    -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=ON "${extra_include[@]}" &&
  cmake --build "$base_build" -j "${JOBS:-16}" --target fathom-bench; } >>"$out/ab_base_build.log" 2>&1
then
  echo "ab.sh: building fathom-bench at $base failed (last lines of $out/ab_base_build.log):"
  tail -5 "$out/ab_base_build.log"
  exit 1
fi
rc=0
rm -f "$out/ab_base.jsonl" "$out/ab_head.jsonl"
IFS=, read -r -a workloads <<<"${FATHOM_AB_WORKLOADS:-llama-130m,gpt2-124m,llama-350m}"
IFS=, read -r -a precisions <<<"${FATHOM_AB_PRECISIONS:-bf16}"
for w in "${workloads[@]}"; do
  read -r batch seq <<<"$(python3 bench/torch_baseline.py --shape "$w")"
  for precision in "${precisions[@]}"; do
    for side in base head; do
      bin="$build/bin/fathom-bench" prefix=()
      [[ $side == base ]] && bin="$base_build/bin/fathom-bench" prefix=(env "${base_env[@]}")
      "${prefix[@]}" "$bin" --workloads "$w" --batch "$batch" --seq-len "$seq" \
        --policies "${FATHOM_AB_POLICIES:-pre-ln}" --precision "${precision%-delayed}" \
        $([[ $precision == *-delayed ]] && echo --fp8-scaling delayed) \
        --steps "${FATHOM_BENCH_STEPS:-25}" --warmup "${FATHOM_BENCH_WARMUP:-8}" \
        --json-out "$out/ab_$side.jsonl" >"$out/ab_${side}_${w}_${precision}.log" 2>&1 || rc=1
    done
  done
done
python3 - "$out/ab_base.jsonl" "$out/ab_head.jsonl" "$base${base_env[*]:+ ${base_env[*]}}" <<'PY'
import json, sys
def read(path):
    rows = {}
    try:
        for line in open(path):
            r = json.loads(line)
            rows[(r["workload"], r["policy"], r.get("precision", "bf16"))] = r
    except FileNotFoundError:
        pass
    return rows
a, b = read(sys.argv[1]), read(sys.argv[2])
# loss: the last timed step's loss on both sides, "same" when equal to the bit (a change meant to
# keep every result's bits should show it; "-" where a side predates fathom-bench's loss_last).
print(f"{'workload':12} {'policy':10} {'prec':5} {'base tok/s':>11} {'head tok/s':>11} {'head/base':>9} {'GiB base':>8} {'GiB head':>8}  loss   (base {sys.argv[3]})")
for key in sorted(set(a) | set(b)):
    ra, rb = a.get(key), b.get(key)
    ta = ra["tokens_per_s"] if ra else float("nan")
    tb = rb["tokens_per_s"] if rb else float("nan")
    ga = ra["peak_gib"] if ra else float("nan")
    gb = rb["peak_gib"] if rb else float("nan")
    la = ra.get("loss_last") if ra else None
    lb = rb.get("loss_last") if rb else None
    loss = "-" if la is None or lb is None else "same" if la == lb else f"{la:.6g} / {lb:.6g}"
    print(f"{key[0]:12} {key[1]:10} {key[2]:5} {ta:11.0f} {tb:11.0f} {tb / ta:9.3f} {ga:8.2f} {gb:8.2f}  {loss}")
PY
exit $rc
