#!/usr/bin/env bash
# Scale per node: N distinct components (default 1,000), each deployed on a
# route of its own, on one `wasmwiz serve` node. Measures the time a
# restarted node takes to be ready from its compiled-code cache, its idle
# RSS, and throughput invoking all N routes round-robin against invoking one.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/scale.sh [-n COMPONENTS] [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]

  -n COMPONENTS   distinct components deployed (default 1000)
  -r ROUNDS       wrk rounds, one-route and round-robin alternating (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)

Each component is hello.wasm with a custom section of its own (a new
digest, compiled separately). Targets: ready within 5 s after a restart,
idle RSS under 1 GiB, round-robin throughput within 20% of one route.
USAGE
}

count=1000 rounds=3 duration=10 connections=64 threads=2
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "n:r:d:c:t:" "$@"

bench_setup scale wrk

bench_build_wasmwiz
hello=$bench_root/target/components/hello.wasm
port=18211
url=http://127.0.0.1:$port
unset REDIS_URL DATABASE_URL
# (exported here: the setup runs in a subshell)
export WASMWIZ_DATA_DIR=$work/data
key=$(bench_serve_setup "$work/data")

rss_mib() {
    awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}

wait_ready() {
    for _ in $(seq 1 6000); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" = 200 ] && return 0
        sleep 0.01
    done
    echo "$url/ready never answered 200" >&2
    return 1
}

bench_start wasmwiz-serve "$results/first.log" "$bench_bin" serve --addr "127.0.0.1:$port"
first_pid=${bench_pids[-1]}
wait_ready

echo "uploading and deploying $count distinct components (each compiled once)" >&2
started=$(bench_now_ms)
deploy_one() {
    local i=$1 file digest
    file=$work/c$i.wasm
    bench_variant "$hello" "$file" "scale-$i-$$"
    digest=$(curl -fsS -H "Authorization: Bearer $key" --data-binary "@$file" \
        "$url/api/v1/components?name=c$i" | sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"/bench/c$i/...\",\"component\":\"$digest\"}" "$url/api/v1/deployments"
    rm -f "$file"
}
export -f deploy_one bench_variant
export work hello key url
seq -f '%04g' 1 "$count" | xargs -P2 -I{} bash -c 'deploy_one {}'
deploy_s=$(awk -v ms=$(($(bench_now_ms) - started)) 'BEGIN {printf "%.1f", ms / 1000}')
live=$(curl -fsS "$url/metrics" | awk '/^wasmwiz_deployments_live / {print $2}')
[ "$live" = "$count" ] || { echo "expected $count live routes, found $live" >&2; exit 1; }
sleep 2
rss_deployed=$(rss_mib "$first_pid")

echo "restarting the node" >&2
kill -TERM "$first_pid"
wait "$first_pid" 2>/dev/null || true
restart_at=$(bench_now_ms)
bench_start wasmwiz-serve "$results/restart.log" "$bench_bin" serve --addr "127.0.0.1:$port"
pid=${bench_pids[-1]}
wait_ready
ready_ms=$(($(bench_now_ms) - restart_at))
sleep 2
rss_idle=$(rss_mib "$pid")

# Both modes go through the same Lua request function over a table of
# pre-formatted requests, so wrk does the same work per request in each and
# only the server's side differs: round-robin cycles through all the routes
# (each wrk thread from a random start), one-route repeats the first.
write_lua() {
    local file=$1 path=$2
    cat >"$file" <<LUA
local requests, n, i = {}, $count, 0
function init(args)
  for k = 1, n do
    requests[k] = wrk.format("GET", string.format("$path", k))
  end
  i = math.random(0, n - 1)
end
function request()
  i = i % n + 1
  return requests[i]
end
LUA
}
write_lua "$work/round-robin.lua" "/bench/c%04d/hello"
write_lua "$work/one-route.lua" "/bench/c0001/hello"

declare -A rps p99
modes=(one-route round-robin)
wrk -t"$threads" -c"$connections" -d2s -s "$work/round-robin.lua" "$url" >/dev/null
for round in $(seq 1 "$rounds"); do
    for mode in "${modes[@]}"; do
        args=(-t"$threads" -c"$connections" -d"${duration}s" -s "$work/$mode.lua" "$url")
        read -r r _ l99 bad _ < <(bench_wrk "$results/$mode-$round.txt" "${args[@]}")
        [ "$bad" = 0 ] || { echo "$mode: $bad non-2xx answers" >&2; exit 1; }
        rps[$mode]+="$r "
        p99[$mode]+="$l99 "
        echo "round $round $mode: $r req/s, p99 $l99 ms" >&2
    done
done
rss_after=$(rss_mib "$pid")

echo
echo "$count distinct components on one node ($(nproc) cores)"
echo
echo "| measure | value | target |"
echo "| --- | ---: | ---: |"
echo "| upload + compile + deploy, all of them | ${deploy_s} s | |"
echo "| RSS after deploying them | ${rss_deployed} MiB | |"
echo "| restart to /ready 200 (compiled-code cache) | ${ready_ms} ms | 5000 ms |"
echo "| idle RSS after the restart | ${rss_idle} MiB | 1024 MiB |"
echo "| RSS after the wrk runs | ${rss_after} MiB | |"
for mode in "${modes[@]}"; do
    # shellcheck disable=SC2086
    echo "| $mode requests/s (p99 ms) | $(bench_median ${rps[$mode]}) ($(bench_median ${p99[$mode]})) | |"
done
# shellcheck disable=SC2086
one=$(bench_median ${rps[one-route]})
# shellcheck disable=SC2086
all=$(bench_median ${rps[round-robin]})
echo
echo "round-robin / one route: $(bench_ratio "$all" "$one") (target: at least 0.80)"
# (Read now: the log thread writes in batches, a little after the fact.)
echo "restart: $(grep -m1 'deployments loaded' "$results/restart.log" || true)"
