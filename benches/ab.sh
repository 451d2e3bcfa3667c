#!/usr/bin/env bash
# A/B of one setting: `hello` through two `wasmwiz run` processes, one with
# the default configuration and one with NAME=VALUE in its environment, wrk
# alternating between them, median of the rounds. For measuring a knob
# (POOL_KEEP_RESIDENT, POOL_WARM_SLOTS, ...) without rebuilding.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/ab.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] NAME=VALUE...

  -r ROUNDS       rounds, each runs wrk once against both servers (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)

Example: benches/ab.sh POOL_KEEP_RESIDENT=0
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
shift $((OPTIND - 1))
[ $# -gt 0 ] || { usage >&2; exit 2; }

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
results=$bench_root/benches/results/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"

bench_build_wasmwiz
hello=$bench_root/target/components/hello.wasm
ports=(18221 18222)
names=(default "$*")
bench_start default "$results/a.log" "$bench_bin" run --addr "127.0.0.1:${ports[0]}" "$hello"
bench_start "$*" "$results/b.log" env "$@" "$bench_bin" run --addr "127.0.0.1:${ports[1]}" "$hello"
for port in "${ports[@]}"; do
    bench_wait_ready "http://127.0.0.1:$port/hello"
    wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$port/hello" >/dev/null
done

declare -A rps p99
for round in $(seq 1 "$rounds"); do
    for i in 0 1; do
        read -r r _ l99 bad < <(bench_wrk "$results/$i-$round.txt" \
            -t"$threads" -c"$connections" -d"${duration}s" "http://127.0.0.1:${ports[$i]}/hello")
        [ "$bad" = 0 ] || { echo "${names[$i]}: $bad non-2xx answers" >&2; exit 1; }
        rps[$i]+="$r "
        p99[$i]+="$l99 "
        echo "round $round ${names[$i]}: $r req/s, p99 $l99 ms" >&2
    done
done

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)"
echo
echo "| wasmwiz run | requests/s | p99 ms |"
echo "| --- | ---: | ---: |"
for i in 0 1; do
    # shellcheck disable=SC2086
    echo "| ${names[$i]} | $(bench_median ${rps[$i]}) | $(bench_median ${p99[$i]}) |"
done
# shellcheck disable=SC2086
a=$(bench_median ${rps[0]})
# shellcheck disable=SC2086
b=$(bench_median ${rps[1]})
echo
echo "with $* / default: $(bench_ratio "$b" "$a")"
