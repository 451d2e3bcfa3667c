#!/usr/bin/env bash
# A load test of a WasmWiz node with wrk: /health, then a deployed route,
# a fixed number of requests each, and a summary of throughput, latency and
# errors.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/load_test.sh [-u URL] [-c CONNECTIONS] [-n REQUESTS] [-p PATH] [-t THREADS]

  -u URL          base URL of a node (default http://localhost:8080)
  -c CONNECTIONS  concurrent connections (default 50)
  -n REQUESTS     requests per endpoint (default 5000)
  -p PATH         a deployed route to load besides /health (default /hello)
  -t THREADS      wrk threads (default 2)
USAGE
}

url=http://localhost:8080 connections=50 requests=5000 path=/hello threads=2
while getopts "u:c:n:p:t:h-:" opt; do
    case $opt in
        u) url=${OPTARG%/} ;;
        c) connections=$OPTARG ;;
        n) requests=$OPTARG ;;
        p) path=$OPTARG ;;
        t) threads=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
[ "$connections" -ge "$threads" ] || threads=$connections

# wrk runs for a duration; this script stops each thread after its share
# of REQUESTS answers and counts non-2xx answers.
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<LUA
local per_thread = math.ceil($requests / $threads)
local threads = {}
function setup(thread)
    table.insert(threads, thread)
end
function init(args)
    answered = 0
    bad = 0
end
function response(status, headers, body)
    answered = answered + 1
    if status < 200 or status > 299 then bad = bad + 1 end
    if answered >= per_thread then wrk.thread:stop() end
end
function done(summary, latency, requests)
    local bad_total = 0
    for _, thread in ipairs(threads) do bad_total = bad_total + thread:get("bad") end
    io.write(string.format("requests: %d in %.2f s (%.0f/s)\n", summary.requests,
        summary.duration / 1e6, summary.requests / (summary.duration / 1e6)))
    io.write(string.format("latency: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms\n",
        latency:percentile(50) / 1000, latency:percentile(95) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000))
    io.write(string.format("errors: %d non-2xx, %d connect, %d read, %d timeout\n", bad_total,
        summary.errors.connect, summary.errors.read, summary.errors.timeout))
end
LUA

for endpoint in /health "$path"; do
    echo "== $url$endpoint: $requests requests, $connections connections"
    wrk -t"$threads" -c"$connections" -d600s -s "$script" "$url$endpoint" | sed -n '/^requests:/,$p'
done
