# Shared helpers of the benchmark scripts (sourced, not run).
# shellcheck shell=bash

bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_cache=${WASMWIZ_BENCH_CACHE:-$HOME/.cache/wasmwiz-bench}
WASMTIME_VERSION=48.0.8
# The cargo profile benchmarks build: `release` (the shipped binary) unless
# WASMWIZ_BENCH_PROFILE says otherwise (`profiling` builds faster).
bench_profile=${WASMWIZ_BENCH_PROFILE:-release}
bench_bin=$bench_root/target/$bench_profile/wasmwiz
bench_pids=()
# Server name -> pid (bench_start fills it), and each server's CPU time per
# request, one figure per wrk run (bench_rounds fills it).
declare -A bench_pid_of=() bench_cpu=() bench_errors=()

# Parses a benchmark script's options: bench_options SPEC "$@", SPEC being
# the getopts letters the script takes (say "r:d:c:t:n:"). -r, -d, -c, -t
# and -n set the caller's rounds, duration, connections, threads and count;
# any other letter of SPEC goes to the caller's bench_option LETTER VALUE.
# -h and --help print the caller's usage and exit; anything else prints it
# to stderr and exits 2. Leaves in bench_shift how many arguments were
# options (for `shift "$bench_shift"`).
# (It sets the caller's variables.)
# shellcheck disable=SC2034
bench_options() {
    local spec=$1 opt
    shift
    OPTIND=1
    while getopts "${spec}h-:" opt; do
        case $opt in
            r) rounds=$OPTARG ;;
            d) duration=$OPTARG ;;
            c) connections=$OPTARG ;;
            t) threads=$OPTARG ;;
            n) count=$OPTARG ;;
            h) usage; exit 0 ;;
            -) [ "$OPTARG" = help ] && { usage; exit 0; }; usage >&2; exit 2 ;;
            '?' | :) usage >&2; exit 2 ;;
            *) bench_option "$opt" "${OPTARG:-}" ;;
        esac
    done
    bench_shift=$((OPTIND - 1))
}

# Prepares a benchmark run named NAME: checks each TOOL is installed, makes
# the caller's work folder (temporary) and results folder
# (benches/results/NAME-TIME), and at exit stops the servers bench_start
# started and removes the work folder. bench_setup NAME [TOOL...]
bench_setup() {
    local name=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
    done
    work=$(mktemp -d)
    trap 'bench_cleanup; rm -rf "$work"' EXIT
    # Several nodes run side by side on this machine: no console listener
    # (each would want 127.0.0.1:8081), and metrics read through each
    # node's serving address. Everything else as configured by default.
    export CONSOLE_ADDR=${CONSOLE_ADDR:-off} METRICS_ADDR=${METRICS_ADDR:-public}
    results=$bench_root/benches/results/$name-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$results"
}

bench_cleanup() {
    local pid
    for pid in "${bench_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${bench_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# Builds the release wasmwiz binary and the components. With
# WASMWIZ_BENCH_BIN set, measures that binary instead (say, a copy saved
# before a change) and builds only the components.
bench_build_wasmwiz() {
    if [ -n "${WASMWIZ_BENCH_BIN:-}" ]; then
        bench_bin=$WASMWIZ_BENCH_BIN
    else
        (cd "$bench_root" && cargo build --profile "$bench_profile" --locked --quiet -p wasmwiz)
    fi
    "$bench_root/scripts/build-examples.sh" 2>/dev/null
}

# Installs wasmtime-cli (the same wasmtime as the host) into the cache once.
bench_wasmtime() {
    local bin=$bench_cache/wasmtime-$WASMTIME_VERSION/bin/wasmtime
    if [ ! -x "$bin" ]; then
        echo "installing wasmtime-cli $WASMTIME_VERSION into $bench_cache (once, ~9 min)" >&2
        cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --quiet \
            --root "$bench_cache/wasmtime-$WASMTIME_VERSION" >&2
    fi
    echo "$bin"
}

# Builds the native hyper baseline.
bench_native() {
    (cd "$bench_root/benches/native-hello" &&
        CARGO_TARGET_DIR=$bench_root/target/bench-native cargo build --release --locked --quiet)
    echo "$bench_root/target/bench-native/release/native-hello"
}

# Starts a server in the background: bench_start NAME LOGFILE CMD...
bench_start() {
    local name=$1 log=$2
    shift 2
    # Backtrace capture in a developer's environment would slow every
    # server down; none of them runs with it in production.
    env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@" >"$log" 2>&1 &
    bench_pids+=("$!")
    bench_pid_of[$name]=$!
    echo "started $name (pid $!)" >&2
}

# Waits until URL answers 200, for up to SECONDS (default 30): bench_wait_ready URL [SECONDS].
bench_wait_ready() {
    local url=$1 seconds=${2:-30}
    for _ in $(seq 1 $((seconds * 10))); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$url never answered 200" >&2
    return 1
}

# Converts a wrk latency (612.00us, 2.10ms, 1.02s) to milliseconds.
bench_to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

# Runs wrk and prints "RPS P50_MS P99_MS NON2XX REQUESTS": bench_wrk
# OUTFILE WRKARGS... URL
bench_wrk() {
    local out=$1
    shift
    wrk --latency "$@" >"$out" 2>&1
    local rps p50 p99 bad requests
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
    requests=$(awk '/ requests in / {print $1}' "$out")
    echo "${rps:-0} $(bench_to_ms "${p50:-0ms}") $(bench_to_ms "${p99:-0ms}") ${bad:-0} ${requests:-0}"
}

# CPU time (user + system, all threads, in clock ticks) PID has used so far.
bench_cpu_ticks() {
    # Field 2 (the command) may hold spaces: count fields after its ')'.
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# Microseconds of CPU per request: bench_cpu_per_request TICKS REQUESTS.
bench_cpu_per_request() {
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }'
}

# Median of the numbers given as arguments.
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2
    }'
}

# a / b with two decimals.
bench_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# Prepares a fresh store in DIR (env DATABASE_URL / REDIS_URL honoured by the
# caller's environment) with tenant bench on tier unlimited (rates huge but
# finite, so every request is counted; no concurrency cap), and prints the
# tenant's key. The tenant deploys inside its own prefix, /bench/....
bench_serve_setup() {
    local dir=$1
    local bin=$bench_bin
    export WASMWIZ_DATA_DIR=$dir
    # (A binary from before per-tier concurrency caps has no such flag.)
    "$bin" admin tier set unlimited --per-minute 1000000000 --per-day 1000000000000 \
        --max-component 64MiB --max-concurrency unlimited >/dev/null 2>&1 ||
        "$bin" admin tier set unlimited --per-minute 1000000000 --per-day 1000000000000 \
            --max-component 64MiB >/dev/null 2>&1
    "$bin" admin tenant create bench --tier unlimited >/dev/null 2>&1 || true
    "$bin" admin key create bench 2>/dev/null
}

# Uploads FILE and deploys it on ROUTE through the API at URL with KEY.
bench_deploy() {
    local url=$1 key=$2 file=$3 route=$4 digest
    digest=$(curl -fsS -H "Authorization: Bearer $key" --data-binary "@$file" \
        "$url/api/v1/components?name=bench" | sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p')
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"$route\",\"component\":\"$digest\"}" "$url/api/v1/deployments"
}

# Deploys FILE on COUNT routes (/bench/r0001/... to /bench/rCOUNT/..., inside
# the bench tenant's own prefix) of the node at URL
# with KEY: one upload, then the deployments four at a time. Waits until the
# middle route answers, checks the node counts COUNT live deployments, and
# prints the middle route's /hello path.
bench_deploy_routes() {
    local url=$1 key=$2 file=$3 count=$4 digest target live
    bench_deploy "$url" "$key" "$file" /bench/r0001/...
    digest=$(curl -fsS -H "Authorization: Bearer $key" "$url/api/v1/components" |
        sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' | head -1)
    seq -f '%04g' 2 "$count" | xargs -P4 -I{} curl -fsS -o /dev/null \
        -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"route\":\"/bench/r{}/...\",\"component\":\"$digest\"}" "$url/api/v1/deployments"
    target=$(printf '/bench/r%04d/hello' $(((count + 1) / 2)))
    bench_wait_ready "$url$target"
    live=$(curl -fsS "$url/metrics" | awk '/^wasmwiz_deployments_live / {print $2}')
    if [ "$live" != "$count" ]; then
        echo "$url: expected $count live routes, found $live" >&2
        return 1
    fi
    echo "$target"
}

# Writes to OUT a copy of the component IN with a custom section naming TAG
# appended: the same code under a new digest (a new upload, compiled anew).
bench_variant() {
    local in=$1 out=$2 tag=$3
    python3 - "$in" "$out" "$tag" <<'PY'
import sys

def leb(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

src, dst, tag = sys.argv[1], sys.argv[2], sys.argv[3].encode()
name = b"wasmwiz-bench"
payload = leb(len(name)) + name + tag
with open(src, "rb") as f:
    data = f.read()
with open(dst, "wb") as f:
    f.write(data + b"\x00" + leb(len(payload)) + payload)
PY
}

# Milliseconds since the epoch.
bench_now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# Alternating wrk runs: bench_rounds ROUNDS THREADS CONNECTIONS SECONDS
# RESULTS NAME URL [NAME URL ...]. Warms every URL up for 2 s, then runs wrk
# against each in turn, ROUNDS times, raw output in RESULTS/NAME-ROUND.txt.
# Appends each run's figures to the caller's associative arrays rps, p50
# and p99 (declare -A them first) and fails on any non-2xx answer. For a
# server started by bench_start under NAME, also appends to bench_cpu the
# CPU time its process used per request during the run (times requests/s,
# the cores it got: for a CPU-bound server the column is the inverse of
# requests/s; for one held back elsewhere, its real cost per request).
# A script that defines bench_before_run / bench_after_run has them called
# with the URL around each measured run (to load that server meanwhile).
bench_rounds() {
    local rounds=$1 threads=$2 connections=$3 seconds=$4 results=$5
    shift 5
    local names=() urls=() i round r l50 l99 bad n pid before cpu
    while [ $# -gt 0 ]; do
        names+=("$1")
        urls+=("$2")
        shift 2
    done
    for i in "${!names[@]}"; do
        wrk -t"$threads" -c"$connections" -d2s "${urls[$i]}" >/dev/null
    done
    for round in $(seq 1 "$rounds"); do
        for i in "${!names[@]}"; do
            pid=${bench_pid_of[${names[$i]}]:-}
            if declare -F bench_before_run >/dev/null; then bench_before_run "${urls[$i]}"; fi
            before=$([ -n "$pid" ] && bench_cpu_ticks "$pid" || echo '')
            read -r r l50 l99 bad n < <(bench_wrk "$results/${names[$i]}-$round.txt" \
                -t"$threads" -c"$connections" -d"${seconds}s" "${urls[$i]}")
            if declare -F bench_after_run >/dev/null; then bench_after_run "${urls[$i]}"; fi
            if [ "$bad" != 0 ]; then
                echo "${names[$i]}: $bad non-2xx answers in round $round" >&2
                # A script that sets bench_allow_errors reports them
                # (bench_errors) instead of stopping.
                [ -n "${bench_allow_errors:-}" ] || return 1
            fi
            bench_errors[${names[$i]}]+="$bad:$n " 
            rps[${names[$i]}]+="$r "
            p50[${names[$i]}]+="$l50 "
            p99[${names[$i]}]+="$l99 "
            cpu=''
            if [ -n "$before" ]; then
                cpu=$(bench_cpu_per_request $(($(bench_cpu_ticks "$pid") - before)) "$n")
                bench_cpu[${names[$i]}]+="$cpu "
            fi
            echo "round $round ${names[$i]}: $r req/s, p50 $l50 ms, p99 $l99 ms${cpu:+, $cpu µs CPU/request}" >&2
        done
    done
}

# For scripts whose servers all answer on 127.0.0.1 at the same PATH: waits
# for each of the caller's servers (its arrays names and ports, one port per
# name), runs the rounds against them (bench_rounds, with the caller's
# rounds, threads, connections, duration and results) and prints the table
# of the medians (bench_table). The caller declares rps p50 p99 med med99.
bench_servers_at() {
    local path=$1 i runs=()
    # shellcheck disable=SC2154 # names and ports are the caller's
    for i in "${!names[@]}"; do
        bench_wait_ready "http://127.0.0.1:${ports[$i]}$path"
        runs+=("${names[$i]}" "http://127.0.0.1:${ports[$i]}$path")
    done
    bench_rounds "$rounds" "$threads" "$connections" "$duration" "$results" "${runs[@]}"
    echo
    echo "wrk -t$threads -c$connections -d${duration}s, $rounds rounds, median per server ($(nproc) cores, loopback)"
    echo
    bench_table "${names[@]}"
    echo
}

# Prints the Markdown table of the medians for NAME... (from rps, p50, p99
# and bench_cpu) and fills the caller's associative arrays med and med99
# with the median requests/s and p99 of each.
bench_table() {
    local name cpu
    echo "| server | requests/s | p50 ms | p99 ms | server CPU µs/request |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for name in "$@"; do
        # (med and med99 are the caller's associative arrays.)
        # shellcheck disable=SC2086,SC2004
        med[$name]=$(bench_median ${rps[$name]})
        # shellcheck disable=SC2086,SC2004
        med99[$name]=$(bench_median ${p99[$name]})
        cpu=-
        # shellcheck disable=SC2086
        [ -z "${bench_cpu[$name]:-}" ] || cpu=$(bench_median ${bench_cpu[$name]})
        # shellcheck disable=SC2086
        echo "| $name | ${med[$name]} | $(bench_median ${p50[$name]}) | ${med99[$name]} | $cpu |"
    done
}
