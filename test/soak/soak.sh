#!/bin/sh
# Soak: the daemon against 20,000 simulated nodes (churn, restarts, scrape faults), discovery
# through the fake Kubernetes API and the CloudWatch stand-in, at a 1 s interval, for
# SOAK_MINUTES (default 30); RSS and open fds sampled every 10 s into a CSV, then the curve,
# rounds and datums (see test/soak/soak.py for every check and tolerance). Before it, the fault
# matrix (test/integration/test_fault_matrix.py) at full size.
#
#   test/soak/soak.sh [BUILD_DIR]                     the real soak (make soak)
#   SOAK_MATRIX=0 SOAK_MINUTES=3 SOAK_NODES=2000 test/soak/soak.sh build-asan      short, ASan+UBSan
#   SOAK_MATRIX=0 SOAK_MINUTES=2 SOAK_NODES=200 SOAK_VALGRIND=1 test/soak/soak.sh build   valgrind
# Exit status 0 when every check passed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$(cd "${1:-build}" && pwd)
export CMH_BIN="$build/cni-metrics-helper" CMH_BUILD_DIR="$build" CMH_SOURCE_DIR="$src"
export CMH_DATA_DIR="${CMH_DATA_DIR:-$src/test/data}"
for f in "$CMH_BIN" "$build/test/ipamd_sim"; do
  [ -x "$f" ] || { echo "soak: $f missing: build first (make build)" >&2; exit 2; }
done
if grep -q 'CMH_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi
# The fault matrix at full size first (SOAK_MATRIX=0 skips it; the short sanitizer runs do).
if [ "${SOAK_MATRIX:-1}" = 1 ]; then
  FAULT_MATRIX_NODES=5000 FAULT_MATRIX_ROUNDS=30 FAULT_MATRIX_API_DOWN_S=180 \
    /usr/bin/python3 "$src/test/integration/test_fault_matrix.py" || exit 1
fi
exec /usr/bin/python3 "$here/soak.py"
