#!/usr/bin/env bash
# Looks for tests that pass or fail by chance: runs the whole suite on
# fresh clones of this repository, then chosen tests many times in a loop,
# and writes one line per run (what ran, how many passed and failed, which
# failed) to a results file. Long: hours, not minutes; not part of CI.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/flakiness.sh [-s SUITES] [-n LOOPS] [-o RESULTS] [-t TARGET] [FILTER...]

  -s SUITES   whole-suite runs, each on a fresh clone of HEAD (default 3; the
              first builds from cold, the others share its target folder)
  -t TARGET   start the first clone from a copy of this target folder
              instead of a cold build (the clones' own crates still build)
  -n LOOPS    runs of each FILTER (default 10)
  -o RESULTS  where the lines go (default target/flakiness-<time>.txt)
  FILTER      a cargo test filter run LOOPS times in a loop (default:
              conformance:: crash:: console:: cluster::)

Each failure's output is kept beside RESULTS.
USAGE
}

suites=3
loops=10
results=
seed=
while getopts "s:n:o:t:h" opt; do
    case $opt in
        s) suites=$OPTARG ;;
        n) loops=$OPTARG ;;
        o) results=$OPTARG ;;
        t) seed=$OPTARG ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(conformance:: crash:: console:: cluster::)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
results=${results:-$root/target/flakiness-$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$results")"
work=$(mktemp -d)
echo "results in $results; clones in $work" >&2

# record WHAT LOG STATUS SECONDS: one line, and the log kept on failure.
record() {
    local what=$1 log=$2 status=$3 seconds=$4 passed failed names
    passed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
    failed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
    names=$(grep -E '^test .* FAILED$' "$log" | awk '{print $2}' | paste -sd, - || true)
    printf '%s\texit %s\t%s passed\t%s failed\t%ss\t%s\n' \
        "$what" "$status" "$passed" "$failed" "$seconds" "${names:--}" | tee -a "$results"
    if [ "$status" -ne 0 ]; then
        cp "$log" "${results%.txt}-$(echo "$what" | tr ' /:' '___').log"
    fi
}

target=
for i in $(seq 1 "$suites"); do
    clone=$work/clone$i
    git clone --quiet "$root" "$clone"
    export CARGO_TARGET_DIR=${target:-$clone/target}
    if [ -z "$target" ] && [ -n "$seed" ]; then
        echo "copying $seed to $CARGO_TARGET_DIR" >&2
        cp -a "$seed" "$CARGO_TARGET_DIR"
    fi
    target=$CARGO_TARGET_DIR
    log=$work/suite$i.log
    start=$(date +%s)
    status=0
    (cd "$clone" && scripts/test.sh) >"$log" 2>&1 || status=$?
    record "suite $i (fresh clone$([ "$i" = 1 ] && [ -z "$seed" ] && echo ', cold build'))" "$log" "$status" \
        $(($(date +%s) - start))
done

clone=$work/clone1
for filter in "${filters[@]}"; do
    for i in $(seq 1 "$loops"); do
        log=$work/loop.log
        start=$(date +%s)
        status=0
        (cd "$clone" && RUST_BACKTRACE=0 cargo test --workspace --locked --test it -- "$filter") \
            >"$log" 2>&1 || status=$?
        record "$filter run $i" "$log" "$status" $(($(date +%s) - start))
    done
done
rm -rf "$work"
