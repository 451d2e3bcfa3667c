#!/usr/bin/env bash
# Queues under load, and what a backlog costs other tenants: one node with
# Redis; tenant `noisy` publishes COUNT messages to a queue consumed by
# examples/jobs, and tenant `bench` is measured with wrk on `hello` before
# (alone) and while the backlog drains. Prints the publish rate, the drain
# rate, and bench's p99 in both phases.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/triggers.sh [-n COUNT] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]

  -n COUNT   messages to publish (default 100000)
  -d SECONDS each wrk run of the other tenant (default 10)

Needs Redis on \$REDIS_URL (default redis://127.0.0.1:6379), wrk and h2load
(nghttp2-client). Uses the embedded store; raw output goes to
benches/results/.
USAGE
}

count=100000 duration=10 connections=32 threads=2 rounds=1
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "n:d:c:t:" "$@"

bench_setup triggers wrk h2load

redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
bench_build_wasmwiz
bin=$bench_bin
hello=$bench_root/target/components/hello.wasm
jobs=$bench_root/target/components/jobs.wasm
[ -f "$jobs" ] || { echo "$jobs is missing: run scripts/build-examples.sh" >&2; exit 1; }
port=18291
url=http://127.0.0.1:$port
dir=$results/data

export WASMWIZ_DATA_DIR=$dir
key=$(bench_serve_setup "$dir")
"$bin" admin tier set noisy --per-minute unlimited --per-day unlimited \
    --max-publishes-per-second 1000000 --max-queue-backlog 10000000 \
    --kv-writes-per-second 1000000000 --kv-max-keys 100000000 >/dev/null
"$bin" admin tenant create noisy --tier noisy >/dev/null
noisy_key=$("$bin" admin key create noisy)

bench_start wasmwiz "$results/wasmwiz.log" env WASMWIZ_DATA_DIR="$dir" \
    REDIS_URL="$redis_url" REDIS_KEY_PREFIX="benchq$$" "$bin" serve --addr "127.0.0.1:$port"
bench_wait_ready "$url/health"
bench_deploy "$url" "$key" "$hello" "/bench/hello"
bench_wait_ready "$url/bench/hello"
bench_deploy "$url" "$noisy_key" "$jobs" "/noisy/jobs/..."
bench_wait_ready "$url/noisy/jobs/stats"
deployment=$(curl -fsS -H "Authorization: Bearer $noisy_key" "$url/api/v1/deployments" |
    sed -n 's/.*"id":"\(dep_[0-9A-Za-z]*\)".*/\1/p' | head -1)
curl -fsS -o /dev/null -H "Authorization: Bearer $noisy_key" -H 'content-type: application/json' \
    -d "{\"name\":\"backlog\",\"deployment\":\"$deployment\",\"path\":\"/noisy/jobs/consume\"}" \
    "$url/api/v1/queues"

waiting() {
    curl -fsS -H "Authorization: Bearer $noisy_key" "$url/api/v1/queues" |
        sed -n 's/.*"waiting":\([0-9]*\).*/\1/p'
}
consumed() {
    curl -fsS "$url/noisy/jobs/stats" | sed -n 's/.*"messages":\([0-9]*\).*/\1/p'
}

# bench alone.
wrk -t"$threads" -c"$connections" -d2s "$url/bench/hello" >/dev/null
read -r alone_rps _ alone_p99 _ _ < <(bench_wrk "$results/alone.txt" \
    -t"$threads" -c"$connections" -d"${duration}s" "$url/bench/hello")

# noisy publishes its backlog (the consumer starts draining meanwhile).
printf 'order' >"$work/message"
started=$(bench_now_ms)
h2load --h1 -n "$count" -c 16 -d "$work/message" -H "authorization: Bearer $noisy_key" \
    -H 'content-type: text/plain' "$url/api/v1/queues/backlog/messages" >"$results/publish.txt" 2>&1
published_ms=$(($(bench_now_ms) - started))
accepted=$(awk '/status codes:/ {print $3}' "$results/publish.txt")

# bench while the backlog drains.
left_before=$(waiting)
read -r busy_rps _ busy_p99 _ _ < <(bench_wrk "$results/busy.txt" \
    -t"$threads" -c"$connections" -d"${duration}s" "$url/bench/hello")
left_after=$(waiting)

# Drain the rest, and time the whole delivery.
while [ "$(consumed)" -lt "$accepted" ]; do
    sleep 0.5
done
drained_ms=$(($(bench_now_ms) - started))

echo
echo "$(nproc) cores, loopback; one node, queues in Redis; $count messages published with h2load --h1 -c16"
echo
printf '| | figure |\n| --- | ---: |\n'
printf '| messages accepted (202) | %s |\n' "$accepted"
printf '| publish rate | %s/s |\n' "$(awk -v n="$accepted" -v ms="$published_ms" 'BEGIN {printf "%.0f", n / ms * 1000}')"
printf '| drain: all consumed after | %.1f s (%s/s) |\n' "$(awk -v ms="$drained_ms" 'BEGIN {print ms / 1000}')" \
    "$(awk -v n="$accepted" -v ms="$drained_ms" 'BEGIN {printf "%.0f", n / ms * 1000}')"
printf '| backlog during the busy run | %s -> %s |\n' "$left_before" "$left_after"
printf '| other tenant alone: rps, p99 | %s, %s ms |\n' "$alone_rps" "$alone_p99"
printf '| other tenant beside the backlog: rps, p99 | %s, %s ms |\n' "$busy_rps" "$busy_p99"
printf '| p99 beside / alone | %s |\n' "$(bench_ratio "$busy_p99" "$alone_p99")"
