#!/usr/bin/env bash
# Coverage-guided fuzzing of every input a tenant or a client controls
# (fuzz/fuzz_targets/), with cargo-fuzz and libFuzzer on stable Rust
# (`--sanitizer none`: no nightly toolchain here; the code under test is
# safe Rust, so panics, hangs and bounds are what is looked for).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/fuzz.sh [-t SECONDS] [-j JOBS] [TARGET...]

Runs each TARGET (default: all of fuzz/fuzz_targets) for SECONDS (default
600) with libFuzzer, JOBS targets at a time (default 1). New inputs that
add coverage go to fuzz/corpus/TARGET; a crash, a hang (over 10 s) or an
out-of-memory (over 4 GiB) is saved under fuzz/artifacts/TARGET and fails
the script. The upload target also starts from the components in
target/components (scripts/build-examples.sh). Prints, per target:
executions, executions per second, coverage (edges), features, corpus
size and findings. Installs cargo-fuzz $CARGO_FUZZ_VERSION once.
USAGE
}

CARGO_FUZZ_VERSION=0.13.1
seconds=600 jobs=1
while getopts "t:j:h" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        j) jobs=$OPTARG ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer none --release

logs=$root/target/fuzz-logs
mkdir -p "$logs"
run_one() {
    local target=$1 extra=()
    mkdir -p "corpus/$target" "artifacts/$target"
    if [ "$target" = upload ] && [ -d "$root/target/components" ]; then
        extra=("$root/target/components")
    fi
    cargo fuzz run --sanitizer none --release "$target" "corpus/$target" "${extra[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1
}

failed=0
pids=()
for target in "${targets[@]}"; do
    run_one "$target" &
    pids+=("$!")
    if [ ${#pids[@]} -ge "$jobs" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done

printf '%-16s %12s %8s %6s %8s %7s %s\n' target executions exec/s cov features corpus findings
for target in "${targets[@]}"; do
    log=$logs/$target.log
    execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
    rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    corpus=$(find "corpus/$target" -type f | wc -l)
    findings=$(find "artifacts/$target" -type f | wc -l)
    printf '%-16s %12s %8s %6s %8s %7s %s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
        "${ft:-?}" "$corpus" "$findings"
done
if [ "$failed" -ne 0 ]; then
    echo "a target failed: see $logs and fuzz/artifacts" >&2
    exit 1
fi
