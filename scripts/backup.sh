#!/usr/bin/env bash
# Backs up the WasmWiz database (everything: tenants, keys, component bytes,
# deployments, usage) with `pg_dump -Fc`, writes a SHA-256 checksum beside
# it, and deletes backups older than the retention period.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/backup.sh [-d DIR] [-k DAYS] [--help]

  -d DIR    backup folder (default: \$BACKUP_DIR or /opt/wasmwiz/backups)
  -k DAYS   keep backups this many days (default: \$BACKUP_RETENTION_DAYS or 7)

Reads DATABASE_URL (or DATABASE_URL_FILE). Prints the path of the new
backup. For a daily backup, add to crontab:
  0 2 * * * /opt/wasmwiz/scripts/backup.sh
USAGE
}

dir=${BACKUP_DIR:-/opt/wasmwiz/backups}
keep=${BACKUP_RETENTION_DAYS:-7}
while [ $# -gt 0 ]; do
    case $1 in
        -d) dir=${2:?-d needs a folder}; shift 2 ;;
        -k) keep=${2:?-k needs a number of days}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -z "${DATABASE_URL:-}" ] && [ -n "${DATABASE_URL_FILE:-}" ]; then
    DATABASE_URL=$(cat "$DATABASE_URL_FILE")
fi
: "${DATABASE_URL:?DATABASE_URL is not set (the embedded SQLite store is backed up by copying WASMWIZ_DATA_DIR/wasmwiz.db while wasmwiz is stopped)}"
case $keep in ''|*[!0-9]*) echo "-k must be a number of days" >&2; exit 2 ;; esac

umask 077
mkdir -p "$dir"
name=wasmwiz-$(date -u +%Y%m%dT%H%M%SZ).dump
tmp=$dir/.$name.partial
trap 'rm -f "$tmp"' EXIT
pg_dump --format=custom --no-owner --file="$tmp" "$DATABASE_URL"
mv "$tmp" "$dir/$name"
(cd "$dir" && sha256sum "$name" > "$name.sha256")

# Retention: backups (and their checksums) older than KEEP days.
find "$dir" -maxdepth 1 -type f \( -name 'wasmwiz-*.dump' -o -name 'wasmwiz-*.dump.sha256' \) \
    -mtime +"$keep" -print -delete | sed 's/^/removed old backup /' >&2

echo "$dir/$name"
