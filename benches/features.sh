#!/usr/bin/env bash
# What each serving feature costs: `hello` through `wasmwiz serve` with every
# feature on (as in serve.sh) against the same server with one feature taken
# away at a time, with all of them taken away, and `wasmwiz run`, alternating
# in one run. Reports requests/s, each server's CPU time per request, and
# what the access log and the Redis quota did (lines written, calls made).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/features.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [-n ROUTES]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)
  -n ROUTES       routes deployed where a server has "many routes" (default 1000)

The servers (all wasmwiz serve on an embedded store of its own, but the last):
  every-feature   ROUTES routes, quota counted in Redis, access log (info)
  no-access-log   the same with LOG_LEVEL=warn
  no-quota        the same with QUOTAS_ENABLED=false
  one-route       the same with one route deployed
  no-feature      one route, quotas off, LOG_LEVEL=warn
  run             wasmwiz run hello.wasm, LOG_LEVEL=warn (no store, no API)
Metrics are recorded by every one of them (there is no switch for that).
Needs Redis on 127.0.0.1:6379 (or \$REDIS_URL). Logs and raw wrk output go
to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2 count=1000
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:n:" "$@"

bench_setup features wrk

redis_url=${REDIS_URL:-redis://127.0.0.1:6379}

bench_build_wasmwiz
hello=$bench_root/target/components/hello.wasm

names=(every-feature no-access-log no-quota one-route no-feature run)
declare -A port=() env_of=() routes_of=() path=()
i=0
for name in "${names[@]}"; do
    port[$name]=$((18301 + i))
    i=$((i + 1))
done
quota="REDIS_URL=$redis_url"
env_of[every-feature]="$quota LOG_LEVEL=info"
env_of[no-access-log]="$quota LOG_LEVEL=warn"
env_of[no-quota]="QUOTAS_ENABLED=false LOG_LEVEL=info"
env_of[one-route]="$quota LOG_LEVEL=info"
env_of[no-feature]="QUOTAS_ENABLED=false LOG_LEVEL=warn"
routes_of[every-feature]=$count routes_of[no-access-log]=$count routes_of[no-quota]=$count
routes_of[one-route]=1 routes_of[no-feature]=1

for name in "${names[@]}"; do
    url=http://127.0.0.1:${port[$name]}
    if [ "$name" = run ]; then
        bench_start run "$results/run.log" env LOG_LEVEL=warn \
            "$bench_bin" run --addr "127.0.0.1:${port[run]}" "$hello"
        path[run]=/hello
        bench_wait_ready "$url/hello"
        continue
    fi
    dir=$work/data-$name
    key=$(bench_serve_setup "$dir")
    # (word splitting of the server's settings is wanted here)
    # shellcheck disable=SC2086
    bench_start "$name" "$results/$name.log" env WASMWIZ_DATA_DIR="$dir" \
        REDIS_KEY_PREFIX="wwfeatures$$-$name" ${env_of[$name]} \
        "$bench_bin" serve --addr "127.0.0.1:${port[$name]}"
    bench_wait_ready "$url/health"
    echo "$name: deploying hello on ${routes_of[$name]} routes" >&2
    path[$name]=$(bench_deploy_routes "$url" "$key" "$hello" "${routes_of[$name]}")
done

declare -A rps p50 p99 med med99
args=()
for name in "${names[@]}"; do
    args+=("$name" "http://127.0.0.1:${port[$name]}${path[$name]}")
done
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" "${args[@]}"

# Evidence: the servers with an access log wrote one line per request, the
# ones with quotas counted them in Redis (about one call per lease).
for name in "${names[@]}"; do
    [ "$name" = run ] && continue
    lines=$(grep -c 'wasmwiz::access' "$results/$name.log" || true)
    curl -fsS "http://127.0.0.1:${port[$name]}/metrics" >"$results/$name-metrics.txt"
    served=$(awk '/^wasmwiz_http_requests_total/ {s += $2} END {printf "%d", s}' \
        "$results/$name-metrics.txt")
    calls=$(awk '/^wasmwiz_quota_redis_calls_total / {print $2}' "$results/$name-metrics.txt")
    echo "$name: $served requests, $lines access-log lines, ${calls:-no} Redis quota calls" >&2
done

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median per server ($(nproc) cores, loopback)"
echo
bench_table "${names[@]}"
echo
for name in "${names[@]:1}"; do
    echo "$name / every-feature: $(bench_ratio "${med[$name]}" "${med[every-feature]}") requests/s"
done
