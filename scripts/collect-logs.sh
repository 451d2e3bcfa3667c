#!/usr/bin/env bash
# Collects what support needs to diagnose a WasmWiz node into a tarball on
# stdout: recent logs, the node's configuration with secrets redacted, a
# metrics and readiness snapshot, and versions.
#   ./scripts/collect-logs.sh > wasmwiz-debug-$(date +%Y%m%d).tar.gz
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<USAGE
Usage: scripts/collect-logs.sh [-u URL] [-m METRICS_URL] [-p PID] [-l LOGFILE] [-s SINCE] [-f COMPOSE_FILE] > debug.tar.gz

  -u URL           the node (default \$WASMWIZ_URL or http://localhost:8080)
  -m METRICS_URL   the node's metrics, which have a listener of their own
                   (default: from the node's METRICS_ADDR when its process is
                   found, else http://localhost:9100/metrics)
  -p PID           the node's process, whose environment is its configuration
                   (default: the \`wasmwiz serve\` process on this machine, if
                   there is exactly one)
  -l LOGFILE       a log file to include (repeatable); otherwise the logs come
                   from journalctl (unit wasmwiz) or the Compose stack
  -s SINCE         how far back logs go: 30m, 24h, 7d (default 24h); applies
                   to log files too (lines are kept from the first one at or
                   after that time)
  -f COMPOSE_FILE  the Compose file (default deploy/docker-compose.production.yml)

What was found and what was not is listed in summary.txt inside the tarball
and on stderr.
USAGE
}

url=${WASMWIZ_URL:-http://localhost:8080}
since=24h
pid=
metrics_url=
compose_file=$root/deploy/docker-compose.production.yml
logfiles=()
while getopts "u:m:p:l:s:f:h-:" opt; do
    case $opt in
        u) url=${OPTARG%/} ;;
        m) metrics_url=$OPTARG ;;
        p) pid=$OPTARG ;;
        l) logfiles+=("$OPTARG") ;;
        s) since=$OPTARG ;;
        f) compose_file=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
if [ -t 1 ]; then
    echo "refusing to write a tarball to a terminal; redirect stdout to a file" >&2
    exit 2
fi
case $since in
    *m) span="${since%m} minutes" ;;
    *h) span="${since%h} hours" ;;
    *d) span="${since%d} days" ;;
    *) echo "-s takes a span such as 30m, 24h or 7d, not \`$since\`" >&2; exit 2 ;;
esac
case ${span%% *} in ''|*[!0-9]*) echo "-s takes a span such as 30m, 24h or 7d" >&2; exit 2 ;; esac
cutoff=$(date -u -d "$span ago" +%Y-%m-%dT%H:%M:%S)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$work/wasmwiz-debug
mkdir -p "$out"
note() {
    echo "$*" >> "$out/summary.txt"
    echo "collect-logs: $*" >&2
}

redact() {
    sed -E \
        -e 's#^((API_SALT|[A-Z_]*PASSWORD[A-Z_]*|[A-Z_]*SECRET[A-Z_]*|[A-Z_]*TOKEN[A-Z_]*|WASMWIZ_API_KEY)=).*#\1<redacted>#' \
        -e 's#(://[^:/@]*:)[^@]*@#\1<redacted>@#g' \
        -e 's#(ww_)[A-Za-z0-9]{8,}#\1<redacted>#g'
}
wasmwiz_vars='^(DATABASE_URL|REDIS_|API_SALT|ENVIRONMENT|SERVER_|LOG_LEVEL|MAX_|EXECUTION_|MEMORY_|TLS_|PROMETHEUS_|METRICS_|WASMWIZ_|[A-Z]+_TIER_RATE_|INSTANCE_|POOL_|REUSE_|HEADER_|BODY_|SHUTDOWN_|COMPILE_|OUTBOUND_|QUOTAS_)'

# Configuration: the node's own environment (what it runs with), secrets
# redacted; a variable read from a file (X_FILE) is named, not read.
if [ -z "$pid" ]; then
    pids=$(pgrep -f '(^|/)wasmwiz serve( |$)' || true)
    if [ "$(printf '%s\n' "$pids" | grep -c .)" = 1 ]; then
        pid=$pids
    fi
fi
if [ -n "$pid" ] && [ -r "/proc/$pid/environ" ]; then
    tr '\0' '\n' < "/proc/$pid/environ" | grep -E "$wasmwiz_vars" | sort | redact > "$out/config.txt" || true
    tr '\0' ' ' < "/proc/$pid/cmdline" | redact > "$out/command-line.txt" || true
    note "configuration: the environment of process $pid ($(wc -l < "$out/config.txt") variables)"
elif command -v docker >/dev/null 2>&1 && [ -f "$compose_file" ] \
    && container=$(docker compose -f "$compose_file" ps -q wasmwiz 2>/dev/null | head -n 1) \
    && [ -n "$container" ]; then
    docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$container" \
        | grep -E "$wasmwiz_vars" | sort | redact > "$out/config.txt" || true
    note "configuration: the environment of container $container"
else
    note "configuration: no wasmwiz serve process found here (pass -p PID); config.txt is empty"
    : > "$out/config.txt"
fi

# Snapshots from the node.
if curl -fsS --max-time 10 "$url/ready" > "$out/ready.json" 2>&1; then
    note "readiness: $(cat "$out/ready.json")"
else
    note "readiness: $url/ready did not answer"
fi
if [ -z "$metrics_url" ]; then
    # The node's own METRICS_ADDR, when its environment says it.
    addr=$(sed -n 's/^METRICS_ADDR=//p' "$out/config.txt" 2>/dev/null | head -n 1)
    case $addr in
        ''|public|off) metrics_url=http://localhost:9100/metrics ;;
        0.0.0.0:*) metrics_url="http://127.0.0.1:${addr#0.0.0.0:}/metrics" ;;
        *) metrics_url="http://$addr/metrics" ;;
    esac
    [ "$addr" = public ] && metrics_url="$url/metrics"
fi
curl -fsS --max-time 10 "$metrics_url" > "$out/metrics.txt" 2>&1 \
    || note "metrics: $metrics_url did not answer (pass -m with the node's METRICS_ADDR)"

# Log lines from the cutoff on: each line starting with a timestamp (or a
# JSON line with one) decides; lines without one follow the line before.
since_cutoff() {
    awk -v cutoff="$cutoff" '
        {
            stamp = ""
            if (match($0, /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}/)) stamp = substr($0, RSTART, RLENGTH)
            else if (match($0, /"timestamp":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}/)) stamp = substr($0, RSTART + 13, 19)
            if (stamp != "") keep = (stamp >= cutoff)
            if (keep) print
        }'
}

# Logs.
if [ ${#logfiles[@]} -gt 0 ]; then
    for file in "${logfiles[@]}"; do
        copy=$out/log-$(basename "$file")
        since_cutoff < "$file" | redact > "$copy" || true
        note "log: $file, $(wc -l < "$copy") lines since $cutoff UTC"
    done
elif command -v journalctl >/dev/null 2>&1 \
    && journalctl -u wasmwiz --since "-$since" -q --no-pager -o cat -n 1 2>/dev/null | grep -q .; then
    journalctl -u wasmwiz --since "-$since" --no-pager | redact > "$out/journal.log" || true
    note "log: journalctl -u wasmwiz, $(wc -l < "$out/journal.log") lines"
elif command -v docker >/dev/null 2>&1 && [ -f "$compose_file" ] \
    && docker compose -f "$compose_file" ps -q wasmwiz 2>/dev/null | grep -q .; then
    docker compose -f "$compose_file" logs --since "$since" wasmwiz 2>&1 | redact > "$out/compose.log" || true
    note "log: docker compose -f $compose_file logs wasmwiz, $(wc -l < "$out/compose.log") lines"
else
    note "log: none found (no journal entries for unit wasmwiz, no Compose stack): pass -l LOGFILE"
fi

# Versions.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    for tool in wasmwiz psql redis-server nginx; do
        if command -v "$tool" >/dev/null 2>&1; then
            echo "$tool: $("$tool" --version 2>&1 | head -n 1)"
        fi
    done
} > "$out/versions.txt"

tar -czf - -C "$work" wasmwiz-debug
