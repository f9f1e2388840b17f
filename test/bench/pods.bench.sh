#!/bin/sh
# Peak RSS of discovering 5,000 and 100,000 realistic aws-node pods (a list in pages of 500, then
# a relist while the first list is kept): pages streamed through the parser (what the daemon
# does), and for reference at 5,000 pages held whole in one jansson tree (how pages were read
# before they streamed; BENCH_PODS_WHOLE_100K=1 adds it at 100,000, a quarter of an hour).
# One process per figure: the peak is the process's.
set -eu
build=$(cd "${1:-build}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
tpl=$(mktemp)
trap 'rm -f "$tpl"' EXIT
/usr/bin/python3 "$here/aws_node_pod.py" >"$tpl"
"$build/test/bench_pods" "$tpl" stream 5000 500
"$build/test/bench_pods" "$tpl" whole 5000 500
"$build/test/bench_pods" "$tpl" stream 100000 500
if [ "${BENCH_PODS_WHOLE_100K:-0}" = 1 ]; then
    "$build/test/bench_pods" "$tpl" whole 100000 500
fi
