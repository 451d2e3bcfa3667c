#!/usr/bin/env bash
# A load test of a WasmWiz node: /health, then a deployed route, a fixed
# number of requests each (h2load over HTTP/1.1), or a fixed duration with
# latency percentiles (wrk); prints a summary per endpoint.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/load_test.sh [-u URL] [-c CONNECTIONS] [-n REQUESTS | -d SECONDS] [-p PATH] [-t THREADS]

  -u URL          base URL of a node (default http://localhost:8080)
  -c CONNECTIONS  concurrent connections (default 50)
  -n REQUESTS     requests per endpoint (default 5000; uses h2load)
  -d SECONDS      run for a duration instead, with p50/p90/p99 (uses wrk)
  -p PATH         a deployed route to load besides /health (default /hello)
  -t THREADS      client threads (default 2)

Needs h2load (apt-get install nghttp2-client) for -n, wrk for -d.
USAGE
}

url=http://localhost:8080 connections=50 requests=5000 duration='' path=/hello threads=2
while getopts "u:c:n:d:p:t:h-:" opt; do
    case $opt in
        u) url=${OPTARG%/} ;;
        c) connections=$OPTARG ;;
        n) requests=$OPTARG ;;
        d) duration=$OPTARG ;;
        p) path=$OPTARG ;;
        t) threads=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[ "$connections" -ge "$threads" ] || threads=$connections

for endpoint in /health "$path"; do
    if [ -n "$duration" ]; then
        command -v wrk >/dev/null || { echo "wrk is required for -d (apt-get install wrk)" >&2; exit 1; }
        echo "== $url$endpoint: ${duration}s, $connections connections"
        wrk --latency -t"$threads" -c"$connections" -d"${duration}s" "$url$endpoint" \
            | awk '/Requests\/sec/ || /^ +(50|90|99)%/ || /Non-2xx/ || /Socket errors/ || / requests in /'
    else
        command -v h2load >/dev/null || { echo "h2load is required for -n (apt-get install nghttp2-client)" >&2; exit 1; }
        echo "== $url$endpoint: $requests requests, $connections connections"
        h2load --h1 -n "$requests" -c "$connections" -t "$threads" "$url$endpoint" \
            | awk '/^finished in/ || /^requests:/ || /^status codes:/ || /^time for request:/ || /min +max/'
    fi
done
