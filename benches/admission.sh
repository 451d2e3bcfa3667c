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
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:" "$@"

bench_setup admission wrk

redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
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
    bench_deploy "http://127.0.0.1:${ports[$i]}" "$key" "$hello" "/bench/hello"
    bench_wait_ready "http://127.0.0.1:${ports[$i]}/bench/hello"
done

declare -A rps p50 p99 med med99
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" \
    "${names[0]}" "http://127.0.0.1:${ports[0]}/bench/hello" \
    "${names[1]}" "http://127.0.0.1:${ports[1]}/bench/hello"

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)"
echo
bench_table "${names[@]}"
echo
echo "with Redis quotas / quotas off: $(bench_ratio "${med[redis-quotas]}" "${med[quotas-off]}")"
