#!/usr/bin/env bash
# Instructions per in-process invocation of `hello`, counted by valgrind's
# callgrind: stable on a noisy machine (it counts instructions, not time),
# so a regression shows as a changed count. Runs the invocation harness
# twice under callgrind, with no invocation and with N, and prints
# (count(N) - count(0)) / N; then the same on one reused instance.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: benches/callgrind.sh [-n INVOCATIONS]

  -n INVOCATIONS  invocations in the measured run (default 200)

Builds the harness (cargo bench --no-run --bench invocation, the release
profile), precompiles hello, then runs it, with a pool of one slot, under
\`valgrind --tool=callgrind\` (apt-get install valgrind).
USAGE
}

count=200
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_options "n:" "$@"

command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bench_root/scripts/build-examples.sh" 2>/dev/null
harness=$(cd "$bench_root" && cargo bench --locked --no-run --bench invocation 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$bench_root/$harness" ] && harness=$bench_root/$harness
[ -x "$harness" ] || { echo "could not find the harness binary" >&2; exit 1; }
# Compiled under valgrind too: the code must suit the CPU valgrind emulates
# (which lacks some of the host's extensions).
valgrind --tool=none "$harness" precompile "$work/hello.cwasm" 2>/dev/null

instructions() {
    local n=$1 mode=${2:-} out=$work/callgrind.$1${2:+.$2}
    if ! env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE valgrind --tool=callgrind \
        --smc-check=all-non-file --callgrind-out-file="$out" \
        "$harness" invocations "$work/hello.cwasm" "$n" ${mode:+"$mode"} >"$out.log" 2>&1; then
        echo "the harness failed under valgrind:" >&2
        grep -v '^==' "$out.log" | head -20 >&2
        return 1
    fi
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

base=$(instructions 0) || exit 1
measured=$(instructions "$count") || exit 1
per=$(((measured - base) / count))
echo "instructions: $base with no invocation, $measured with $count"
echo "instructions per invocation of hello: $per"

# The same on one instance kept for reuse (max_instance_reuse above 1).
base=$(instructions 0 reused) || exit 1
measured=$(instructions "$count" reused) || exit 1
per_reused=$(((measured - base) / count))
echo "instructions per invocation of hello on a reused instance: $per_reused"
