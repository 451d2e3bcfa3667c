#!/usr/bin/env bash
# The quickest way to see WasmWiz work: checks what the build needs, builds
# the `wasmwiz` binary (the `quick` profile: minutes, not the release
# profile's quarter of an hour) and the Rust example components, starts
# `wasmwiz serve` on the embedded default (a SQLite file under .wasmwiz/,
# in-process quotas, nothing else to install), creates tenant demo with a
# key, deploys `hello`, and writes the settings every README walkthrough
# starts from to .wasmwiz/env.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/quickstart.sh [--background | --stop | --check] [--no-build]

  (no option)   build, start, deploy hello; serve in this terminal until Ctrl-C
  --background  the same, but the server keeps running in the background
                (its log in \$WASMWIZ_DATA_DIR/serve.log); stop it with --stop
  --stop        stops a server started with --background
  --check       only checks the prerequisites, naming what is missing
  --no-build    uses the binary and components already built (\$WASMWIZ_BIN,
                else target/quick/wasmwiz; \$WASMWIZ_COMPONENTS)

Needs: Rust 1.95 or later (cargo, rustc, and rustup for the wasm32-wasip2
target), a C compiler (cc) and curl. About 5 minutes on a fresh 2-core
machine, most of it compiling wasmtime; a second run starts in seconds.

Environment:
  ADDR              where tenants' routes and the API answer (127.0.0.1:8080)
  CONSOLE_ADDR      the web console (127.0.0.1:8081)
  WASMWIZ_DATA_DIR  the embedded store (.wasmwiz in the checkout)
USAGE
}

mode=foreground
build=yes
for arg in "$@"; do
    case $arg in
        -h|--help) usage; exit 0 ;;
        --background) mode=background ;;
        --stop) mode=stop ;;
        --check) mode=check ;;
        --no-build) build=no ;;
        *) usage >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
addr=${ADDR:-127.0.0.1:8080}
console=${CONSOLE_ADDR:-127.0.0.1:8081}
data=${WASMWIZ_DATA_DIR:-$root/.wasmwiz}
case $data in /*) ;; *) data=$PWD/$data ;; esac
export WASMWIZ_DATA_DIR=$data CONSOLE_ADDR=$console
pidfile=$data/serve.pid
components=${WASMWIZ_COMPONENTS:-$root/target/components}

step=0
phase() {
    step=$((step + 1))
    printf '\n[%s/5] %s\n' "$step" "$*" >&2
}

if [ "$mode" = stop ]; then
    if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
        echo "stopped the server of $data" >&2
    else
        echo "no server of $data is running" >&2
    fi
    rm -f "$pidfile"
    exit 0
fi

# --- what the build needs -------------------------------------------------
phase "checking what the build needs"
missing=()
if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    missing+=("Rust (cargo and rustc): curl --proto '=https' -sSf https://sh.rustup.rs | sh")
else
    version=$(rustc --version | awk '{print $2}')
    major=${version%%.*}
    minor=${version#*.}
    minor=${minor%%.*}
    if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 95 ]; }; then
        missing+=("Rust 1.95 or later (this is $version): rustup update stable")
    fi
    if ! command -v rustup >/dev/null \
        && ! [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]; then
        missing+=("the wasm32-wasip2 target, which needs rustup: curl --proto '=https' -sSf https://sh.rustup.rs | sh")
    fi
fi
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    missing+=("a C compiler (cc): apt-get install build-essential (Debian, Ubuntu) or dnf install gcc")
fi
command -v curl >/dev/null || missing+=("curl: apt-get install curl (Debian, Ubuntu) or dnf install curl")
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing, install and run again:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "cargo $(cargo --version | awk '{print $2}'), a C compiler and curl: all there" >&2
[ "$mode" = check ] && exit 0

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "a server of $data is already running (pid $(cat "$pidfile")): scripts/quickstart.sh --stop" >&2
    exit 1
fi

mkdir -p "$data"

# --- the binary and the examples ------------------------------------------
bin=${WASMWIZ_BIN:-$root/target/quick/wasmwiz}
if [ "$build" = yes ]; then
    phase "building wasmwiz (profile quick; about 5 minutes on 2 cores the first time, then seconds)"
    cargo build --profile quick --locked -p wasmwiz
    bin=$root/target/quick/wasmwiz
    phase "building the Rust example components"
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
    (cd examples && CARGO_TARGET_DIR=$root/target/guests \
        cargo build --locked --release --target wasm32-wasip2)
    mkdir -p "$components"
    cp "$root"/target/guests/wasm32-wasip2/release/*.wasm "$components"/
else
    phase "using the binary built before ($bin)"
    phase "using the components built before ($components)"
fi
[ -x "$bin" ] || { echo "no binary at $bin: run without --no-build" >&2; exit 1; }
[ -f "$components/hello.wasm" ] || { echo "no $components/hello.wasm: run without --no-build" >&2; exit 1; }

# --- the server --------------------------------------------------------------
phase "starting wasmwiz serve on http://$addr (store: $data)"
# A tenant named demo on the pro tier (kept if it exists), and a fresh key.
# It may deploy under /demo/... without asking; as the operator, grant it
# /hello/... too, so the example answers on http://ADDR/hello.
"$bin" admin tenant create demo --tier pro >/dev/null 2>&1 || true
"$bin" admin tenant grant demo --route '/hello/...' >/dev/null 2>&1 || true
key=$("$bin" admin key create demo 2>/dev/null)

if [ "$mode" = background ]; then
    nohup "$bin" serve --addr "$addr" >"$data/serve.log" 2>&1 &
else
    "$bin" serve --addr "$addr" &
fi
pid=$!
echo "$pid" >"$pidfile"
if [ "$mode" = foreground ]; then
    trap 'kill "$pid" 2>/dev/null || true; rm -f "$pidfile"' EXIT INT TERM
fi
until curl -fs "http://$addr/ready" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "wasmwiz serve stopped before it was ready$([ "$mode" = background ] && echo ": see $data/serve.log")" >&2
        rm -f "$pidfile"
        exit 1
    fi
    sleep 0.1
done

phase "deploying hello for tenant demo"
env=$data/env
cat >"$env" <<ENV
# Written by scripts/quickstart.sh: what every README walkthrough starts from.
export PATH="$(dirname "$bin"):\$PATH"
export WASMWIZ_URL=http://$addr
export WASMWIZ_API_KEY=$key
export WASMWIZ_DATA_DIR=$data
export WASMWIZ_COMPONENTS=$components
ENV
WASMWIZ_URL=http://$addr WASMWIZ_API_KEY=$key \
    "$bin" deploy "$components/hello.wasm" --route '/hello/...'

cat <<DONE

WasmWiz is serving on http://$addr$([ "$mode" = foreground ] && echo " (Ctrl-C to stop)" || echo " in the background (scripts/quickstart.sh --stop stops it)"). Try:

    curl http://$addr/hello

Then, in any terminal, for the wasmwiz command, tenant demo's key and the
walkthroughs of README.md:

    source $env

The web console (sign in with the key in that file): http://$console/console

DONE
if [ "$mode" = foreground ]; then
    wait "$pid"
fi
