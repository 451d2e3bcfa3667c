#!/usr/bin/env bash
# The cost of quota admission: `hello` through `wasmwiz serve` for a tenant
# on an `unlimited` tier (huge finite rates, so every request is counted in
# Redis) against the same server with quotas off, alternating in one run,
# median of the rounds.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/admission.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]

Needs Redis on \$REDIS_URL (default redis://127.0.0.1:6379). Uses the
embedded store; raw wrk output goes to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2
while getopts "r:d:c:t:h-:" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        d) duration=$OPTARG ;;
        c) connections=$OPTARG ;;
        t) threads=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
results=$bench_root/benches/results/admission-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"
bench_build_wasmwiz
bin=$bench_bin
hello=$bench_root/target/components/hello.wasm

names=(redis-quotas quotas-off)
ports=(18281 18282)
for i in 0 1; do
    dir=$results/data-${names[$i]}
    key=$(bench_serve_setup "$dir")
    if [ "$i" = 0 ]; then
        bench_start "${names[$i]}" "$results/${names[$i]}.log" env WASMWIZ_DATA_DIR="$dir" \
            REDIS_URL="$redis_url" REDIS_KEY_PREFIX="bench$$" "$bin" serve --addr "127.0.0.1:${ports[$i]}"
    else
        bench_start "${names[$i]}" "$results/${names[$i]}.log" env WASMWIZ_DATA_DIR="$dir" \
            QUOTAS_ENABLED=false "$bin" serve --addr "127.0.0.1:${ports[$i]}"
    fi
    bench_wait_ready "http://127.0.0.1:${ports[$i]}/health"
    bench_deploy "http://127.0.0.1:${ports[$i]}" "$key" "$hello" "/hello"
    bench_wait_ready "http://127.0.0.1:${ports[$i]}/hello"
done

declare -A rps p50 p99
for i in 0 1; do
    wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:${ports[$i]}/hello" >/dev/null
done
for round in $(seq 1 "$rounds"); do
    for i in 0 1; do
        name=${names[$i]}
        read -r r l50 l99 bad < <(bench_wrk "$results/$name-$round.txt" \
            -t"$threads" -c"$connections" -d"${duration}s" "http://127.0.0.1:${ports[$i]}/hello")
        [ "$bad" = 0 ] || { echo "$name: $bad non-2xx answers" >&2; exit 1; }
        rps[$name]+="$r "
        p50[$name]+="$l50 "
        p99[$name]+="$l99 "
        echo "round $round $name: $r req/s, p50 $l50 ms, p99 $l99 ms" >&2
    done
done

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)"
echo
echo "| server | requests/s | p50 ms | p99 ms |"
echo "| --- | ---: | ---: | ---: |"
declare -A med
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    med[$name]=$(bench_median ${rps[$name]})
    # shellcheck disable=SC2086
    echo "| $name | ${med[$name]} | $(bench_median ${p50[$name]}) | $(bench_median ${p99[$name]}) |"
done
echo
echo "with Redis quotas / quotas off: $(bench_ratio "${med[redis-quotas]}" "${med[quotas-off]}")"
