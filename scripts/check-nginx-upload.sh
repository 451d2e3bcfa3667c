#!/usr/bin/env bash
# Checks that an upload of a 20 MiB component goes through the Compose stack's
# nginx configuration (deploy/nginx) to a WasmWiz node: nginx must pass the
# body on, not refuse it with its own 413. Runs nginx without root, in the
# foreground, from a temporary copy whose upstream is the node given, on a
# free loopback port; posts the file; prints the HTTP status it got.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: WASMWIZ_UPSTREAM=127.0.0.1:PORT WASMWIZ_API_KEY=KEY scripts/check-nginx-upload.sh
       scripts/check-nginx-upload.sh --dummy-upstream

Starts nginx with deploy/nginx's configuration (upstream rewritten to
WASMWIZ_UPSTREAM, a running \`wasmwiz serve\` the caller started; TLS left
out so that plain HTTP reaches the tenants' server block), then
  curl --data-binary @<20 MiB of random bytes> -H 'Content-Type: application/wasm' \\
       -H "Authorization: Bearer \$WASMWIZ_API_KEY" http://127.0.0.1:NGINXPORT/api/v1/components?name=big
and prints the HTTP status on stdout (details on stderr). Random bytes are
not a component, so a node answers 400 or 422: that answer proves nginx
passed the body. Use a key of a tenant whose tier allows 20 MiB (basic or
pro): the free tier's 10 MiB limit makes the node itself answer 413.

  --dummy-upstream  no node needed: a stand-in (scripts/lib/dummy-upstream.py)
                    reads the whole body and answers 422 with the byte count,
                    which is checked too
Environment: UPLOAD_BYTES (default 20971520), NGINX_CONFIG_DIR (default
deploy/nginx, to check another configuration).

Exit status: 0 the upstream answered (nginx passed the body); 1 nginx
answered 413 itself; 2 anything else (nginx did not start, no answer, an
answer from nginx and not the upstream such as 502 or 504, a short body at
the dummy).
USAGE
}

dummy=false
case "${1:-}" in
    --dummy-upstream) dummy=true ;;
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/nginx-test-config.sh
source "$repo/scripts/lib/nginx-test-config.sh"

size=${UPLOAD_BYTES:-20971520}
config_src=${NGINX_CONFIG_DIR:-$repo/deploy/nginx}
for tool in nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "check-nginx-upload.sh: $tool is not installed" >&2; exit 2; }
done

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tmp=$(mktemp -d)
nginx_pid="" dummy_pid=""
cleanup() {
    # nginx's master writes its pid file: stop it there, then give the
    # process this script started (nginx itself, or runuser waiting for it)
    # a moment to end on its own before stopping it too.
    if [ -s "$tmp/nginx/nginx.pid" ]; then
        kill "$(cat "$tmp/nginx/nginx.pid")" 2>/dev/null || true
    fi
    if [ -n "$nginx_pid" ]; then
        for _ in $(seq 1 50); do
            kill -0 "$nginx_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$nginx_pid" 2>/dev/null || true
    fi
    if [ -n "$dummy_pid" ]; then kill "$dummy_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

if $dummy; then
    dummy_port=$(free_port)
    python3 "$repo/scripts/lib/dummy-upstream.py" "$dummy_port" 2>"$tmp/dummy.log" &
    dummy_pid=$!
    WASMWIZ_UPSTREAM=127.0.0.1:$dummy_port
    WASMWIZ_API_KEY=${WASMWIZ_API_KEY:-not-checked-by-the-dummy}
    for _ in $(seq 1 50); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$dummy_port" 2>/dev/null && break
        sleep 0.1
    done
fi
: "${WASMWIZ_UPSTREAM:?set WASMWIZ_UPSTREAM=HOST:PORT of a running wasmwiz (or use --dummy-upstream)}"
: "${WASMWIZ_API_KEY:?set WASMWIZ_API_KEY to a key of a basic or pro tenant}"

# nginx's own files all live in the temporary folder: no root path is used.
mkdir "$tmp/nginx"
http_port=$(free_port)
port=$(free_port)
config=$(nginx_test_config "$config_src" "$tmp/nginx" "$WASMWIZ_UPSTREAM" "$http_port" "$port" plain)

# Unprivileged: as root (CI), nginx runs as `nobody`, owning its folder;
# otherwise as the caller.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
    chmod 711 "$tmp"   # nobody may pass through to its own folder, no more
    chown -R nobody "$tmp/nginx"
    run_as=(runuser -u nobody --)
fi
"${run_as[@]}" nginx -p "$tmp/nginx" -c "$config" -e "$tmp/nginx/error.log" -g 'daemon off;' &
nginx_pid=$!

started=false
for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$http_port/nginx-health" 2>/dev/null; then
        started=true
        break
    fi
    kill -0 "$nginx_pid" 2>/dev/null || break
    sleep 0.1
done
if ! $started; then
    echo "check-nginx-upload.sh: nginx did not start:" >&2
    cat "$tmp/nginx/error.log" >&2 || true
    exit 2
fi

head -c "$size" /dev/urandom > "$tmp/big.wasm"
status=$(curl -sS -o "$tmp/answer" -w '%{http_code}' --max-time 120 \
    --data-binary @"$tmp/big.wasm" \
    -H 'Content-Type: application/wasm' \
    -H "Authorization: Bearer $WASMWIZ_API_KEY" \
    "http://127.0.0.1:$port/api/v1/components?name=big") || status=000
echo "$status"

# The access log's last line ends with `upstream=ADDRESS STATUS`; `-` means
# nginx answered by itself and never reached the node.
upstream=$(sed -n 's/.* upstream=\([^ ]*\) .*/\1/p' "$tmp/nginx/access.log" | tail -n 1)
answer=$(head -c 300 "$tmp/answer" 2>/dev/null | tr -s '\n' ' ' || true)
if [ "$status" = 413 ] && [ "${upstream:--}" = - ]; then
    echo "nginx refused the $size-byte upload itself (413): client_max_body_size is below it" >&2
    exit 1
fi
# 502 and 504 are nginx's own words for an upstream it could not connect to
# or that did not answer in time (a node never answers an upload with them).
if [ "$status" = 000 ] || [ "$status" = 502 ] || [ "$status" = 504 ] || [ "${upstream:--}" = - ]; then
    echo "no answer from the upstream (status $status, upstream ${upstream:--}): $answer" >&2
    cat "$tmp/nginx/error.log" >&2 || true
    exit 2
fi
if $dummy; then
    received=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["error"]["received_bytes"])' "$tmp/answer")
    if [ "$received" != "$size" ]; then
        echo "the dummy upstream received $received of $size bytes" >&2
        exit 2
    fi
    echo "nginx passed all $size bytes to the upstream ($upstream), which answered $status" >&2
else
    echo "nginx passed the $size-byte upload to the upstream ($upstream), which answered $status: $answer" >&2
fi
