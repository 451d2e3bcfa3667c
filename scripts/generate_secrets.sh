#!/usr/bin/env bash
# Generates the secrets a production installation needs, one file each,
# readable by the owner only (mode 0600, in a 0700 folder). Never overwrites
# an existing secret unless --force is given: replacing API_SALT invalidates
# every API key, replacing the secrets key leaves every stored secret
# unreadable (rotate with SECRETS_KEY_PREVIOUS instead: OPERATIONS.md),
# replacing the database password locks the nodes out.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/generate_secrets.sh [-d DIR] [--force] [--help]

Writes into DIR (default: ./secrets):
  api_salt                 API_SALT (64 hex characters)
  secrets_key              SECRETS_KEY (32 random bytes in hex): seals deployments' secrets at rest
  postgres_password        the PostgreSQL password of user wasmwiz
  database_url             DATABASE_URL for the nodes (postgresql://wasmwiz:...@postgres:5432/wasmwiz)
  redis_password           the Redis password
  redis_url                REDIS_URL for the nodes (redis://:...@redis:6379)
  grafana_admin_password   Grafana's admin password

  -d DIR     where to write (created with mode 0700)
  --force    replace secrets that already exist
USAGE
}

dir=secrets
force=false
while [ $# -gt 0 ]; do
    case $1 in
        -d) dir=${2:?-d needs a folder}; shift 2 ;;
        --force) force=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# Random hex from the kernel's CSPRNG: N bytes -> 2N characters.
random_hex() {
    od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'
}

umask 077
mkdir -p "$dir"
chmod 700 "$dir"

# write NAME VALUE: creates DIR/NAME (0600) unless it exists.
write() {
    local path=$dir/$1
    if [ -e "$path" ] && [ "$force" != true ]; then
        echo "kept     $path (exists; --force to replace)"
        return
    fi
    printf '%s' "$2" > "$path.tmp"
    chmod 600 "$path.tmp"
    mv "$path.tmp" "$path"
    echo "created  $path"
}

write api_salt "$(random_hex 32)"
write secrets_key "$(random_hex 32)"
write postgres_password "$(random_hex 24)"
write redis_password "$(random_hex 24)"
write grafana_admin_password "$(random_hex 16)"
# Derived from the files as they are now (kept or new).
write database_url "postgresql://wasmwiz:$(cat "$dir/postgres_password")@postgres:5432/wasmwiz"
write redis_url "redis://:$(cat "$dir/redis_password")@redis:6379"
