#!/usr/bin/env bash
# The English corpus of the depth study (docs/results/depth): text from Debian packages, cleaned,
# deduplicated and split by tools/corpus_text.py, a SentencePiece tokenizer trained on it by
# fathom-prepare, and llm.c shards. Everything lives in a git-ignored folder (default .corpus).
#
# Usage: scripts/depth_corpus.sh COMMAND [options]
#   bundle     (a machine with Debian's registry) downloads the packages (their names and licences:
#              tools/corpus_text.py --list), builds DIR/text/{train,val}.txt (kept when there:
#              --rebuild-text makes it again), trains the tokenizer, writes the shards, and packs
#              the text (xz) with tokenizer.model, manifest.json, dataset.json and the .deb files
#              of libsentencepiece into DIR/bundle. The training text is cut at document ends into
#              parts of at most --part-mb MB; part 0 goes in DIR/bundle, part k in DIR/bundle-k,
#              so that each folder can be carried to a machine without a registry on its own
#              call (each is under 64 MiB)
#   shards     (any machine, e.g. the GPU one) DIR/shards from DIR/bundle and DIR/bundle-k with
#              the bundled tokenizer: the same tokens as the bundle's dataset.json says, or an
#              error naming the part that is missing
#   sentencepiece
#              unpacks the bundled libsentencepiece .deb files into DIR/sp-root (for a machine
#              without libsentencepiece-dev) and prints that folder, for CMake's
#              -DFATHOM_SENTENCEPIECE_ROOT=...
#   check      checks DIR/text (both splits non-empty, no shared document or paragraph)
# Options:
#   --dir DIR     the corpus folder (default .corpus)
#   --build DIR   build folder holding bin/fathom-prepare (default build)
#   --vocab N     SentencePiece vocabulary for bundle (default 16384; see docs/results/depth)
#   --tokenizer-lines N  lines the tokenizer is trained on, a seeded sample (default 500k)
#   --only LIST   bundle only these packages (comma list; tests use it)
#   --packages D  bundle from packages already unpacked in D/<name>/ (no download)
#   --rebuild-text  make DIR/text again even when it is there
#   --part-mb N   most uncompressed MB of training text in one bundle part (default 120)
#   env: FATHOM_NO_APT=1 never calls apt-get
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cmd="${1:-}"
[[ $# -gt 0 ]] && shift
dir=.corpus
build=build
vocab=16384
only=""
packages=""
rebuild_text=0
tokenizer_lines=500k
part_mb=120
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --vocab) vocab="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --packages) packages="$2"; shift 2 ;;
    --rebuild-text) rebuild_text=1; shift ;;
    --part-mb) part_mb="$2"; shift 2 ;;
    --tokenizer-lines) tokenizer_lines="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "depth_corpus: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done
case "$cmd" in
  bundle|shards|sentencepiece|check) ;;
  -h|--help|"") sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; [[ -n "$cmd" ]]; exit $? ;;
  *) echo "depth_corpus: unknown command '$cmd' (expected bundle, shards, sentencepiece or check)" >&2; exit 2 ;;
esac

# The libsentencepiece packages carried in the bundle (Debian 12's; they unpack and run on Ubuntu
# 24.04, whose libc and libstdc++ are newer).
sp_debs=(libsentencepiece0 libsentencepiece-dev libprotobuf-lite32)

mkdir -p "$dir"
[[ -f "$dir/.gitignore" ]] || printf '# The depth corpus (scripts/depth_corpus.sh): never committed.\n*\n' > "$dir/.gitignore"

find_prepare() {
  for p in "$build/bin/fathom-prepare" "$build/examples/prepare/fathom-prepare"; do
    if [[ -x "$p" ]]; then echo "$p"; return 0; fi
  done
  echo "depth_corpus: no fathom-prepare in '$build/bin'; build it first (with libsentencepiece):" >&2
  echo "  cmake -S . -B $build -DFATHOM_BUILD_EXAMPLES=ON && cmake --build $build --target fathom-prepare" >&2
  return 1
}

need_sentencepiece() {
  if ! "$1" --help | grep -q "this build has sentencepiece"; then
    echo "depth_corpus: '$1' was built without sentencepiece; install libsentencepiece-dev (or configure" >&2
    echo "  with -DFATHOM_SENTENCEPIECE_ROOT=\$(scripts/depth_corpus.sh sentencepiece)) and rebuild it" >&2
    exit 1
  fi
}

# Prints "N" tokens of SPLIT from a dataset.json.
tokens_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["tokens"])' "$1" "$2"; }

case "$cmd" in
check)
  python3 tools/corpus_text.py --check "$dir/text"
  ;;

bundle)
  prepare="$(find_prepare)"
  need_sentencepiece "$prepare"
  have_text=0
  [[ -f "$dir/text/manifest.json" && -f "$dir/text/train.txt" && -f "$dir/text/val.txt" && "$rebuild_text" == 0 ]] && have_text=1
  if [[ "$have_text" == 1 ]]; then
    echo "depth_corpus: $dir/text is there; kept (--rebuild-text makes it again)"
  elif [[ -z "$packages" ]]; then
    packages="$dir/unpacked"
    mapfile -t names < <(python3 tools/corpus_text.py --list | cut -f1)
    if [[ -n "$only" ]]; then IFS=, read -r -a names <<< "$only"; fi
    mkdir -p "$dir/debs" "$packages"
    missing=()
    for p in "${names[@]}" "${sp_debs[@]}"; do
      compgen -G "$dir/debs/${p}_*.deb" >/dev/null || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      if [[ "${FATHOM_NO_APT:-0}" == 1 ]]; then
        echo "depth_corpus: missing .deb files for ${missing[*]} in $dir/debs (FATHOM_NO_APT=1)" >&2
        exit 1
      fi
      echo "depth_corpus: downloading ${missing[*]}"
      (cd "$dir/debs" && apt-get download "${missing[@]}")
    fi
    for p in "${names[@]}"; do
      if [[ ! -d "$packages/$p" ]]; then
        mkdir -p "$packages/$p.tmp"
        dpkg-deb -x "$(compgen -G "$dir/debs/${p}_*.deb" | head -1)" "$packages/$p.tmp"
        mv "$packages/$p.tmp" "$packages/$p"
      fi
    done
  fi
  only_args=()
  [[ -n "$only" ]] && only_args=(--only "$only")
  if [[ "$have_text" == 0 ]]; then
    python3 tools/corpus_text.py --packages "$packages" --out "$dir/text" "${only_args[@]}"
  fi
  python3 tools/corpus_text.py --check "$dir/text"
  # The tokenizer is trained on the training split only; the validation split is tokenized apart.
  "$prepare" "$dir/text/train.txt" --val-input "$dir/text/val.txt" --split-records \
    --train-tokenizer "$vocab" --tokenizer-lines "$tokenizer_lines" --out "$dir/shards" --overwrite --quiet
  rm -rf "$dir"/bundle "$dir"/bundle-*
  mkdir -p "$dir/bundle"
  cp "$dir/shards/tokenizer.model" "$dir/shards/dataset.json" "$dir/text/manifest.json" "$dir/bundle/"
  xz -9 -T2 -c "$dir/text/val.txt" > "$dir/bundle/val.txt.xz"
  # The training text in parts cut after a document's separator line; parts.txt lists them.
  python3 - "$dir/text/train.txt" "$dir/parts" "$part_mb" <<'PY'
import os, sys
src, out, limit = sys.argv[1], sys.argv[2], int(float(sys.argv[3]) * 1e6)
os.makedirs(out, exist_ok=True)
for f in os.listdir(out):
    os.remove(os.path.join(out, f))
part, size, f = 0, 0, open(os.path.join(out, "train-0.txt"), "wb")
with open(src, "rb") as text:
    for line in text:
        f.write(line)
        size += len(line)
        if line == b"\x1e\n" and size >= limit:
            f.close()
            part, size = part + 1, 0
            f = open(os.path.join(out, f"train-{part}.txt"), "wb")
f.close()
if size == 0 and part > 0:
    os.remove(os.path.join(out, f"train-{part}.txt"))
PY
  : > "$dir/bundle/parts.txt"
  for part in $(ls "$dir/parts" | sort -t- -k2 -n); do
    k="${part#train-}"; k="${k%.txt}"
    folder=bundle
    [[ "$k" != 0 ]] && folder="bundle-$k"
    mkdir -p "$dir/$folder"
    xz -9 -T2 -c "$dir/parts/$part" > "$dir/$folder/$part.xz"
    echo "$folder/$part.xz $(stat -c %s "$dir/parts/$part")" >> "$dir/bundle/parts.txt"
  done
  rm -rf "$dir/parts"
  mkdir -p "$dir/bundle/debs"
  for p in "${sp_debs[@]}"; do
    f="$(compgen -G "$dir/debs/${p}_*.deb" | head -1 || true)"
    if [[ -n "$f" ]]; then cp "$f" "$dir/bundle/debs/"; fi
  done
  echo
  for b in "$dir"/bundle "$dir"/bundle-*; do
    [[ -d "$b" ]] || continue
    echo "depth_corpus: $b ($(du -sb "$b" | cut -f1) bytes; carry it as it is):"
    (cd "$b" && find . -type f | sort | xargs ls -l) | awk 'NF > 5 { printf "  %12d  %s\n", $5, $9 }'
  done
  echo "  train tokens: $(tokens_of "$dir/shards/dataset.json" train), val tokens: $(tokens_of "$dir/shards/dataset.json" val)"
  ;;

sentencepiece)
  root="$(cd "$dir" && pwd)/sp-root"
  shopt -s nullglob
  debs=("$dir"/bundle/debs/*.deb)
  if [[ ${#debs[@]} -eq 0 ]]; then echo "depth_corpus: no .deb files in $dir/bundle/debs" >&2; exit 1; fi
  rm -rf "$root"
  mkdir -p "$root"
  for f in "${debs[@]}"; do dpkg-deb -x "$f" "$root"; done
  # The -dev package's unversioned .so links are absolute (/usr/lib/...): relink them here.
  libdir="$(dirname "$(find "$root" -name 'libsentencepiece.so.0*' | head -1)")"
  for name in libsentencepiece libsentencepiece_train; do
    target="$(cd "$libdir" && ls $name.so.0* | sort | head -1)"
    ln -sfn "$target" "$libdir/$name.so"
  done
  echo "$root"
  ;;

shards)
  prepare="$(find_prepare)"
  need_sentencepiece "$prepare"
  for f in parts.txt val.txt.xz tokenizer.model dataset.json; do
    [[ -f "$dir/bundle/$f" ]] || { echo "depth_corpus: $dir/bundle/$f is missing (run 'bundle' where Debian's registry is, and carry $dir/bundle)" >&2; exit 1; }
  done
  while read -r part bytes; do
    [[ -f "$dir/$part" ]] || { echo "depth_corpus: $dir/$part is missing: carry $dir/$(dirname "$part") too (a call may carry one bundle folder; the folders already carried stay on a warm machine)" >&2; exit 1; }
  done < "$dir/bundle/parts.txt"
  if [[ -f "$dir/shards/dataset.json" ]] && cmp -s "$dir/shards/tokenizer.model" "$dir/bundle/tokenizer.model" &&
     [[ "$(tokens_of "$dir/shards/dataset.json" train)" == "$(tokens_of "$dir/bundle/dataset.json" train)" ]]; then
    echo "depth_corpus: $dir/shards already holds the bundle's shards; kept"
  else
    mkdir -p "$dir/text"
    xz -d -c "$dir/bundle/val.txt.xz" > "$dir/text/val.txt"
    : > "$dir/text/train.txt"
    while read -r part bytes; do
      before="$(stat -c %s "$dir/text/train.txt")"
      xz -d -c "$dir/$part" >> "$dir/text/train.txt"
      if [[ "$(( $(stat -c %s "$dir/text/train.txt") - before ))" != "$bytes" ]]; then
        echo "depth_corpus: $dir/$part holds a different text than the bundle's parts.txt says" >&2
        exit 1
      fi
    done < "$dir/bundle/parts.txt"
    "$prepare" "$dir/text/train.txt" --val-input "$dir/text/val.txt" --split-records \
      --tokenizer "$dir/bundle/tokenizer.model" --out "$dir/shards" --overwrite --quiet
  fi
  for split in train val; do
    want="$(tokens_of "$dir/bundle/dataset.json" "$split")"
    got="$(tokens_of "$dir/shards/dataset.json" "$split")"
    if [[ "$want" != "$got" ]]; then
      echo "depth_corpus: $split: $got tokens, the bundle was made with $want; not the same tokenizer build?" >&2
      exit 1
    fi
  done
  echo "depth_corpus: shards in $dir/shards: $(tokens_of "$dir/shards/dataset.json" train) train tokens, $(tokens_of "$dir/shards/dataset.json" val) val tokens"
  echo "  train with: --data '$dir/shards/train_*.bin' --val-data '$dir/shards/val_*.bin' (the vocabulary comes from $dir/shards/dataset.json)"
  ;;
esac
