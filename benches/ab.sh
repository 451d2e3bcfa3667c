#!/usr/bin/env bash
# A/B of one setting: `hello` through two `wasmwiz run` processes, one with
# the default configuration and one with NAME=VALUE in its environment, wrk
# alternating between them, median of the rounds. For measuring a knob
# (POOL_KEEP_RESIDENT, POOL_WARM_SLOTS, ...) without rebuilding, a build
# profile (-B), or a code change (-b: B runs a binary saved before it).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/ab.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]
                    [-B PROFILE | -b BINARY] [NAME=VALUE...]

  -r ROUNDS       rounds, each runs wrk once against both servers (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)
  -B PROFILE      run B with the binary of this cargo profile (built first)
                  instead of the release one
  -b BINARY       run B with this wasmwiz binary (say, a copy of the
                  release binary saved before a change)

Examples: benches/ab.sh POOL_KEEP_RESIDENT=0
          benches/ab.sh -B profiling   (what fat LTO buys over thin LTO)
          cp target/release/wasmwiz /tmp/before; (change, then)
          benches/ab.sh -b /tmp/before (what the change buys: A is the new build)
USAGE
}

rounds=3 duration=10 connections=64 threads=2 profile_b='' binary_b=''
bench_option() {
    case $1 in
        B) profile_b=$2 ;;
        b) binary_b=$2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:B:b:" "$@"
shift "$bench_shift"
[ $# -gt 0 ] || [ -n "$profile_b$binary_b" ] || { usage >&2; exit 2; }
if [ -n "$binary_b" ]; then
    [ -z "$profile_b" ] || { echo "-B and -b exclude each other" >&2; exit 2; }
    [ -x "$binary_b" ] || { echo "$binary_b is not an executable" >&2; exit 2; }
    binary_b=$(cd "$(dirname "$binary_b")" && pwd)/$(basename "$binary_b")
fi

bench_setup ab wrk

bench_build_wasmwiz
bin_b=$bench_bin
if [ -n "$profile_b" ]; then
    (cd "$bench_root" && cargo build --profile "$profile_b" --locked --quiet -p wasmwiz)
    bin_b=$bench_root/target/$profile_b/wasmwiz
elif [ -n "$binary_b" ]; then
    bin_b=$binary_b
fi
hello=$bench_root/target/components/hello.wasm
ports=(18221 18222)
build_b=${profile_b:+$profile_b build}${binary_b:+$(basename "$binary_b")}
label_b="$build_b${build_b:+${*:+, }}$*"
names=("$bench_profile build" "$label_b")
bench_start "${names[0]}" "$results/a.log" "$bench_bin" run --addr "127.0.0.1:${ports[0]}" "$hello"
bench_start "$label_b" "$results/b.log" env "$@" "$bin_b" run --addr "127.0.0.1:${ports[1]}" "$hello"
for port in "${ports[@]}"; do
    bench_wait_ready "http://127.0.0.1:$port/hello"
done

declare -A rps p50 p99 med med99
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" \
    "${names[0]}" "http://127.0.0.1:${ports[0]}/hello" \
    "${names[1]}" "http://127.0.0.1:${ports[1]}/hello"

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)"
echo
bench_table "${names[@]}"
echo
echo "$label_b / ${names[0]}: $(bench_ratio "${med[${names[1]}]}" "${med[${names[0]}]}")"
