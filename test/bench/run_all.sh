#!/usr/bin/env bash
# Runs every test/bench/*.bench.sh in name order with the build directory (default: build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$(cd "${1:-build}" && pwd)"
status=0
for b in "$here"/*.bench.sh; do
  [ -e "$b" ] || continue
  echo "== $(basename "$b")"
  "$b" "$build" || { echo "$(basename "$b") failed"; status=1; }
done
exit $status
