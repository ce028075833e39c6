#!/usr/bin/env bash
# Builds fathom_fuzz (tests/fuzz: libFuzzer with AddressSanitizer and UndefinedBehaviorSanitizer,
# clang only) and fuzzes each of fathom's file readers for a bounded time, starting from the seed
# corpus in tests/fuzz/corpus/<target>/. A crash, a sanitizer report, an exception other than
# fathom::Error, an input taking over 10 s or a process over 2 GiB fails the run; the input that
# did it is left as <build>/fuzz-work/<target>-crash-* (replay: FATHOM_FUZZ_TARGET=<target>
# FATHOM_FUZZ_VERBOSE=1 <build>/fuzz/tests/fuzz/fathom_fuzz FILE).
# Usage: scripts/fuzz.sh [target...]   (targets: shards safetensors config trainer_state; default all)
#   env: FATHOM_BUILD_DIR (default build; this script uses <dir>/fuzz), FATHOM_FUZZ_SECONDS
#        (default 20, per target), JOBS (targets fuzzed at once; default nproc), CXX_FUZZ
#        (default clang++)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${FATHOM_BUILD_DIR:-$repo/build}"
build="$root/fuzz"
work="$root/fuzz-work"
seconds="${FATHOM_FUZZ_SECONDS:-20}"
jobs="${JOBS:-$(nproc)}"
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(shards safetensors config trainer_state)

cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE= \
  -DCMAKE_CXX_COMPILER="${CXX_FUZZ:-clang++}" -DFATHOM_BUILD_TESTS=OFF -DFATHOM_BUILD_EXAMPLES=OFF \
  -DFATHOM_ENABLE_CUDA=OFF -DFATHOM_INSTALL=OFF -DFATHOM_BUILD_FUZZERS=ON >/dev/null
cmake --build "$build" -j "$jobs" --target fathom_fuzz
fuzzer="$build/tests/fuzz/fathom_fuzz"

rm -rf "$work"
mkdir -p "$work"
run_one() {  # fuzzes one target; its log is <work>/<target>.log
  local t=$1
  mkdir -p "$work/$t"
  # The first folder collects new inputs; the seeds in the repository are only read.
  if FATHOM_FUZZ_TARGET="$t" "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$work/$t-" "$work/$t" "$repo/tests/fuzz/corpus/$t" \
       >"$work/$t.log" 2>&1; then
    echo "fuzz $t: $(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$work/$t.log" |
      grep -Eo '[0-9]+$') inputs in ${seconds} s, no failure"
  else
    echo "fuzz $t: FAILED (log: $work/$t.log)"
    tail -40 "$work/$t.log"
    return 1
  fi
}

failed=0
pids=()
for t in "${targets[@]}"; do
  [[ -d "$repo/tests/fuzz/corpus/$t" ]] || { echo "fuzz: unknown target '$t'" >&2; exit 2; }
  run_one "$t" &
  pids+=($!)
  if [[ ${#pids[@]} -ge $jobs ]]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
