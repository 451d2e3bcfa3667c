#!/usr/bin/env bash
# Restores a backup made by backup.sh: verifies its checksum, recreates the
# database if it is gone, restores in a single transaction (all or nothing),
# then waits for the node at WASMWIZ_URL to report ready.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/restore.sh latest|FILE [-d DIR] [--no-ready-check] [--help]

  latest            the newest backup in DIR
  FILE              a .dump file made by backup.sh (its .sha256 must be beside it)
  -d DIR            backup folder (default: \$BACKUP_DIR or /opt/wasmwiz/backups)
  --no-ready-check  do not wait for /ready afterwards

Reads DATABASE_URL (or DATABASE_URL_FILE) and WASMWIZ_URL (default
http://localhost:8080).
USAGE
}

dir=${BACKUP_DIR:-/opt/wasmwiz/backups}
check_ready=true
target=
while [ $# -gt 0 ]; do
    case $1 in
        -d) dir=${2:?-d needs a folder}; shift 2 ;;
        --no-ready-check) check_ready=false; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
        *) target=$1; shift ;;
    esac
done
[ -n "$target" ] || { usage >&2; exit 2; }

if [ -z "${DATABASE_URL:-}" ] && [ -n "${DATABASE_URL_FILE:-}" ]; then
    DATABASE_URL=$(cat "$DATABASE_URL_FILE")
fi
: "${DATABASE_URL:?DATABASE_URL is not set}"

if [ "$target" = latest ]; then
    if [ ! -d "$dir" ]; then
        echo "no backup folder at $dir: pass -d DIR or set BACKUP_DIR to where backup.sh wrote" >&2
        exit 1
    fi
    target=$(find "$dir" -maxdepth 1 -type f -name 'wasmwiz-*.dump' | sort | tail -n 1)
    [ -n "$target" ] || { echo "no backup in $dir (backup.sh names them wasmwiz-*.dump)" >&2; exit 1; }
fi
[ -f "$target" ] || { echo "no such backup: $target" >&2; exit 1; }
[ -f "$target.sha256" ] || { echo "no checksum beside $target ($target.sha256)" >&2; exit 1; }

echo "verifying $target" >&2
(cd "$(dirname "$target")" && sha256sum --check --quiet "$(basename "$target").sha256") || {
    echo "checksum mismatch: $target is damaged; not restoring" >&2
    exit 1
}

# The database named in DATABASE_URL, and the maintenance database beside it.
base=${DATABASE_URL%%\?*}
query=
[ "$base" = "$DATABASE_URL" ] || query="?${DATABASE_URL#*\?}"
database=${base##*/}
maintenance=${base%/*}/postgres$query
exists=$(psql "$maintenance" -qAt -v ON_ERROR_STOP=1 \
    -c "SELECT 1 FROM pg_database WHERE datname = '$database'")
if [ "$exists" != 1 ]; then
    echo "creating database $database" >&2
    psql "$maintenance" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$database\""
fi

echo "restoring into $database (one transaction)" >&2
pg_restore --single-transaction --clean --if-exists --no-owner --exit-on-error \
    --dbname="$DATABASE_URL" "$target"

# Whether GET URL answers 200: with curl, or (in a database image without
# curl, such as the Compose backup service's) over bash's /dev/tcp.
answers_200() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS "$1" >/dev/null 2>&1
        return
    fi
    local rest=${1#http://} hostport path host port
    hostport=${rest%%/*}
    path=/${rest#*/}
    host=${hostport%:*}
    port=${hostport##*:}
    [ "$port" != "$hostport" ] || port=80
    # In a subshell: a connection refused ends it, not the script.
    (
        exec 3<>"/dev/tcp/$host/$port" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
        read -r _ status _ <&3 || exit 1
        [ "$status" = 200 ]
    ) 2>/dev/null
}

if [ "$check_ready" = true ]; then
    url=${WASMWIZ_URL:-http://localhost:8080}
    echo "waiting for $url/ready" >&2
    for _ in $(seq 1 60); do
        if answers_200 "$url/ready"; then
            echo "restored; $url is ready" >&2
            exit 0
        fi
        sleep 1
    done
    echo "restored, but $url/ready did not answer 200 within 60 s" >&2
    exit 1
fi
echo "restored" >&2
