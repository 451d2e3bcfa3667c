#!/usr/bin/env bash
# Slow and malformed clients at scale, against one `wasmwiz serve` (embedded
# store, release build) serving a live route:
#
# - slowhttptest: slowloris (headers sent a byte at a time), slow body (a
#   POST body trickled to a route that reads it), slow read (responses read
#   a few bytes at a time through a tiny window), each with -a CONNECTIONS
#   connections opened at 500 a second and kept for the whole run;
# - HTTP/2 floods (benches/h2flood.py): rapid reset, SETTINGS, PING, each
#   from 8 connections that reconnect when the server ends them.
#
# During each attack a well-behaved client (wrk, 16 connections, HTTP/1.1
# keep-alive) measures p99 on /bench/hello; the figure is compared with the
# same client's p99 with no attack, measured just before. Target: at most
# twice the baseline. Also reported: the server's peak RSS, and what the
# attackers saw (slowhttptest's connection states; frames sent and
# connections the server ended, for the floods).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/slow-clients.sh [-d SECONDS] [-a CONNECTIONS] [-N NICE]

  -d SECONDS      wrk duration of each measurement (default 10)
  -a CONNECTIONS  slowhttptest connections per attack (default 2000)
  -N NICE         run the attackers at this niceness (default 0, the same
                  priority as the server; 19 leaves them only the CPU the
                  server and the well-behaved client do not use, as when
                  the attacker is another machine)

Builds the release binary and the components; needs slowhttptest, wrk and
python3. Raw output goes to benches/results/.
USAGE
}

duration=10 attackers=2000 niceness=0
bench_option() {
    case $1 in
        a) attackers=$2 ;;
        N) niceness=$2 ;;
        *) usage >&2; exit 2 ;;
    esac
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "d:a:N:" "$@"

bench_setup slow-clients wrk slowhttptest python3 curl
bench_build_wasmwiz
components=$bench_root/target/components
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

port=18430
key=$(bench_serve_setup "$work/node")
bench_start node "$results/node.log" env WASMWIZ_DATA_DIR="$work/node" LOG_LEVEL=warn \
    "$bench_bin" serve --addr "127.0.0.1:$port"
bench_wait_ready "http://127.0.0.1:$port/health"
base=http://127.0.0.1:$port
bench_deploy "$base" "$key" "$components/hello.wasm" /bench/hello
bench_deploy "$base" "$key" "$components/echo.wasm" /bench/echo
bench_wait_ready "$base/bench/hello"
pid=${bench_pid_of[node]}

# The well-behaved client's p99 (ms) over DURATION: measure NAME.
measure() {
    bench_wrk "$results/wrk-$1.txt" -t 2 -c 16 -d "${duration}s" "$base/bench/hello" | awk '{print $3, $1, $4}'
}

peak_rss_mib() {
    awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"
}

# Runs an attack in the background while measuring: under NAME CMD...
# Prints "p99 rps non2xx" of the well-behaved client.
under() {
    local name=$1
    shift
    nice -n "$niceness" "$@" >"$results/$name.attack.txt" 2>&1 &
    local attack=$!
    # Let the attack build up its connections first.
    sleep 6
    measure "$name"
    wait "$attack" || true
}

echo "baseline: the well-behaved client alone" >&2
measure baseline >"$work/baseline.result"
read -r base_p99 base_rps base_bad <"$work/baseline.result"

length=$((duration + 10))
declare -A p99=() rps=() bad=() note=()
slow() {
    local name=$1
    shift
    under "$name" slowhttptest -c "$attackers" -r 500 -l "$length" -p 3 -g -o "$results/$name" "$@" \
        >"$work/$name.result"
    read -r "p99[$name]" "rps[$name]" "bad[$name]" <"$work/$name.result"
    # slowhttptest's last status: connection states at the end (colours
    # removed).
    note[$name]=$(sed 's/\x1b\[[0-9;]*m//g' "$results/$name.attack.txt" |
        grep -E 'closed:|pending:|connected:|service available:' | tail -4 |
        tr -s ' \n' ' ' | sed 's/^ //' || true)
}
echo "slowloris" >&2
slow slowloris -H -i 10 -x 24 -u "$base/bench/hello"
echo "slow body" >&2
slow slow-body -B -i 10 -s 100000 -x 10 -u "$base/bench/echo"
echo "slow read" >&2
slow slow-read -X -k 4 -n 10 -w 2 -y 8 -z 4 -u "$base/bench/hello"

flood() {
    local name=$1 kind=$2
    under "$name" python3 "$bench_root/benches/h2flood.py" "$kind" 127.0.0.1 "$port" /bench/hello \
        "$length" 8 >"$work/$name.result"
    read -r "p99[$name]" "rps[$name]" "bad[$name]" <"$work/$name.result"
    note[$name]=$(tail -1 "$results/$name.attack.txt")
}
echo "h2 rapid reset" >&2
flood h2-rapid-reset rapid-reset
echo "h2 SETTINGS flood" >&2
flood h2-settings settings
echo "h2 PING flood" >&2
flood h2-ping ping

{
    printf '# slow and malformed clients, %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
    printf '# wrk -t 2 -c 16 -d %ss on /bench/hello during each attack; slowhttptest -c %s; attackers at nice %s\n' \
        "$duration" "$attackers" "$niceness"
    printf '%-16s %10s %10s %8s %8s  %s\n' attack p99_ms rps non2xx x_base attacker
    printf '%-16s %10s %10s %8s %8s  %s\n' none "$base_p99" "$base_rps" "$base_bad" 1.00 -
    for name in slowloris slow-body slow-read h2-rapid-reset h2-settings h2-ping; do
        printf '%-16s %10s %10s %8s %8s  %s\n' "$name" "${p99[$name]}" "${rps[$name]}" \
            "${bad[$name]}" "$(bench_ratio "${p99[$name]}" "$base_p99")" "${note[$name]}"
    done
    printf 'server peak RSS: %s MiB\n' "$(peak_rss_mib)"
} | tee "$results/summary.txt"
