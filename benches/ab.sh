#!/usr/bin/env bash
# A/B of one setting: `hello` through two `wasmwiz run` processes (or, with
# -s, two `wasmwiz serve` nodes as the headline runs them), one with the
# default configuration and one with NAME=VALUE in its environment, wrk
# alternating between them, median of the rounds. For measuring a knob
# (POOL_KEEP_RESIDENT, POOL_WARM_SLOTS, ...) without rebuilding, a build
# profile (-B), or a code change (-b: B runs a binary saved before it).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/ab.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]
                    [-B PROFILE | -b BINARY] [-l LOOPS] [-s] [-n ROUTES] [-R REUSE]
                    [NAME=VALUE...]

  -r ROUNDS       rounds, each runs wrk once against both servers (default 3)
  -d SECONDS      wrk duration per run (default 10)
  -c CONNECTIONS  wrk connections (default 64)
  -t THREADS      wrk threads (default 2)
  -B PROFILE      run B with the binary of this cargo profile (built first)
                  instead of the release one
  -b BINARY       run B with this wasmwiz binary (say, a copy of the
                  release binary saved before a change)
  -l LOOPS        a noisy neighbour: while wrk measures a server, LOOPS
                  clients keep a guest computing in a loop on it (the
                  hostile test guest, stopped by a 1 s EXECUTION_TIMEOUT on
                  both servers), one request after another
  -s              compare two wasmwiz serve nodes instead, each on a fresh
                  embedded store of its own with hello on ROUTES routes of
                  the bench tenant and its quota counted in Redis
                  (127.0.0.1:6379 or \$REDIS_URL), as serve.sh runs it
  -n ROUTES       routes deployed on each node with -s (default 1000)
  -R REUSE        with -s, measure one more route on each node instead,
                  hello deployed with max_instance_reuse REUSE (as serve.sh
                  -R does), and say how many requests got a new instance

Examples: benches/ab.sh POOL_KEEP_RESIDENT=0
          benches/ab.sh -B profiling   (what fat LTO buys over thin LTO)
          cp target/release/wasmwiz /tmp/before; (change, then)
          benches/ab.sh -b /tmp/before (what the change buys: A is the new build)
          benches/ab.sh -l 4 SERVER_THREADS=2 (hello beside 4 CPU-bound guests)
          benches/ab.sh -s -b /tmp/before (a change on the serve path)
          benches/ab.sh -s -R 1000 -b /tmp/before (the same, instances reused)
USAGE
}

rounds=3 duration=10 connections=64 threads=2 profile_b='' binary_b='' loops=0 serve=false
count=1000 reuse=0
bench_option() {
    case $1 in
        B) profile_b=$2 ;;
        b) binary_b=$2 ;;
        l) loops=$2 ;;
        s) serve=true ;;
        R) reuse=$2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:B:b:l:sn:R:" "$@"
shift "$bench_shift"
[ $# -gt 0 ] || [ -n "$profile_b$binary_b" ] || { usage >&2; exit 2; }
[[ $loops =~ ^[0-9]+$ ]] || { echo "-l needs a number" >&2; exit 2; }
[[ $reuse =~ ^[0-9]+$ ]] || { echo "-R needs a number" >&2; exit 2; }
[ "$reuse" -le 1 ] || [ "$serve" = true ] || { echo "-R needs -s" >&2; exit 2; }
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
serving=("$hello")
if [ "$loops" -gt 0 ]; then
    serving=("/hello=$hello" "/loop/...=$bench_root/target/components/hostile.wasm")
    export EXECUTION_TIMEOUT=1
    attackers=()
    bench_before_run() {
        local i
        for i in $(seq 1 "$loops"); do
            while curl -s -o /dev/null "${1%/hello}/loop/loop"; do :; done &
            attackers+=($!)
            bench_pids+=($!) # stopped with the servers if the script is cut short
        done
        sleep 0.5
    }
    bench_after_run() {
        kill "${attackers[@]}" 2>/dev/null || true
        wait "${attackers[@]}" 2>/dev/null || true
        attackers=()
        # The guests left running end at their timeout before the next run.
        sleep 1.2
    }
fi
build_b=${profile_b:+$profile_b build}${binary_b:+$(basename "$binary_b")}
label_b="$build_b${build_b:+${*:+, }}$*"
names=("$bench_profile build" "$label_b")
paths=(/hello /hello)
if [ "$serve" = true ]; then
    [ "$loops" -eq 0 ] || { echo "-l and -s exclude each other" >&2; exit 2; }
    export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379} LOG_LEVEL=info PROMETHEUS_ENABLED=true
    a_bin=$bench_bin
    for side in a b; do
        # Each binary sets up its own store: an older one may not know a
        # newer one's migrations.
        if [ $side = a ]; then bench_bin=$a_bin; i=0; else bench_bin=$bin_b; i=1; fi
        key=$(bench_serve_setup "$work/$side")
        if [ $side = a ]; then
            bench_start "${names[0]}" "$results/a.log" env WASMWIZ_DATA_DIR="$work/a" \
                REDIS_KEY_PREFIX="wwab$$a" \
                "$bench_bin" serve --addr "127.0.0.1:${ports[0]}"
        else
            bench_start "$label_b" "$results/b.log" env WASMWIZ_DATA_DIR="$work/b" \
                REDIS_KEY_PREFIX="wwab$$b" "$@" \
                "$bench_bin" serve --addr "127.0.0.1:${ports[1]}"
        fi
        bench_wait_ready "http://127.0.0.1:${ports[$i]}/health"
        paths[i]=$(bench_deploy_routes "http://127.0.0.1:${ports[$i]}" "$key" "$hello" "$count")
        if [ "$reuse" -gt 1 ]; then
            url=http://127.0.0.1:${ports[$i]}
            digest=$(curl -fsS -H "Authorization: Bearer $key" "$url/api/v1/components" |
                sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' | head -1)
            curl -fsS -o /dev/null -H "Authorization: Bearer $key" \
                -H 'content-type: application/json' \
                -d "{\"route\":\"/bench/reuse/...\",\"component\":\"$digest\",\"max_instance_reuse\":$reuse}" \
                "$url/api/v1/deployments"
            paths[i]=/bench/reuse/hello
            bench_wait_ready "$url${paths[$i]}"
        fi
    done
    bench_bin=$a_bin
else
    bench_start "${names[0]}" "$results/a.log" "$bench_bin" run --addr "127.0.0.1:${ports[0]}" \
        "${serving[@]}"
    bench_start "$label_b" "$results/b.log" env "$@" "$bin_b" run --addr "127.0.0.1:${ports[1]}" \
        "${serving[@]}"
    for port in "${ports[@]}"; do
        bench_wait_ready "http://127.0.0.1:$port/hello"
    done
fi

declare -A rps p50 p99 med med99
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" \
    "${names[0]}" "http://127.0.0.1:${ports[0]}${paths[0]}" \
    "${names[1]}" "http://127.0.0.1:${ports[1]}${paths[1]}"

echo
noisy=''
[ "$loops" -eq 0 ] || noisy=", $loops clients looping on a CPU-bound guest meanwhile"
echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median ($(nproc) cores, loopback)$noisy"
echo
bench_table "${names[@]}"
echo
echo "$label_b / ${names[0]}: $(bench_ratio "${med[${names[1]}]}" "${med[${names[0]}]}")"
if [ "$reuse" -gt 1 ]; then
    # Requests that did not find an idle instance (a new one was made),
    # from each node's metrics: warm-up and measured runs together.
    for i in 0 1; do
        curl -fsS "http://127.0.0.1:${ports[$i]}/metrics" | awk -v name="${names[$i]}" '
            /^wasmwiz_instances_reused_total / {reused = $2}
            /^wasmwiz_wasm_executions_total\{outcome="ok",tenant="bench"\}/ {ok = $2}
            /^wasmwiz_quota_redis_calls_total / {calls = $2}
            END {printf "%s: %d of %d requests on a new instance, %d Redis calls\n",
                 name, ok - reused, ok, calls}'
    done
fi
