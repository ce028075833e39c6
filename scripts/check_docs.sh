#!/usr/bin/env bash
# Runs the CPU commands of README.md and docs/ as written (scripts/check_docs.py says how they are
# found and which are skipped). Builds the CPU programs into build/release first, as the pages do.
# Usage: scripts/check_docs.sh [--list] [--only REGEX] [--timeout S]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 scripts/check_docs.py "$@"
