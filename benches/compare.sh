#!/usr/bin/env bash
# Throughput and latency of the `hello` component served by `wasmwiz run`,
# by `wasmtime serve` (the same wasmtime, 48.x) and by a native hyper server,
# measured with wrk on loopback, alternating between the three, median of
# the rounds. Prints a Markdown table with the ratios.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/compare.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [-R REUSE]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)
  -R REUSE        also measure \`wasmwiz run --max-instance-reuse REUSE\`

Builds the release binary, the components, the native baseline and (once,
into \$WASMWIZ_BENCH_CACHE, default ~/.cache/wasmwiz-bench) wasmtime-cli
48.0.8. Raw wrk output goes to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2 reuse=0
bench_option() {
    case $1 in
        R) reuse=$2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:R:" "$@"
[[ $reuse =~ ^[0-9]+$ ]] || { echo "-R needs a number" >&2; exit 2; }

bench_setup compare wrk

bench_build_wasmwiz
wasmtime=$(bench_wasmtime)
native=$(bench_native)
hello=$bench_root/target/components/hello.wasm

ports=(18181 18182 18183)
names=(wasmwiz wasmtime-serve native)
bench_start wasmwiz "$results/wasmwiz.log" \
    "$bench_bin" run --addr "127.0.0.1:${ports[0]}" "$hello"
bench_start wasmtime-serve "$results/wasmtime.log" \
    "$wasmtime" serve -Scli --addr "127.0.0.1:${ports[1]}" "$hello"
bench_start native "$results/native.log" "$native" "127.0.0.1:${ports[2]}"
if [ "$reuse" -gt 1 ]; then
    ports+=(18184)
    names+=(wasmwiz-reuse)
    bench_start wasmwiz-reuse "$results/wasmwiz-reuse.log" \
        "$bench_bin" run --max-instance-reuse "$reuse" --addr "127.0.0.1:${ports[3]}" "$hello"
fi
declare -A rps p50 p99 med med99
bench_servers_at /hello
echo "wasmwiz / wasmtime-serve: $(bench_ratio "${med[wasmwiz]}" "${med[wasmtime-serve]}")"
echo "wasmwiz / native:         $(bench_ratio "${med[wasmwiz]}" "${med[native]}")"
if [ "$reuse" -gt 1 ]; then
    echo "wasmwiz-reuse / wasmtime-serve: $(bench_ratio "${med[wasmwiz-reuse]}" "${med[wasmtime-serve]}")"
    echo "wasmwiz-reuse / native:         $(bench_ratio "${med[wasmwiz-reuse]}" "${med[native]}")"
fi
