#!/usr/bin/env bash
# The headline benchmark: `hello` through `wasmwiz serve` with every feature
# on — routing among 1,000 deployed routes, a tenant whose quota is counted
# in Redis, Prometheus metrics and one access-log line per request — against
# `wasmtime serve -Scli` (wasmtime 48.x) and a native hyper server, with wrk
# on loopback, alternating, median of the rounds.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/serve.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [-n ROUTES]
                        [-R REUSE] [-L]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 20)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)
  -n ROUTES       routes deployed on wasmwiz serve (default 1000)
  -R REUSE        also measure instance reuse: one more route on the same
                  node deployed with max_instance_reuse REUSE, and a second
                  wasmtime serve with --max-instance-reuse-count REUSE
  -L              also measure the tenant log stream: two more wasmwiz
                  nodes with the same routes, one with TENANT_LOGS=false
                  and one logging every event (LOG_EVENTS_PER_SECOND far
                  above the request rate); the first node logs with the
                  shipped default (100 events a second per tenant)

Needs Redis on 127.0.0.1:6379 (or \$REDIS_URL). Builds the release binary,
the components, the native baseline and (once) wasmtime-cli 48.0.8. The
wasmwiz node runs on a fresh embedded store in a temporary folder; its log,
the raw wrk output and the final usage and metrics go to benches/results/.
USAGE
}

rounds=3 duration=20 connections=64 threads=2 count=1000 reuse=0 logs=0
bench_option() {
    case $1 in
        R) reuse=$2 ;;
        L) logs=1 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:n:R:L" "$@"
[[ $reuse =~ ^[0-9]+$ ]] || { echo "-R needs a number" >&2; exit 2; }

bench_setup serve wrk

redis_url=${REDIS_URL:-redis://127.0.0.1:6379}

bench_build_wasmwiz
wasmtime=$(bench_wasmtime)
native=$(bench_native)
hello=$bench_root/target/components/hello.wasm

ports=(18191 18192 18193 18191 18194)
names=(wasmwiz-serve wasmtime-serve native)
prefix=wwbench$$
export REDIS_URL=$redis_url REDIS_KEY_PREFIX=$prefix LOG_LEVEL=info PROMETHEUS_ENABLED=true
# (exported here: the setup runs in a subshell)
export WASMWIZ_DATA_DIR=$work/data
key=$(bench_serve_setup "$work/data")
bench_start wasmwiz-serve "$results/wasmwiz.log" \
    "$bench_bin" serve --addr "127.0.0.1:${ports[0]}"
bench_wait_ready "http://127.0.0.1:${ports[0]}/health"

url=http://127.0.0.1:${ports[0]}
echo "deploying hello on $count routes" >&2
target=$(bench_deploy_routes "$url" "$key" "$hello" "$count")
echo "wasmwiz serve: $count routes live, benchmarking $target" >&2

bench_start wasmtime-serve "$results/wasmtime.log" \
    "$wasmtime" serve -Scli --addr "127.0.0.1:${ports[1]}" "$hello"
bench_start native "$results/native.log" "$native" "127.0.0.1:${ports[2]}"
paths=("$target" /hello /hello)
contenders=(wasmwiz-serve wasmtime-serve native)
if [ "$reuse" -gt 1 ]; then
    # The same node, one more route: hello deployed with instance reuse.
    digest=$(curl -fsS -H "Authorization: Bearer $key" "$url/api/v1/components" |
        sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' | head -1)
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"/bench/reuse/...\",\"component\":\"$digest\",\"max_instance_reuse\":$reuse}" \
        "$url/api/v1/deployments"
    bench_pid_of[wasmwiz-serve-reuse]=${bench_pid_of[wasmwiz-serve]}
    bench_start wasmtime-serve-reuse "$results/wasmtime-reuse.log" \
        "$wasmtime" serve -Scli --max-instance-reuse-count "$reuse" \
        --addr "127.0.0.1:${ports[4]}" "$hello"
    paths+=(/bench/reuse/hello /hello)
    contenders+=(wasmwiz-serve-reuse wasmtime-serve-reuse)
    names+=(wasmwiz-serve-reuse wasmtime-serve-reuse)
fi
if [ "$logs" = 1 ]; then
    # Two more nodes, each on a store of its own with the same routes.
    for variant in nologs:18195:TENANT_LOGS=false alllogs:18196:LOG_EVENTS_PER_SECOND=100000000; do
        IFS=: read -r name port setting <<<"$variant"
        (
            export WASMWIZ_DATA_DIR=$work/data-$name
            other_key=$(bench_serve_setup "$WASMWIZ_DATA_DIR")
            env "$setting" "$bench_bin" serve --addr "127.0.0.1:$port" \
                >"$results/wasmwiz-$name.log" 2>&1 &
            echo $! >"$work/pid-$name"
            bench_wait_ready "http://127.0.0.1:$port/health"
            bench_deploy_routes "http://127.0.0.1:$port" "$other_key" "$hello" "$count" >/dev/null
        )
        bench_pids+=("$(cat "$work/pid-$name")")
        bench_pid_of[wasmwiz-serve-$name]=$(cat "$work/pid-$name")
        ports[${#contenders[@]}]=$port
        paths+=("$target")
        contenders+=("wasmwiz-serve-$name")
        names+=("wasmwiz-serve-$name")
    done
fi
for i in "${!contenders[@]}"; do
    bench_wait_ready "http://127.0.0.1:${ports[$i]}${paths[$i]}"
done

declare -A rps p50 p99 med med99
runs=()
for i in "${!contenders[@]}"; do
    runs+=("${contenders[$i]}" "http://127.0.0.1:${ports[$i]}${paths[$i]}")
done
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" "${runs[@]}"

# Evidence that every feature was on: the quota counted in Redis, the
# metrics, one log line per request.
curl -fsS -H "Authorization: Bearer $key" "$url/api/v1/usage" >"$results/usage.json"
curl -fsS "$url/metrics" >"$results/metrics.txt"
counted=$(sed -n 's/.*"day":{"limit":[0-9]*,"used":\([0-9]*\).*/\1/p' "$results/usage.json")
served=$(awk '/^wasmwiz_http_requests_total/ {s += $2} END {printf "%d", s}' "$results/metrics.txt")
logged=$(grep -c 'wasmwiz::access' "$results/wasmwiz.log" || true)

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median per server ($(nproc) cores, loopback)"
echo "wasmwiz serve: $count routes, quota in Redis (requests counted today: $counted), $served requests in its metrics, $logged log lines"
echo
bench_table "${names[@]}"
echo
echo "wasmwiz-serve / wasmtime-serve: $(bench_ratio "${med[wasmwiz-serve]}" "${med[wasmtime-serve]}") (p99 ${med99[wasmwiz-serve]} ms vs ${med99[wasmtime-serve]} ms)"
echo "wasmwiz-serve / native:         $(bench_ratio "${med[wasmwiz-serve]}" "${med[native]}")"
if [ "$reuse" -gt 1 ]; then
    echo "with instance reuse ($reuse requests per instance, both servers):"
    echo "wasmwiz-serve-reuse / wasmtime-serve-reuse: $(bench_ratio "${med[wasmwiz-serve-reuse]}" "${med[wasmtime-serve-reuse]}") (p99 ${med99[wasmwiz-serve-reuse]} ms vs ${med99[wasmtime-serve-reuse]} ms)"
    echo "wasmwiz-serve-reuse / wasmtime-serve:       $(bench_ratio "${med[wasmwiz-serve-reuse]}" "${med[wasmtime-serve]}")"
    echo "wasmwiz-serve-reuse / native:               $(bench_ratio "${med[wasmwiz-serve-reuse]}" "${med[native]}")"
    echo "reused instances (wasmwiz metrics): $(awk '/^wasmwiz_instances_reused_total / {print $2}' "$results/metrics.txt")"
fi
if [ "$logs" = 1 ]; then
    echo "tenant log stream (in Redis), against the node with it off:"
    echo "wasmwiz-serve (100 events/s logged) / wasmwiz-serve-nologs: $(bench_ratio "${med[wasmwiz-serve]}" "${med[wasmwiz-serve-nologs]}")"
    echo "wasmwiz-serve-alllogs (every event) / wasmwiz-serve-nologs: $(bench_ratio "${med[wasmwiz-serve-alllogs]}" "${med[wasmwiz-serve-nologs]}")"
    echo "events in the bench tenant's stream: $(redis-cli -u "$redis_url" --scan --pattern "$prefix:logs:*" | head -1 | xargs -r redis-cli -u "$redis_url" XLEN)"
fi
