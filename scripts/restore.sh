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
    target=$(find "$dir" -maxdepth 1 -type f -name 'wasmwiz-*.dump' | sort | tail -n 1)
    [ -n "$target" ] || { echo "no backup in $dir" >&2; exit 1; }
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

if [ "$check_ready" = true ]; then
    url=${WASMWIZ_URL:-http://localhost:8080}
    echo "waiting for $url/ready" >&2
    for _ in $(seq 1 60); do
        if curl -fsS "$url/ready" >/dev/null 2>&1; then
            echo "restored; $url is ready" >&2
            exit 0
        fi
        sleep 1
    done
    echo "restored, but $url/ready did not answer 200 within 60 s" >&2
    exit 1
fi
echo "restored" >&2
