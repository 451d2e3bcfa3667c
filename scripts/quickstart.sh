#!/usr/bin/env bash
# The quickest way to see WasmWiz work: builds the release binary and the
# example components, starts `wasmwiz serve` on the embedded default (a
# SQLite file under .wasmwiz/, in-process quotas, nothing else to install),
# creates a tenant, grants it /hello/..., makes a key, deploys `hello`,
# prints a curl line that works, and keeps serving until Ctrl-C.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/quickstart.sh [--help]

Environment:
  ADDR              where to listen (default 127.0.0.1:8080)
  WASMWIZ_DATA_DIR  where the embedded store lives (default .wasmwiz)
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
addr=${ADDR:-127.0.0.1:8080}
export WASMWIZ_DATA_DIR=${WASMWIZ_DATA_DIR:-.wasmwiz}

echo "building wasmwiz (release) and the example components..." >&2
cargo build --release --locked --quiet -p wasmwiz
scripts/build-examples.sh 2>/dev/null
bin=$root/target/release/wasmwiz

# A tenant named demo on the pro tier (kept if it exists), and a fresh key.
# It may deploy under /demo/... without asking; as the operator, grant it
# /hello/... too, so the example answers on http://ADDR/hello.
"$bin" admin tenant create demo --tier pro >/dev/null 2>&1 || true
"$bin" admin tenant grant demo --route '/hello/...' >/dev/null 2>&1 || true
key=$("$bin" admin key create demo 2>/dev/null)

"$bin" serve --addr "$addr" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
    if curl -fs "http://$addr/ready" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done

WASMWIZ_URL=http://$addr WASMWIZ_API_KEY=$key \
    "$bin" deploy target/components/hello.wasm --route '/hello/...'

cat <<DONE

WasmWiz is serving on http://$addr (Ctrl-C to stop). Try:

    curl http://$addr/hello

The web console (sign in with the key below): http://${CONSOLE_ADDR:-127.0.0.1:8081}/console

Your API key (tenant demo): $key
    export WASMWIZ_URL=http://$addr WASMWIZ_API_KEY=$key
    $bin deployments

DONE
wait "$pid"
