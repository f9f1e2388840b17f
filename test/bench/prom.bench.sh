#!/usr/bin/env bash
# Prometheus parser benchmark: our parser (all families; with the daemon's interest filter
# cmh_agg_want on a body seen before, on other nodes' variants of it in turn, and with a fresh
# parser) vs a memchr-only line splitter on the same in-memory bytes, then promtool
# (Debian's `prometheus`, the Go reference parser) vs our `parse` command on the same large file,
# wall time side by side.
# Usage: prom.bench.sh BUILD_DIR. Prints a table and machine-readable `BENCH prom ...` lines.
set -euo pipefail
build="$1"
here="$(cd "$(dirname "$0")" && pwd)"
ipamd="${CMH_DATA_DIR:-$here/../data}/ipamd/cni_test1.data"
bench="$build/test/bench_prom"
cmd="$build/cni-metrics-helper"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
large="$work/large.prom"
"$bench" --gen "$large" 8

echo "-- in-memory throughput (modes interleaved, best of 15 rounds; filter = cmh_agg_want)"
"$bench" ipamd "$ipamd" large "$large"

# Wall time of one run, best of 3, in seconds.
best_of_3() {
  local best="" t0 t1 dt
  for _ in 1 2 3; do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    dt=$(( t1 - t0 ))
    if [ -z "$best" ] || [ "$dt" -lt "$best" ]; then best=$dt; fi
  done
  awk -v ns="$best" 'BEGIN { printf "%.4f", ns / 1e9 }'
}
bytes=$(stat -c %s "$large")
echo "-- whole file, wall time (best of 3), $bytes bytes"
if command -v promtool >/dev/null; then
  pt=$(best_of_3 sh -c "promtool check metrics < '$large'")
  ours=$(best_of_3 "$bench" --parse-file "$large")
  cmdt=$(best_of_3 sh -c "'$cmd' parse '$large'")
  ratio=$(awk -v a="$pt" -v b="$ours" 'BEGIN { printf "%.1f", a / b }')
  ratio_cmd=$(awk -v a="$pt" -v b="$cmdt" 'BEGIN { printf "%.1f", a / b }')
  mbs() { awk -v b="$bytes" -v t="$1" 'BEGIN { printf "%.0f", b / t / 1e6 }'; }
  printf "%-42s %8ss %6s MB/s\n" "promtool check metrics < file" "$pt" "$(mbs "$pt")"
  printf "%-42s %8ss %6s MB/s  %sx faster than promtool\n" \
    "our parser, file streamed in 64 KiB reads" "$ours" "$(mbs "$ours")" "$ratio"
  printf "%-42s %8ss %6s MB/s  %sx faster (prints every sample)\n" \
    "cni-metrics-helper parse file > /dev/null" "$cmdt" "$(mbs "$cmdt")" "$ratio_cmd"
  echo "BENCH prom input=large parser=promtool wall_s=$pt bytes=$bytes"
  echo "BENCH prom input=large parser=cmh wall_s=$ours bytes=$bytes speedup_vs_promtool=$ratio"
  echo "BENCH prom input=large parser=cmh-parse-command wall_s=$cmdt bytes=$bytes speedup_vs_promtool=$ratio_cmd"
else
  echo "promtool not found (Debian package 'prometheus'); skipped"
fi

if command -v valgrind >/dev/null; then
  echo "-- instructions per line (callgrind: 200 passes over the ipamD scrape less 0 passes)"
  lines=$(wc -l < "$ipamd")
  ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bench" --passes "$1" "$2" "$ipamd" \
      2>&1 | awk '/Collected/ { print $4 }' | tr -d ,
  }
  declare -A per
  for mode in memchr memchr-fleet full filter fleet cold; do
    per[$mode]=$(awk -v a="$(ir "$mode" 200)" -v b="$(ir "$mode" 0)" -v l="$lines" \
                   'BEGIN { printf "%.1f", (a - b) / 200 / l }')
    base=memchr
    [ "$mode" = fleet ] || [ "$mode" = memchr-fleet ] && base=memchr-fleet
    ratio=$(awk -v a="${per[$mode]}" -v b="${per[$base]}" 'BEGIN { printf "%.2f", a / b }')
    printf "%-12s %8s instructions/line %6sx memchr\n" "$mode" "${per[$mode]}" "$ratio"
    echo "BENCH prom input=ipamd mode=$mode callgrind_ir_per_line=${per[$mode]} ratio_vs_memchr=$ratio"
  done
fi
