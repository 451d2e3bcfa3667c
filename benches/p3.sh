#!/usr/bin/env bash
# What WASIp3's concurrent instance reuse buys, measured on `wasmtime serve`
# 48 (wasmwiz serves WASIp2 components only): `hello` as a WASIp3 component
# (benches/hello-p3, an async handler; wasmtime serve's defaults for it: an
# instance serves up to 128 requests, 16 at once) against the WASIp2 `hello`
# on a fresh instance per request and with sequential reuse (128 requests
# per instance, one at a time), on wasmtime serve and on `wasmwiz run`. wrk
# on loopback, alternating, median of the rounds.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/p3.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)

Builds the release binary, the components, hello-p3 (its WIT from the
wasmtime-wasi-http the host builds with) and (once) wasmtime-cli 48.0.8.
Raw wrk output goes to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:" "$@"

bench_setup p3 wrk

bench_build_wasmwiz
wasmtime=$(bench_wasmtime)
hello=$bench_root/target/components/hello.wasm

# The WASIp3 WIT the host's wasmtime-wasi-http implements.
guest=$bench_root/benches/hello-p3
(cd "$bench_root" && cargo fetch --locked --quiet)
wit=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d \
    -exec test -d "{}/wasmtime-wasi-http-$WASMTIME_VERSION/src/p3/wit/deps" \; \
    -print -quit)/wasmtime-wasi-http-$WASMTIME_VERSION/src/p3/wit/deps
[ -d "$wit" ] || { echo "the WASIp3 WIT of wasmtime-wasi-http $WASMTIME_VERSION is missing" >&2; exit 1; }
rm -rf "$guest/wit/deps"
cp -r "$wit" "$guest/wit/deps"
(cd "$guest" && CARGO_TARGET_DIR=$bench_root/target/bench-p3 \
    cargo build --target wasm32-wasip2 --release --locked --quiet)
hello_p3=$bench_root/target/bench-p3/wasm32-wasip2/release/hello_p3.wasm

ports=(18411 18412 18413 18414)
names=(wasmtime-p2-fresh wasmtime-p2-reuse wasmtime-p3 wasmwiz-run-p2-reuse)
bench_start wasmtime-p2-fresh "$results/wasmtime-p2-fresh.log" \
    "$wasmtime" serve -Scli --addr "127.0.0.1:${ports[0]}" "$hello"
bench_start wasmtime-p2-reuse "$results/wasmtime-p2-reuse.log" \
    "$wasmtime" serve -Scli --max-instance-reuse-count 128 \
    --addr "127.0.0.1:${ports[1]}" "$hello"
bench_start wasmtime-p3 "$results/wasmtime-p3.log" \
    "$wasmtime" serve -Scli -Sp3 -Wcomponent-model-async \
    --addr "127.0.0.1:${ports[2]}" "$hello_p3"
bench_start wasmwiz-run-p2-reuse "$results/wasmwiz.log" \
    "$bench_bin" run --max-instance-reuse 128 --addr "127.0.0.1:${ports[3]}" "$hello"
declare -A rps p50 p99 med med99
bench_servers_at /hello
echo "wasmtime-p3 / wasmtime-p2-fresh:  $(bench_ratio "${med[wasmtime-p3]}" "${med[wasmtime-p2-fresh]}")"
echo "wasmtime-p3 / wasmtime-p2-reuse:  $(bench_ratio "${med[wasmtime-p3]}" "${med[wasmtime-p2-reuse]}")"
echo "wasmwiz-run-p2-reuse / wasmtime-p3: $(bench_ratio "${med[wasmwiz-run-p2-reuse]}" "${med[wasmtime-p3]}")"
