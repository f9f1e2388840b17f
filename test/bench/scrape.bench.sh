#!/usr/bin/env bash
# Scale benchmark of the scrape engine (issue 4), side by side with Prometheus and a wrk floor.
#
#   test/bench/scrape.bench.sh [BUILD_DIR]        (make bench runs it; about 5 minutes)
#
# The simulator (ipamd_sim, all its workers) is pinned to CPU 0; the scraper under test
# (bench_scrape: the real engine + the real Prometheus parser, keeping awscni_* and
# process_start_time_seconds like the daemon), Prometheus and wrk are pinned to CPU 1.
#   fresh: a new TCP connection per scrape (the realistic case: ipamD closes idle connections
#          after 5 s and the interval is 30 s). Ours sends Connection: close; for Prometheus the
#          simulator closes idle connections after 1 s and Prometheus scrapes every 5 s (10 s at
#          5,000 nodes: at most 500 scrapes a second, so it is not measured overloaded).
#   reuse: kept-alive connections (ours with SCRAPE_CONCURRENCY >= nodes; Prometheus with the
#          simulator's idle timeout at 60 s).
# Prometheus: static targets, every sample dropped by metric_relabel_configs, storage in a temp
# dir, so only scrape + parse cost counts. Both ask for gzip and get it, as from a real ipamD
# (promhttp compresses, chunked).
# Its CPU seconds come from /proc/PID/stat over a 20 s window, divided by the requests the
# simulator served in it; its RSS is VmHWM.
# wrk floor: -H 'Connection: close', as many connections as our concurrency, against one
# simulated node: client CPU per request (connect, send, read ~11 KB, close; no parsing).
#
# gzip (SCRAPE_GZIP) side by side: at BENCH_GZIP_NODES nodes, fresh and reuse, ours with gzip off
# and on in turn, BENCH_GZIP_REPS times each (the median counts, so load on a shared machine hits
# both alike): bytes read per node (headers and body, as on the wire) and CPU per node (user +
# system), and the ratio on/off, which must stay within 1.5x. Then callgrind's user-space
# instructions per node for one kept-alive round of 200 nodes each way (the kernel's share of the
# CPU, most of it with a fresh connection, is not in it).
#
# Output: one line per configuration,
#   BENCH scrape nodes=N phase=fresh|reuse wall_s=… cpu_s=… cpu_us_per_target=… rss_mb=…
#         mb_per_s=… [prom_cpu_us_per_target=… prom_rss_mb=…]
#   BENCH floor cpu_us_per_request=… connections=…
#   BENCH scrape nodes=N phase=fresh|reuse gzip=off wire_bytes_per_node=… cpu_us_per_target=…
#   BENCH scrape nodes=N phase=fresh|reuse gzip=on wire_bytes_per_node=… cpu_us_per_target=…
#         cpu_ratio_vs_off=… within_1_5x=yes|no
#   BENCH scrape nodes=200 phase=reuse gzip=off|on callgrind_instructions_per_node=…
# then a table. Knobs (environment): BENCH_NODES, BENCH_PROM_NODES, BENCH_CONCURRENCY,
# BENCH_GZIP_NODES (default 2000; none to skip), BENCH_GZIP_REPS (default 5).
set -euo pipefail

build="$(cd "${1:-build}" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
sim_bin="$build/test/ipamd_sim"
bench_bin="$build/test/bench_scrape"
# The bodies served: the real ipamD scrape of test/data (the figures in the docs were measured so).
template="${CMH_DATA_DIR:-$here/../data}/ipamd/cni_test1.data"
nodes_list="${BENCH_NODES:-1000 2000 5000 10000 100000}"
[ "$nodes_list" = none ] && nodes_list=""
prom_nodes="${BENCH_PROM_NODES:-2000 5000}"
conc="${BENCH_CONCURRENCY:-1000}"
sim_cpu=0
our_cpu=1
base=127.64.0.1
port=61678

for b in "$sim_bin" "$bench_bin"; do
  [ -x "$b" ] || { echo "missing $b: build first (make build)"; exit 1; }
done
have_prom=1
command -v prometheus >/dev/null || { echo "prometheus not installed: skipping it"; have_prom=0; }
have_wrk=1
command -v wrk >/dev/null || { echo "wrk not installed: skipping the floor"; have_wrk=0; }

tmp="$(mktemp -d)"
sim_pid=""
prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

declare -A res cg
last_out=""

# start_sim NODES IDLE_MS NODES_PER_WORKER: sets sim_pid, ctl, targets. A worker holds one
# listener per node plus the connections to it, under the open-file limit of 20,000: 16,000 nodes
# when connections are short-lived (fresh), 8,000 when each node keeps one open (reuse).
start_sim() {
  local n=$1 idle=$2 per=$3
  targets="$tmp/targets.$n"
  taskset -c $sim_cpu "$sim_bin" --nodes "$n" --base $base --port $port \
    --workers $(((n + per - 1) / per)) --idle-timeout-ms "$idle" --targets-out "$targets" \
    --restart 0 --template "$template" >"$tmp/sim.out" 2>"$tmp/sim.err" &
  sim_pid=$!
  for _ in $(seq 1 600); do
    grep -q READY "$tmp/sim.out" 2>/dev/null && break
    kill -0 "$sim_pid" 2>/dev/null || { cat "$tmp/sim.err"; exit 1; }
    sleep 0.1
  done
  ctl="$(sed -n 's/.*control=\([0-9.:]*\).*/\1/p' "$tmp/sim.out")"
}

stop_sim() {
  kill "$sim_pid" 2>/dev/null || true
  wait "$sim_pid" 2>/dev/null || true
  sim_pid=""
}

sim_requests() {
  curl -s "http://$ctl/stats" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p'
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# run_ours NODES PHASE ROUNDS [GZIP]
run_ours() {
  local n=$1 phase=$2 rounds=$3 gz=${4:-1} ka c=$conc out
  ka=$([ "$phase" = reuse ] && echo 1 || echo 0)
  [ "$phase" = reuse ] && c=$n
  out="$(taskset -c $our_cpu "$bench_bin" --targets "$targets" --rounds "$rounds" --warmup 1 \
    --keepalive "$ka" --concurrency "$c" --log-failures 3 --gzip "$gz" | tail -1)"
  last_out=$out
  local wall cpu us rss bytes
  wall=$(field wall_s_avg "$out"); cpu=$(field cpu_s_avg "$out")
  us=$(field cpu_us_per_target "$out"); rss=$(field rss_mb "$out"); bytes=$(field bytes_avg "$out")
  res[$n,$phase]="wall_s=$wall cpu_s=$cpu cpu_us_per_target=$us rss_mb=$rss mb_per_s=$(awk -v b="$bytes" -v w="$wall" 'BEGIN{printf "%.1f", (w > 0 ? b / w / 1e6 : 0)}')"
  res[$n,$phase,us]=$us
  res[$n,$phase,wall]=$wall
  res[$n,$phase,rss]=$rss
}

# run_prom NODES PHASE: Prometheus on the same simulator (already started with the right idle).
run_prom() {
  local n=$1 phase=$2 dir="$tmp/prom.$1.$2" pport
  mkdir -p "$dir/data"
  pport=$((19090 + RANDOM % 1000))
  # at most 500 scrapes a second, so Prometheus is measured in steady state, not overloaded
  local every=$(((n + 499) / 500))
  [ $every -lt 5 ] && every=5
  {
    echo "global: {scrape_interval: ${every}s, scrape_timeout: 4s}"
    echo "scrape_configs:"
    echo "  - job_name: ipamd"
    echo "    metric_relabel_configs: [{source_labels: [__name__], regex: '.+', action: drop}]"
    echo "    static_configs:"
    echo "      - targets:"
    awk '{printf "          - \"%s:%s\"\n", $2, $3}' "$targets"
  } >"$dir/prometheus.yml"
  taskset -c $our_cpu prometheus --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" --web.listen-address="127.0.0.1:$pport" \
    --storage.tsdb.retention.time=1h --log.level=warn >"$dir/log" 2>&1 &
  prom_pid=$!
  sleep $((every + 7)) # start-up and the first scrapes of every target (spread over the interval)
  local c0 r0 c1 r1 tick
  tick=$(getconf CLK_TCK)
  c0=$(awk '{print $14+$15}' /proc/$prom_pid/stat); r0=$(sim_requests)
  sleep 20
  c1=$(awk '{print $14+$15}' /proc/$prom_pid/stat); r1=$(sim_requests)
  local hwm
  hwm=$(awk '/VmHWM/{print $2}' /proc/$prom_pid/status)
  kill $prom_pid; wait $prom_pid 2>/dev/null || true
  prom_pid=""
  res[$n,$phase,prom]="prom_cpu_us_per_target=$(awk -v c=$((c1 - c0)) -v t="$tick" -v r=$((r1 - r0)) 'BEGIN{printf "%.1f", (r > 0 ? c / t * 1e6 / r : 0)}') prom_rss_mb=$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k / 1024}') prom_scrapes=$((r1 - r0))"
  res[$n,$phase,promus]=$(awk -v c=$((c1 - c0)) -v t="$tick" -v r=$((r1 - r0)) 'BEGIN{printf "%.1f", (r > 0 ? c / t * 1e6 / r : 0)}')
}

rounds_for() {
  local n=$1
  if [ "$n" -ge 100000 ]; then echo 2; elif [ "$n" -ge 10000 ]; then echo 4; else echo 6; fi
}

is_prom_n() { [ $have_prom = 1 ] && [[ " $prom_nodes " == *" $1 "* ]]; }

t_start=$(date +%s)
for n in $nodes_list; do
  r=$(rounds_for "$n")
  # fresh: ours closes after each response; for Prometheus the simulator drops idle connections
  start_sim "$n" 1000 16000
  run_ours "$n" fresh "$r"
  is_prom_n "$n" && run_prom "$n" fresh
  if [ "$n" -eq 1000 ] && [ $have_wrk = 1 ]; then
    first="$(head -1 "$targets")"
    url="http://$(awk '{print $2":"$3}' <<<"$first")/metrics"
    wout="$( { /usr/bin/time -f "TIME %U %S" taskset -c $our_cpu wrk -t1 -c"$conc" -d5s \
      -H 'Connection: close' "$url"; } 2>&1)"
    reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$wout")
    floor=$(awk -v r="$reqs" '/^TIME/{printf "%.1f", (r > 0 ? ($2 + $3) * 1e6 / r : 0)}' <<<"$wout")
    echo "BENCH floor cpu_us_per_request=$floor connections=$conc requests=$reqs"
    res[floor]=$floor
  fi
  stop_sim
  # reuse: keep-alive needs one socket per node on both sides: up to 10,000 here (open-file
  # limit 20,000 per process); at 100,000 nodes it cannot be done within SCRAPE_CONCURRENCY.
  if [ "$n" -le 10000 ]; then
    start_sim "$n" 60000 8000
    run_ours "$n" reuse "$r"
    is_prom_n "$n" && run_prom "$n" reuse
    stop_sim
  fi
  for phase in fresh reuse; do
    [ -n "${res[$n,$phase]:-}" ] || continue
    echo "BENCH scrape nodes=$n phase=$phase ${res[$n,$phase]} ${res[$n,$phase,prom]:-}"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END{print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }

# gzip off and on, side by side
gzip_nodes="${BENCH_GZIP_NODES:-2000}"
gzip_reps="${BENCH_GZIP_REPS:-5}"
gzip_lines=()
if [ "$gzip_nodes" != none ]; then
  for n in $gzip_nodes; do
    for phase in fresh reuse; do
      if [ "$phase" = fresh ]; then start_sim "$n" 1000 16000; else start_sim "$n" 60000 8000; fi
      declare -A us_list=() wire_list=()
      for _ in $(seq 1 "$gzip_reps"); do
        for gz in 0 1; do
          run_ours "$n" "$phase" 4 "$gz"
          us_list[$gz]+=" $(field cpu_us_per_target "$last_out")"
          wire_list[$gz]+=" $(awk -v b="$(field bytes_avg "$last_out")" -v n="$n" 'BEGIN{printf "%.0f", b / n}')"
        done
      done
      stop_sim
      off_us=$(median <<<"${us_list[0]}"); on_us=$(median <<<"${us_list[1]}")
      off_w=$(median <<<"${wire_list[0]}"); on_w=$(median <<<"${wire_list[1]}")
      ratio=$(awk -v a="$on_us" -v b="$off_us" 'BEGIN{printf "%.2f", (b > 0 ? a / b : 0)}')
      ok=$(awk -v r="$ratio" 'BEGIN{print (r <= 1.5 ? "yes" : "no")}')
      gzip_lines+=("BENCH scrape nodes=$n phase=$phase gzip=off wire_bytes_per_node=$off_w cpu_us_per_target=$off_us runs=$(echo ${us_list[0]} | tr " " ,)")
      gzip_lines+=("BENCH scrape nodes=$n phase=$phase gzip=on wire_bytes_per_node=$on_w cpu_us_per_target=$on_us cpu_ratio_vs_off=$ratio within_1_5x=$ok runs=$(echo ${us_list[1]} | tr " " ,)")
      printf '%s\n' "${gzip_lines[@]: -2}"
    done
  done
  if command -v valgrind >/dev/null; then
    start_sim 200 60000 8000
    for gz in 0 1; do
      valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$gz" "$bench_bin" --targets "$targets" \
        --rounds 2 --keepalive 1 --concurrency 200 --gzip "$gz" >/dev/null 2>"$tmp/cg.$gz.err"
      valgrind --tool=callgrind --callgrind-out-file="$tmp/cg1.$gz" "$bench_bin" --targets "$targets" \
        --rounds 1 --keepalive 1 --concurrency 200 --gzip "$gz" >/dev/null 2>"$tmp/cg1.$gz.err"
      # the second round alone: two rounds minus one (start-up and the first connects cancel out)
      two=$(sed -n 's/^summary: //p' "$tmp/cg.$gz"); one=$(sed -n 's/^summary: //p' "$tmp/cg1.$gz")
      cg[$gz]=$(awk -v a="$two" -v b="$one" 'BEGIN{printf "%.0f", (a - b) / 200}')
    done
    stop_sim
    gzip_lines+=("BENCH scrape nodes=200 phase=reuse gzip=off callgrind_instructions_per_node=${cg[0]}")
    gzip_lines+=("BENCH scrape nodes=200 phase=reuse gzip=on callgrind_instructions_per_node=${cg[1]} ratio_vs_off=$(awk -v a="${cg[1]}" -v b="${cg[0]}" 'BEGIN{printf "%.2f", a / b}')")
    printf '%s\n' "${gzip_lines[@]: -2}"
  fi
fi

echo
printf "%-8s %-6s %8s %8s %10s %8s %12s %8s\n" nodes phase wall_s cpu_us/t rss_mb prom_us/t prom/ours floor/t
for n in $nodes_list; do
  for phase in fresh reuse; do
    [ -n "${res[$n,$phase]:-}" ] || continue
    us=${res[$n,$phase,us]}
    pus=${res[$n,$phase,promus]:-}
    ratio=$([ -n "$pus" ] && awk -v p="$pus" -v u="$us" 'BEGIN{printf "%.1fx", p / u}' || echo -)
    printf "%-8s %-6s %8s %8s %10s %8s %12s %8s\n" "$n" "$phase" "${res[$n,$phase,wall]}" "$us" \
      "${res[$n,$phase,rss]}" "${pus:--}" "$ratio" "${res[floor]:--}"
  done
done
if [ -n "${res[1000,fresh,rss]:-}" ] && [ -n "${res[100000,fresh,rss]:-}" ]; then
  echo "memory per node (peak RSS 100000 vs 1000 nodes): $(awk -v a="${res[1000,fresh,rss]}" \
    -v b="${res[100000,fresh,rss]}" 'BEGIN{printf "%.0f", (b - a) * 1048576 / 99000}') bytes"
fi
if [ ${#gzip_lines[@]} -gt 0 ]; then
  echo
  printf '%s\n' "${gzip_lines[@]}"
fi
echo "bench took $(($(date +%s) - t_start)) s"
