#!/usr/bin/env bash
# Prepares the real corpus of docs/data.md: installs the Debian packages fortunes (fortune cookie
# files) and jargon-text (the Jargon File), and turns their text into byte-level token shards with
# fathom-prepare, in a git-ignored folder small enough to carry to another machine.
# Usage: scripts/prepare_real_corpus.sh [--build DIR] [--out DIR] [--overwrite] [--max-mib N]
#   --build DIR   build folder holding bin/fathom-prepare (default: build/release, scripts/run.sh's;
#                 fathom-prepare is built there first when it is missing)
#   --out DIR     where the shards go (default: .data/real; .data/ ignores itself for git)
#   --overwrite   replace shards already in --out (default: keep them and only report sizes)
#   --max-mib N   fail if the shards exceed N MiB in all (default 40: carries stay under 64 MiB)
#   --dictionary MIB  also take the first MIB MiB of the GNU Collaborative International Dictionary
#                 of English (Debian package dict-gcide, 40 MB of entries from Webster's 1913 and
#                 WordNet): byte-level tokens, so MIB MiB more is about MIB million tokens more.
#                 16 gives a 21M-token corpus (42 MiB of shards, --out .data/real-large by
#                 default): enough that 2000 steps of 32 x 256 never see a token twice
#   env: FATHOM_NO_APT=1 never calls apt-get (the packages must already be installed)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build=build/release
out=""
overwrite=0
max_mib=40
dictionary_mib=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --overwrite) overwrite=1; shift ;;
    --max-mib) max_mib="$2"; shift 2 ;;
    --dictionary) dictionary_mib="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare_real_corpus: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done

if ! [[ "$dictionary_mib" =~ ^[0-9]+$ ]]; then
  echo "prepare_real_corpus: --dictionary expects a whole number of MiB, got '$dictionary_mib'" >&2
  exit 2
fi
if [[ -z "$out" ]]; then
  out=.data/real
  (( dictionary_mib > 0 )) && out=.data/real-large
  if (( dictionary_mib > 0 && max_mib == 40 )); then max_mib=60; fi
fi

prepare=""
for p in "$build/bin/fathom-prepare" "$build/examples/prepare/fathom-prepare"; do
  if [[ -x "$p" ]]; then prepare="$p"; break; fi
done
if [[ -z "$prepare" ]]; then
  echo "prepare_real_corpus: no fathom-prepare in '$build/bin'; building it (Release)"
  # Ninja where it is installed, as scripts/run.sh and the docs configure build/release; a folder
  # configured already keeps its generator (CMake refuses to switch).
  generator=()
  [[ ! -f "$build/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DFATHOM_BUILD_EXAMPLES=ON \
    >/dev/null
  cmake --build "$build" --target fathom-prepare
  prepare="$build/bin/fathom-prepare"
fi

# The packages: installed with apt-get when missing (sudo only when not root).
packages=(fortunes jargon-text)
(( dictionary_mib > 0 )) && packages+=(dict-gcide)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${FATHOM_NO_APT:-0}" == 1 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "prepare_real_corpus: missing Debian packages ${missing[*]} (install them, or unset FATHOM_NO_APT)" >&2
    exit 1
  fi
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
  echo "prepare_real_corpus: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

fortunes=/usr/share/games/fortunes
jargon_gz=/usr/share/doc/jargon-text/jargon.txt.gz
for f in "$fortunes" "$jargon_gz"; do
  [[ -e "$f" ]] || { echo "prepare_real_corpus: expected '$f' from the packages, it is not there" >&2; exit 1; }
done

# .data/ keeps itself out of git, so shards never get committed by accident.
mkdir -p .data
[[ -f .data/.gitignore ]] || printf '# Prepared data (scripts/prepare_real_corpus.sh): never committed.\n*\n' > .data/.gitignore

if compgen -G "$out/train_*.bin" >/dev/null && [[ "$overwrite" != 1 ]]; then
  echo "prepare_real_corpus: '$out' already holds shards; kept (--overwrite rebuilds them)"
else
  text="$(mktemp -d)"
  trap 'rm -rf "$text"' EXIT
  zcat "$jargon_gz" > "$text/jargon.txt"
  inputs=("$fortunes" "$text/jargon.txt")
  if (( dictionary_mib > 0 )); then
    gcide=/usr/share/dictd/gcide.dict.dz  # dictzip: gzip that zcat reads
    [[ -e "$gcide" ]] || { echo "prepare_real_corpus: expected '$gcide' from dict-gcide, it is not there" >&2; exit 1; }
    # The first MIB MiB, cut at the last whole line.
    { zcat "$gcide" || true; } | head -c $(( dictionary_mib * 1048576 )) | sed '$d' > "$text/gcide.txt"
    inputs+=("$text/gcide.txt")
  fi
  # The fortune folder holds text files beside binary .dat indexes; fathom-prepare skips the latter.
  extra=()
  [[ "$overwrite" == 1 ]] && extra+=(--overwrite)
  # 2% validation (about 85k tokens): enough for fathom-train's evaluation and fathom-diagnose
  # batches without wrapping around.
  "$prepare" "${inputs[@]}" --out "$out" --val-fraction 0.02 "${extra[@]}"
fi

bytes=$(cat "$out"/train_*.bin "$out"/val_*.bin | wc -c)
echo
echo "prepare_real_corpus: $out"
ls -l "$out" | awk 'NR > 1 { printf "  %10d  %s\n", $5, $9 }'
if command -v python3 >/dev/null 2>&1 && [[ -f "$out/dataset.json" ]]; then
  python3 - "$out/dataset.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
tok = d.get("tokenizer", {})
print(f"  tokenizer: {tok.get('type', '?')} (vocab {tok.get('vocab_size', tok.get('vocab', '?'))})")
for split in ("train", "val"):
    s = d.get(split) or {}
    if s:
        print(f"  {split}: {s.get('tokens', '?'):,} tokens in {s.get('shards', '?')} shard(s)")
EOF
fi
mib=$(( (bytes + 1048575) / 1048576 ))
echo "  shards: $bytes bytes (${mib} MiB)"
if (( bytes > max_mib * 1048576 )); then
  echo "prepare_real_corpus: the shards exceed --max-mib $max_mib MiB; too large to carry" >&2
  exit 1
fi
echo "  train with: --data '$out/train_*.bin' --val-data '$out/val_*.bin' --vocab 257"
