#!/usr/bin/env bash
# WASIp3 on wasmwiz, in one run, two parts:
#
# 1. A handler that waits: each request calls an upstream service on
#    loopback that answers after 50 ms (a Node.js server), at 1,000
#    connections, on `wasmwiz serve` (embedded store, every feature on):
#    - p2-fresh: WASIp2 (tests/guests/hostile `outbound`), a fresh instance
#      per request;
#    - p2-reuse: the same with sequential reuse (128 requests per instance);
#    - p3-shared: WASIp3 (examples/fetch-p3), concurrency per instance (up
#      to 100 requests at once, 10,000 in all).
#    For each: requests/s, p99, the server's peak RSS (VmHWM), the most
#    instances in use (wasmwiz_instances_in_use) and the most linear memory
#    its instances held (wasmwiz_instance_memory_bytes), both sampled every
#    100 ms.
# 2. A CPU-only `hello`: the WASIp3 examples/hello-p3 on `wasmwiz run`
#    (fresh; shared, 128 per instance, 16 at once) and on `wasmtime serve`
#    48 with the same component (its defaults for WASIp3: 128 per instance,
#    16 at once), beside the WASIp2 `hello` on both with reuse.
#
# wrk on loopback, alternating, median of the rounds.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/p3.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [-w CONNECTIONS] [-p PART]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections of part 2, the CPU-only hello (default 64)
  -t THREADS      wrk threads (default 2)
  -w CONNECTIONS  wrk connections of part 1, the waiting handler (default 1000)
  -p PART         run part 1 or part 2 only (default: both)

Builds the release binary, the components and (once, for part 2)
wasmtime-cli 48.0.8.
Raw wrk output goes to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2 waiting=1000 part=all
bench_option() {
    case $1 in
        w) waiting=$2 ;;
        p) case $2 in 1|2) part=$2 ;; *) usage >&2; exit 2 ;; esac ;;
        *) usage >&2; exit 2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:w:p:" "$@"

bench_setup p3 wrk node curl
bench_build_wasmwiz
if [ "$part" != 1 ]; then
    wasmtime=$(bench_wasmtime)
fi
components=$bench_root/target/components
# More open files than the default 1,024: 1,000 client connections, as
# many upstream ones.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- part 1: a handler that waits 50 ms on an upstream ---------------------

# Figures per server name (bench_rounds fills them).
declare -A rps p50 p99 med med99

if [ "$part" != 2 ]; then

upstream_port=18420
bench_start upstream "$results/upstream.log" node -e "
const http = require('http');
const server = http.createServer((req, res) => setTimeout(() => { res.setHeader('connection', 'close'); res.end('upstream ok\n'); }, 50));
server.keepAliveTimeout = 60000;
server.maxConnections = 100000;
server.listen({ port: $upstream_port, host: '127.0.0.1', backlog: 8192 });
"
bench_wait_ready "http://127.0.0.1:$upstream_port/"

# One `wasmwiz serve` per variant (its own data folder, port and process, so
# its memory is its own), the component deployed with EXTRA deployment JSON.
# A WASIp2 request in flight holds a place in the instance pool (a shared
# WASIp3 instance holds one for all its requests), and one tenant may hold
# three quarters of the pool: 1,400 places let the 1,000 connections in for
# every variant.
# serve_variant NAME PORT COMPONENT ROUTE EXTRA
serve_variant() {
    local name=$1 port=$2 file=$3 route=$4 extra=$5 dir key digest
    dir=$work/$name
    mkdir -p "$dir"
    key=$(bench_serve_setup "$dir")
    bench_start "$name" "$results/$name.log" env WASMWIZ_DATA_DIR="$dir" \
        INSTANCE_POOL_SIZE=1400 POOL_WARM_SLOTS=200 OUTBOUND_ALLOWED_NETWORKS=127.0.0.0/8 LOG_LEVEL=warn \
        "$bench_bin" serve --addr "127.0.0.1:$port"
    bench_wait_ready "http://127.0.0.1:$port/health"
    digest=$(curl -fsS -H "Authorization: Bearer $key" --data-binary "@$file" \
        "http://127.0.0.1:$port/api/v1/components?name=$name" |
        sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"$route\",\"component\":\"$digest\",\"allowed_outbound_hosts\":[\"http://127.0.0.1:$upstream_port\"]$extra}" \
        "http://127.0.0.1:$port/api/v1/deployments"
}

ports=(18421 18422 18423)
names=(p2-fresh p2-reuse p3-shared)
target="url=http://127.0.0.1:$upstream_port/"
serve_variant p2-fresh "${ports[0]}" "$components/hostile.wasm" '/bench/w/...' ''
serve_variant p2-reuse "${ports[1]}" "$components/hostile.wasm" '/bench/w/...' \
    ',"max_instance_reuse":128'
serve_variant p3-shared "${ports[2]}" "$components/fetch_p3.wasm" '/bench/w/...' \
    ',"max_instance_reuse":10000,"max_instance_concurrency":100'
paths=("/bench/w/outbound?$target" "/bench/w/outbound?$target" "/bench/w/?$target")

# The most instances in use and the most linear memory they held while a
# run lasts: sampled from /metrics. Every sample is kept in
# results/instances-NAME-RUN.txt (seconds since the run started, instances
# in use, their linear memory in bytes).
declare -A peak_instances=() peak_memory=() sampled_runs=()
sampler=
bench_before_run() {
    local base=${1%%/bench/*} name i
    for i in "${!names[@]}"; do
        [ "$base" = "http://127.0.0.1:${ports[$i]}" ] && name=${names[$i]}
    done
    sampled_runs[$name]=$((${sampled_runs[$name]:-0} + 1))
    samples=$results/instances-$name-${sampled_runs[$name]}.txt
    : >"$samples"
    (started=$(date +%s.%N)
    while true; do
        curl -fsS "$base/metrics" 2>/dev/null |
            awk -v t="$(date +%s.%N)" -v s="$started" '
                /^wasmwiz_instances_in_use / {n = $2}
                /^wasmwiz_instance_memory_bytes / {m = $2}
                END {if (n != "") printf "%.1f %s %s\n", t - s, n, m}' >>"$samples" || true
        sleep 0.1
    done) &
    sampler=$!
}
bench_after_run() {
    local base=${1%%/bench/*} name peak memory i
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(awk '{print $2}' "$samples" | sort -g | tail -1)
    memory=$(awk '{print $3}' "$samples" | sort -g | tail -1)
    for i in "${!names[@]}"; do
        [ "$base" = "http://127.0.0.1:${ports[$i]}" ] && name=${names[$i]}
    done
    if [ "${peak:-0}" -gt "${peak_instances[$name]:-0}" ]; then
        peak_instances[$name]=$peak
    fi
    if [ "${memory:-0}" -gt "${peak_memory[$name]:-0}" ]; then
        peak_memory[$name]=$memory
    fi
}

runs=()
for i in "${!names[@]}"; do
    bench_wait_ready "http://127.0.0.1:${ports[$i]}${paths[$i]}"
    runs+=("${names[$i]}" "http://127.0.0.1:${ports[$i]}${paths[$i]}")
done
# The upstream (one Node.js process) resets a few of the thousands of
# connections a second it is sent: counted and shown, not fatal.
bench_allow_errors=1
bench_rounds "$rounds" "$threads" "$waiting" "$duration" "$results" "${runs[@]}"
bench_allow_errors=
unset -f bench_before_run bench_after_run

echo
echo "Part 1: a handler waiting 50 ms on an upstream, wrk -t$threads -c$waiting -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)"
echo
echo "| variant | requests/s | p99 ms | peak RSS MiB | peak instances in use | peak instance memory MiB | non-2xx / requests |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
declare -A rss=() imem=()
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    med[$name]=$(bench_median ${rps[$name]})
    # shellcheck disable=SC2086
    med99[$name]=$(bench_median ${p99[$name]})
    rss[$name]=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/${bench_pid_of[$name]}/status")
    # shellcheck disable=SC2086
    errors=$(printf '%s\n' ${bench_errors[$name]:-} | awk -F: '{b += $1; n += $2} END {printf "%d / %d", b, n}')
    imem[$name]=$(awk -v b="${peak_memory[$name]:-0}" 'BEGIN {printf "%.1f", b / 1048576}')
    echo "| $name | ${med[$name]} | ${med99[$name]} | ${rss[$name]} | ${peak_instances[$name]:-0} | ${imem[$name]} | $errors |"
done
echo
best=p2-fresh
if awk -v a="${med[p2-reuse]}" -v b="${med[p2-fresh]}" 'BEGIN { exit !(a > b) }'; then
    best=p2-reuse
fi
echo "p3-shared / $best (requests/s): $(bench_ratio "${med[p3-shared]}" "${med[$best]}")"
echo "p3-shared / $best (peak RSS):   $(bench_ratio "${rss[p3-shared]}" "${rss[$best]}")"
echo "p3-shared / $best (peak instance memory): $(bench_ratio "${imem[p3-shared]}" "${imem[$best]}")"
echo

for i in "${!names[@]}"; do
    kill "${bench_pid_of[${names[$i]}]}" 2>/dev/null || true
done
fi

# --- part 2: a CPU-only hello ---------------------------------------------

[ "$part" = 1 ] && exit 0

hello=$components/hello.wasm
hello_p3=$components/hello_p3.wasm
ports=(18431 18432 18433 18434 18435)
names=(wasmtime-p2-reuse wasmtime-p3 wasmwiz-p2-reuse wasmwiz-p3-fresh wasmwiz-p3-shared)
bench_start wasmtime-p2-reuse "$results/wasmtime-p2-reuse.log" \
    "$wasmtime" serve -Scli --max-instance-reuse-count 128 \
    --addr "127.0.0.1:${ports[0]}" "$hello"
bench_start wasmtime-p3 "$results/wasmtime-p3.log" \
    "$wasmtime" serve -Scli -Sp3 -Wcomponent-model-async \
    --addr "127.0.0.1:${ports[1]}" "$hello_p3"
bench_start wasmwiz-p2-reuse "$results/wasmwiz-p2-reuse.log" \
    "$bench_bin" run --max-instance-reuse 128 --addr "127.0.0.1:${ports[2]}" "$hello"
bench_start wasmwiz-p3-fresh "$results/wasmwiz-p3-fresh.log" \
    "$bench_bin" run --addr "127.0.0.1:${ports[3]}" "$hello_p3"
bench_start wasmwiz-p3-shared "$results/wasmwiz-p3-shared.log" \
    "$bench_bin" run --max-instance-reuse 128 --max-instance-concurrency 16 \
    --addr "127.0.0.1:${ports[4]}" "$hello_p3"
rps=() p50=() p99=() med=() med99=()
echo "Part 2: a CPU-only hello"
bench_servers_at /hello
echo "wasmwiz-p3-fresh / wasmtime-p3:  $(bench_ratio "${med[wasmwiz-p3-fresh]}" "${med[wasmtime-p3]}")"
echo "wasmwiz-p3-shared / wasmtime-p3: $(bench_ratio "${med[wasmwiz-p3-shared]}" "${med[wasmtime-p3]}")"
echo "wasmwiz-p2-reuse / wasmtime-p2-reuse: $(bench_ratio "${med[wasmwiz-p2-reuse]}" "${med[wasmtime-p2-reuse]}")"
