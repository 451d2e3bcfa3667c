#!/usr/bin/env bash
# A load test of a WasmWiz node: /health, then a deployed route, a fixed
# number of requests each (h2load over HTTP/1.1), or a fixed duration with
# latency percentiles (wrk); prints a summary per endpoint, with quota
# refusals (429) told apart from errors.
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

Needs h2load (Debian/Ubuntu: apt-get install nghttp2-client) for -n, wrk
(apt-get install wrk) for -d. Exit status: 0 when every answer was 2xx;
3 when the only other answers were 429 (the tenant's quota: load-test a
tenant on a tier whose rates allow the load); 1 for any other answer
(404: PATH is not deployed; 5xx) or a failed request.
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

# The tool this run needs, or how to get it.
if [ -n "$duration" ]; then
    tool=wrk package=wrk
else
    tool=h2load package=nghttp2-client
fi
if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$tool is needed for this run and is not installed." >&2
    echo "Install it (Debian/Ubuntu: sudo apt-get install $package), or use" >&2
    if [ "$tool" = wrk ]; then
        echo "-n REQUESTS, which uses h2load instead." >&2
    else
        echo "-d SECONDS, which uses wrk instead." >&2
    fi
    exit 1
fi

lua=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/status-counts.lua
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
verdict=0

# Sums `CODE COUNT` lines on stdin into a summary line; sets `verdict`.
summarize() {
    local ok=0 quota=0 other=0 server=0 code count
    while read -r code count; do
        case $code in
            2??) ok=$((ok + count)) ;;
            429) quota=$((quota + count)) ;;
            5??) server=$((server + count)) ;;
            *) other=$((other + count)) ;;
        esac
    done
    echo "answers: $ok 2xx, $quota 429 (quota refusals), $other other 4xx, $server 5xx, $1 failed"
    if [ "$quota" -gt 0 ]; then
        echo "  429: the tenant's request quota was used up; its tier's rates cap this load"
    fi
    if [ "$other" -gt 0 ]; then
        echo "  other 4xx: is $path deployed on $url? (404 when it is not)"
    fi
    if [ "$server" -gt 0 ] || [ "$other" -gt 0 ] || [ "$1" -gt 0 ]; then
        verdict=1
    elif [ "$quota" -gt 0 ] && [ "$verdict" = 0 ]; then
        verdict=3
    fi
}

for endpoint in /health "$path"; do
    # `CODE COUNT` lines, and the requests that got no answer at all.
    if [ -n "$duration" ]; then
        echo "== $url$endpoint: ${duration}s, $connections connections"
        wrk --latency -s "$lua" -t"$threads" -c"$connections" -d"${duration}s" "$url$endpoint" \
            > "$work/out"
        awk '/Requests\/sec/ || /^ +(50|90|99)%/ || /Socket errors/ || / requests in /' "$work/out"
        sed -n 's/^status \([0-9]*\): \([0-9]*\)$/\1 \2/p' "$work/out" > "$work/counts"
        failed=$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$work/out")
    else
        echo "== $url$endpoint: $requests requests, $connections connections"
        rm -f "$work/log"
        h2load --h1 -n "$requests" -c "$connections" -t "$threads" \
            --log-file="$work/log" "$url$endpoint" > "$work/out"
        awk '/^finished in/ || /^requests:/ || /^status codes:/ || /^time for request:/ || /min +max/' "$work/out"
        cut -f 2 "$work/log" | sort | uniq -c | awk '{ print $2, $1 }' > "$work/counts"
        # h2load counts non-2xx answers as failed too: only errors and
        # timeouts got no answer.
        failed=$(awk '/^requests:/ { n = 0; for (i = 2; i <= NF; i++) if ($(i + 1) ~ /^(errored|timeout),?$/) n += $i; print n }' "$work/out")
    fi
    summarize "${failed:-0}" < "$work/counts"
done
exit "$verdict"
