#!/usr/bin/env bash
# Throughput and latency of the `hello` component served by `wasmwiz run`,
# by `wasmtime serve` (the same wasmtime, 48.x) and by a native hyper server,
# measured with wrk on loopback, alternating between the three, median of
# the rounds. Prints a Markdown table with the ratios.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/compare.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]

  -r ROUNDS       rounds, each runs wrk once against every server (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)

Builds the release binary, the components, the native baseline and (once,
into \$WASMWIZ_BENCH_CACHE, default ~/.cache/wasmwiz-bench) wasmtime-cli
48.0.8. Raw wrk output goes to benches/results/.
USAGE
}

rounds=3 duration=10 connections=64 threads=2
while getopts "r:d:c:t:h-:" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        d) duration=$OPTARG ;;
        c) connections=$OPTARG ;;
        t) threads=$OPTARG ;;
        h) usage; exit 0 ;;
        -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
results=$bench_root/benches/results/compare-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"

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
for port in "${ports[@]}"; do
    bench_wait_ready "http://127.0.0.1:$port/hello"
done

declare -A rps p50 p99
for i in "${!names[@]}"; do
    # Warm up: page in code, fill pools and caches.
    wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:${ports[$i]}/hello" >/dev/null
done
for round in $(seq 1 "$rounds"); do
    for i in "${!names[@]}"; do
        name=${names[$i]}
        read -r r l50 l99 bad < <(bench_wrk "$results/$name-$round.txt" \
            -t"$threads" -c"$connections" -d"${duration}s" "http://127.0.0.1:${ports[$i]}/hello")
        if [ "$bad" != 0 ]; then
            echo "$name: $bad non-2xx answers in round $round" >&2
            exit 1
        fi
        rps[$name]+="$r "
        p50[$name]+="$l50 "
        p99[$name]+="$l99 "
        echo "round $round $name: $r req/s, p50 $l50 ms, p99 $l99 ms" >&2
    done
done

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median per server ($(nproc) cores, loopback)"
echo
echo "| server | requests/s | p50 ms | p99 ms |"
echo "| --- | ---: | ---: | ---: |"
declare -A med
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    med[$name]=$(bench_median ${rps[$name]})
    # shellcheck disable=SC2086
    echo "| $name | ${med[$name]} | $(bench_median ${p50[$name]}) | $(bench_median ${p99[$name]}) |"
done
echo
echo "wasmwiz / wasmtime-serve: $(bench_ratio "${med[wasmwiz]}" "${med[wasmtime-serve]}")"
echo "wasmwiz / native:         $(bench_ratio "${med[wasmwiz]}" "${med[native]}")"
