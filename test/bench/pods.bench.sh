#!/bin/sh
# Peak RSS of discovering 5,000 and 100,000 realistic aws-node pods (a list in pages of 500, then
# a relist while the first list is kept): pages streamed through the parser, and for reference
# pages held whole in one jansson tree. One process per figure (the peak is the process's).
set -eu
build=$(cd "${1:-build}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
tpl=$(mktemp)
trap 'rm -f "$tpl"' EXIT
/usr/bin/python3 "$here/aws_node_pod.py" >"$tpl"
for n in 5000 100000; do
    for mode in stream whole; do
        "$build/test/bench_pods" "$tpl" $mode $n 500
    done
done
