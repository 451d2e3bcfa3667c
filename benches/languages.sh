#!/usr/bin/env bash
# Rust, Python and JavaScript `hello` side by side: through `wasmwiz serve`
# on a fresh instance per request and with instance reuse, against
# `wasmtime serve -Scli -Skeyvalue -Sconfig` 48 on the same components (fresh, and with
# --max-instance-reuse-count). Prints requests/s, p99, each server's
# resident memory after the runs, the compile time of each upload and the
# first request's latency after its deploy; then how long a restarted node
# takes to be ready with every language deployed (from the compiled-code
# cache).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/languages.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [-R REUSE]

  -r ROUNDS       rounds, each runs wrk once against every contender (default 1)
  -d SECONDS      wrk duration per run (default 5)
  -c CONNECTIONS  wrk connections (default 8)
  -t THREADS      wrk threads (default 1)
  -R REUSE        max_instance_reuse of the reusing contenders (default 1000)

Builds the release binary, the components (Rust, Python and JavaScript:
scripts/build-examples.sh) and (once) wasmtime-cli 48.0.8. The wasmwiz node
runs on a fresh embedded store, quotas off; raw output in benches/results/.
USAGE
}

rounds=1 duration=5 connections=8 threads=1 reuse=1000
bench_option() {
    case $1 in
        R) reuse=$2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "r:d:c:t:R:" "$@"
if ! [[ $reuse =~ ^[0-9]+$ ]] || [ "$reuse" -lt 2 ]; then
    echo "-R needs a number above 1" >&2
    exit 2
fi

bench_setup languages wrk curl

bench_build_wasmwiz
wasmtime=$(bench_wasmtime)
components=$bench_root/target/components
# js: the `fetch` event (examples/js-hello); js-handler: the same answer
# through wasi:http's incoming handler (examples/js-handler), which can be
# reused.
languages=(rust python js js-handler)
declare -A file=([rust]=$components/hello.wasm [python]=$components/python_hello.wasm
    [js]=$components/js_hello.wasm [js-handler]=$components/js_handler.wasm)

port=18301
url=http://127.0.0.1:$port
export WASMWIZ_DATA_DIR=$work/data QUOTAS_ENABLED=false LOG_LEVEL=warn
key=$(bench_serve_setup "$work/data")
bench_start wasmwiz "$results/wasmwiz.log" "$bench_bin" serve --addr "127.0.0.1:$port"
bench_wait_ready "$url/health"

# Each language: an upload (its compile time), a route on a fresh instance
# per request and one with reuse (the first request's latency after each
# deploy), and two wasmtime serve processes on the same file.
declare -A compile_ms first_ms refused
wasmtime_port=18310
runs=()
# Adds NAME at URL to the runs if, within eight requests, three in a row
# answer 200 (a reused instance may fail, and wasmwiz then falls back to
# fresh instances); otherwise notes what it answered.
contender() {
    local name=$1 target=$2 status i ok=0 answers=""
    for i in 1 2 3 4 5 6 7 8; do
        status=$(curl -s -o /dev/null -w '%{http_code}' "$target" || true)
        answers+="${answers:+ }$status"
        if [ "$status" = 200 ]; then ok=$((ok + 1)); else ok=0; fi
        if [ "$ok" = 3 ]; then
            echo "$name: answered $answers" >&2
            runs+=("$name" "$target")
            return
        fi
    done
    refused[$name]="answered $answers"
    echo "$name: ${refused[$name]}, not measured" >&2
}
for lang in "${languages[@]}"; do
    upload=$(curl -fsS -H "Authorization: Bearer $key" --data-binary "@${file[$lang]}" \
        "$url/api/v1/components?name=$lang-hello")
    compile_ms[$lang]=$(sed -n 's/.*"compile_ms":\([0-9]*\).*/\1/p' <<<"$upload")
    digest=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$upload")
    for mode in fresh reuse; do
        n=1
        [ "$mode" = fresh ] || n=$reuse
        curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
            -d "{\"route\":\"/bench/$lang-$mode\",\"component\":\"$digest\",\"max_instance_reuse\":$n}" \
            "$url/api/v1/deployments"
        first_ms[$lang-$mode]=$(curl -fsS -o /dev/null -w '%{time_total}' "$url/bench/$lang-$mode" |
            awk '{printf "%.1f", $1 * 1000}')
        contender "wasmwiz-$lang-$mode" "$url/bench/$lang-$mode"
        bench_pid_of[wasmwiz-$lang-$mode]=${bench_pid_of[wasmwiz]}
        args=(serve -Scli -Skeyvalue -Sconfig --addr "127.0.0.1:$wasmtime_port")
        [ "$mode" = fresh ] || args+=(--max-instance-reuse-count "$reuse")
        bench_start "wasmtime-$lang-$mode" "$results/wasmtime-$lang-$mode.log" \
            "$wasmtime" "${args[@]}" "${file[$lang]}"
        # wasmtime serve compiles at start: seconds for Python or JavaScript.
        bench_wait_ready "http://127.0.0.1:$wasmtime_port/" 180
        contender "wasmtime-$lang-$mode" "http://127.0.0.1:$wasmtime_port/"
        wasmtime_port=$((wasmtime_port + 1))
    done
done

declare -A rps p50 p99 med med99
bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" "${runs[@]}"

rss_mib() {
    awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}

echo
echo "wrk -t$threads -c$connections -d${duration}s, $rounds round(s), median ($(nproc) cores, loopback); reuse: $reuse requests per instance"
echo
echo "| language | server | instances | requests/s | p99 ms | server RSS MiB | compile ms | first request ms |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
for lang in "${languages[@]}"; do
    for server in wasmwiz wasmtime; do
        for mode in fresh reuse; do
            name=$server-$lang-$mode
            if [ -n "${refused[$name]:-}" ]; then
                echo "| $lang | $server | $mode | ${refused[$name]} | | | | |"
                continue
            fi
            # shellcheck disable=SC2086
            med[$name]=$(bench_median ${rps[$name]})
            # shellcheck disable=SC2086
            med99[$name]=$(bench_median ${p99[$name]})
            if [ "$server" = wasmwiz ]; then
                rss="$(rss_mib "${bench_pid_of[wasmwiz]}") (all)"
                compile=${compile_ms[$lang]}
                first=${first_ms[$lang-$mode]}
            else
                rss=$(rss_mib "${bench_pid_of[$name]}")
                compile=-
                first=-
            fi
            echo "| $lang | $server | $mode | ${med[$name]} | ${med99[$name]} | $rss | $compile | $first |"
        done
    done
done
echo
for lang in "${languages[@]}"; do
    for mode in fresh reuse; do
        echo "$lang $mode: wasmwiz / wasmtime serve = $(bench_ratio "${med[wasmwiz-$lang-$mode]:-0}" "${med[wasmtime-$lang-$mode]:-0}")"
    done
done

# A restart: ready from the compiled-code cache, every language deployed.
kill "${bench_pid_of[wasmwiz]}"
wait "${bench_pid_of[wasmwiz]}" 2>/dev/null || true
started=$(bench_now_ms)
export LOG_LEVEL=info # for the line that says what came from the cache
bench_start wasmwiz-restarted "$results/wasmwiz-restarted.log" \
    "$bench_bin" serve --addr "127.0.0.1:$port"
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" = 200 ]; do
    [ $(($(bench_now_ms) - started)) -lt 120000 ] || { echo "never ready" >&2; exit 1; }
    sleep 0.02
done
echo
echo "restarted node ready in $(($(bench_now_ms) - started)) ms with $((${#languages[@]} * 2)) routes of 3 languages, from the compiled-code cache ($(grep -o '([0-9]* from the compiled-code cache, [0-9]* to compile)' "$results/wasmwiz-restarted.log"))"
