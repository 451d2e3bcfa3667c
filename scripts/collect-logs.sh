#!/usr/bin/env bash
# Collects what support needs to diagnose a WasmWiz node into a tarball on
# stdout: recent logs, the configuration with secrets redacted, a metrics
# and readiness snapshot, and versions.
#   ./scripts/collect-logs.sh > wasmwiz-debug-$(date +%Y%m%d).tar.gz
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/collect-logs.sh [-u URL] [-l LOGFILE] [-s SINCE] > debug.tar.gz

  -u URL      the node (default \$WASMWIZ_URL or http://localhost:8080)
  -l LOGFILE  a log file to include (repeatable); otherwise the logs come
              from journalctl (unit wasmwiz) or docker compose, if present
  -s SINCE    how far back logs go (default 24h)
USAGE
}

url=${WASMWIZ_URL:-http://localhost:8080}
since=24h
logfiles=()
while getopts "u:l:s:h-:" opt; do
    case $opt in
        u) url=${OPTARG%/} ;;
        l) logfiles+=("$OPTARG") ;;
        s) since=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
if [ -t 1 ]; then
    echo "refusing to write a tarball to a terminal; redirect stdout to a file" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$work/wasmwiz-debug
mkdir -p "$out"

# Configuration: every variable WasmWiz reads, secrets redacted.
redact() {
    sed -E \
        -e 's#^((API_SALT|[A-Z_]*PASSWORD[A-Z_]*|[A-Z_]*SECRET[A-Z_]*|[A-Z_]*TOKEN[A-Z_]*|WASMWIZ_API_KEY)=).*#\1<redacted>#' \
        -e 's#(://[^:/@]*:)[^@]*@#\1<redacted>@#g' \
        -e 's#(ww_)[A-Za-z0-9]{8,}#\1<redacted>#g'
}
env | grep -E '^(DATABASE_URL|REDIS_|API_SALT|ENVIRONMENT|SERVER_|LOG_LEVEL|MAX_|EXECUTION_|MEMORY_|TLS_|PROMETHEUS_|METRICS_|WASMWIZ_|[A-Z]+_TIER_RATE_|INSTANCE_|HEADER_|BODY_|SHUTDOWN_|COMPILE_|OUTBOUND_|QUOTAS_)' \
    | sort | redact > "$out/config.txt" || true

# Snapshots from the node.
curl -fsS --max-time 10 "$url/ready" > "$out/ready.json" 2>&1 || echo "unreachable: $url/ready" > "$out/ready.json"
curl -fsS --max-time 10 "$url/metrics" > "$out/metrics.txt" 2>&1 || echo "unreachable: $url/metrics" > "$out/metrics.txt"

# Logs.
if [ ${#logfiles[@]} -gt 0 ]; then
    for file in "${logfiles[@]}"; do
        copy=$out/log-$(basename "$file")
        redact < "$file" > "$copy" || true
    done
elif command -v journalctl >/dev/null 2>&1 && journalctl -u wasmwiz --since "-$since" -n 1 >/dev/null 2>&1; then
    journalctl -u wasmwiz --since "-$since" --no-pager | redact > "$out/journal.log" || true
elif command -v docker >/dev/null 2>&1 && docker compose ps >/dev/null 2>&1; then
    docker compose logs --since "$since" wasmwiz 2>&1 | redact > "$out/compose.log" || true
else
    echo "no log source found: pass -l LOGFILE" > "$out/logs-missing.txt"
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
