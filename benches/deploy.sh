#!/usr/bin/env bash
# Deploy speed: from the start of an upload of `hello` (new bytes each time,
# so it is validated and compiled anew) to its first 200 on the deployed
# route, through `wasmwiz serve` on the embedded store. Prints every
# deployment's phases and the median.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/deploy.sh [-n DEPLOYMENTS]

  -n DEPLOYMENTS  deployments to time (default 10)

Each deployment uploads a copy of hello.wasm with a custom section of its
own (a new digest), deploys it on a new route and polls the route until it
answers 200. Target: upload to first 200 within 300 ms.
USAGE
}

count=10
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "n:" "$@"

bench_setup deploy

bench_build_wasmwiz
hello=$bench_root/target/components/hello.wasm
port=18201
url=http://127.0.0.1:$port
unset REDIS_URL DATABASE_URL
# (exported here: the setup runs in a subshell)
export WASMWIZ_DATA_DIR=$work/data
key=$(bench_serve_setup "$work/data")
bench_start wasmwiz-serve "$results/wasmwiz.log" "$bench_bin" serve --addr "127.0.0.1:$port"
bench_wait_ready "$url/health"

totals=()
echo "| # | upload + compile ms | deploy ms | to first 200 ms | total ms |"
echo "| ---: | ---: | ---: | ---: | ---: |"
for i in $(seq 1 "$count"); do
    bench_variant "$hello" "$work/hello-$i.wasm" "deploy-$i-$$"
    start=$(bench_now_ms)
    digest=$(curl -fsS -H "Authorization: Bearer $key" --data-binary "@$work/hello-$i.wasm" \
        "$url/api/v1/components?name=hello-$i" | sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')
    uploaded=$(bench_now_ms)
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"/bench/d$i/...\",\"component\":\"$digest\"}" "$url/api/v1/deployments"
    deployed=$(bench_now_ms)
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/bench/d$i/")" = 200 ]; do
        [ $(($(bench_now_ms) - start)) -lt 10000 ] || { echo "/bench/d$i/ never answered 200" >&2; exit 1; }
    done
    done_at=$(bench_now_ms)
    totals+=("$((done_at - start))")
    echo "| $i | $((uploaded - start)) | $((deployed - uploaded)) | $((done_at - deployed)) | $((done_at - start)) |"
done
echo
echo "upload to first 200, median of $count: $(bench_median "${totals[@]}") ms (target: 300 ms)"
