#!/usr/bin/env bash
# Builds the example components (examples/) and the hostile test components
# (tests/guests/) for wasm32-wasip2, each workspace on its own, and copies
# every .wasm into one folder that the tests, the README and the benchmarks
# use.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/build-examples.sh [--help]

Builds examples/* and tests/guests/* for wasm32-wasip2 (release) and copies
the components to \$WASMWIZ_COMPONENTS (default: target/components/).
Adds the wasm32-wasip2 target with rustup first if it is missing.
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${WASMWIZ_COMPONENTS:-$root/target/components}
target_dir=$root/target/guests

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
fi

for workspace in examples tests/guests; do
    echo "building $workspace" >&2
    (cd "$root/$workspace" &&
        CARGO_TARGET_DIR=$target_dir cargo build --locked --quiet --release --target wasm32-wasip2)
done

mkdir -p "$out"
cp "$target_dir"/wasm32-wasip2/release/*.wasm "$out"/
echo "components in $out:" >&2
ls -1 "$out" >&2
