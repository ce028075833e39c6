#!/usr/bin/env bash
# Copies the nlohmann-json and CLI11 headers of this machine's packages into .deps/include, a
# git-ignored folder that CMake falls back to where those packages are not installed (the GPU
# machine: carry .deps there with the working tree).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/.deps/include"
for dir in nlohmann CLI; do
  if [[ ! -d "/usr/include/$dir" ]]; then
    echo "deps: /usr/include/$dir not found; run scripts/setup.sh first" >&2
    exit 1
  fi
done
rm -rf "$dest"
mkdir -p "$dest"
cp -r /usr/include/nlohmann /usr/include/CLI "$dest/"
echo "deps: $(find "$dest" -type f | wc -l) headers in $dest ($(du -sh "$dest" | cut -f1))"
