#!/bin/sh
# Memory per discovered aws-node pod (pod store and published target set): bench_pods.
set -eu
build=$(cd "${1:-build}" && pwd)
exec "$build/test/bench_pods" 1000 5000 20000 100000
