#!/usr/bin/env bash
# Prints the CPU seconds (user + system, the minimum of N runs) that g++ and clang++ take to compile
# an empty program holding one include: <fathom/fathom.hpp> and each per-layer umbrella header.
# docs/performance.md ("Compile time") has the numbers.
# Usage: scripts/compile_time.sh [-n N] [-O FLAGS] [HEADER...]
#   -n N       runs per header and compiler, the minimum is printed (default 3)
#   -O FLAGS   optimization flags (default -O2)
#   HEADER     headers to measure (default: fathom/fathom.hpp fathom/train.hpp fathom/nn.hpp
#              fathom/data.hpp fathom/optim.hpp)
#   env: CXX_LIST (default "g++ clang++"; compilers that are not installed are skipped)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=3
opt=-O2
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) runs="$2"; shift 2 ;;
    -O) opt="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "compile_time: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "compile_time: -n wants a positive count, got '$runs'" >&2
  exit 2
fi
headers=("$@")
if [[ ${#headers[@]} -eq 0 ]]; then
  headers=(fathom/fathom.hpp fathom/train.hpp fathom/nn.hpp fathom/data.hpp fathom/optim.hpp)
fi
compilers=()
for c in ${CXX_LIST:-g++ clang++}; do
  if command -v "$c" >/dev/null 2>&1; then compilers+=("$c"); else echo "(skipping $c: not found)"; fi
done
if [[ ${#compilers[@]} -eq 0 ]]; then
  echo "compile_time: no compiler found" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# CPU seconds of one compile: user + system time of the compiler and its subprocesses.
cpu_seconds() {
  local src="$1" cxx="$2"
  local t
  t="$( { TIMEFORMAT='%U %S'; time "$cxx" -std=c++20 $opt -I"$repo/include" -c "$src" \
          -o "$tmp/out.o" 2>"$tmp/err"; } 2>&1 )" || {
    echo "compile_time: $cxx failed on $src:" >&2
    cat "$tmp/err" >&2
    exit 1
  }
  awk '{ printf "%.2f", $1 + $2 }' <<<"$t"
}

printf '%-24s' "include ($opt, min of $runs)"
for c in "${compilers[@]}"; do printf ' %10s' "$c"; done
printf '\n'
for h in "${headers[@]}"; do
  src="$tmp/$(echo "$h" | tr '/.' '__').cpp"
  printf '#include <%s>\nint main() {}\n' "$h" >"$src"
  printf '%-24s' "<$h>"
  for c in "${compilers[@]}"; do
    best=""
    for ((i = 0; i < runs; ++i)); do
      s="$(cpu_seconds "$src" "$c")"
      if [[ -z "$best" ]] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best="$s"; fi
    done
    printf ' %10s' "$best"
  done
  printf '\n'
done
