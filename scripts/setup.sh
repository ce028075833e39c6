#!/usr/bin/env bash
# Installs, with apt-get, the Debian/Ubuntu packages fathom's build needs, if any are missing.
# Uses sudo only when not root. FATHOM_NO_APT=1 skips installing (missing packages are listed).
# Usage: scripts/setup.sh [extra packages...]
set -euo pipefail

packages=(cmake ninja-build g++ catch2 nlohmann-json3-dev libcli11-dev libopenblas-dev pkg-config
          libsentencepiece-dev python3 "$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ "${FATHOM_NO_APT:-0}" == 1 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing packages (install them yourself): ${missing[*]}" >&2
  exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
echo "setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
