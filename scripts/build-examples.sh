#!/usr/bin/env bash
# Builds the example components (examples/) and the hostile test components
# (tests/guests/): the Rust ones for wasm32-wasip2, each workspace on its
# own; the Python ones with componentize-py and the JavaScript ones with
# componentize-js, each installed at its pinned version (examples/toolchains/)
# under target/toolchains. Copies every .wasm into one folder that the tests,
# the README and the benchmarks use.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/build-examples.sh [--help]

Builds examples/* and tests/guests/*: Rust for wasm32-wasip2 (release),
Python (app.py) with componentize-py, JavaScript (app.js) with
componentize-js, and copies the components to \$WASMWIZ_COMPONENTS (default:
target/components/), each named after its folder (python-kv ->
python_kv.wasm). Adds the wasm32-wasip2 target with rustup first if it is
missing; installs the Python and JavaScript toolchains (pinned in
examples/toolchains/) under target/toolchains once. Needs python3 (3.9+) with
venv, and Node.js 18+ with npm.
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

# Python and JavaScript: the toolchains, once per pinned version.
toolchains=$root/target/toolchains
pins=$root/examples/toolchains
python=$toolchains/python
if ! cmp -s "$pins/requirements.txt" "$python/requirements.txt" 2>/dev/null; then
    echo "installing the Python toolchain ($(grep -v '^#' "$pins/requirements.txt"))" >&2
    rm -rf "$python"
    python3 -m venv "$python"
    "$python/bin/pip" install --quiet --disable-pip-version-check -r "$pins/requirements.txt"
    cp "$pins/requirements.txt" "$python/requirements.txt"
fi
js=$toolchains/js
if ! cmp -s "$pins/package-lock.json" "$js/package-lock.json" 2>/dev/null; then
    echo "installing the JavaScript toolchain (@bytecodealliance/componentize-js)" >&2
    rm -rf "$js"
    mkdir -p "$js"
    cp "$pins/package.json" "$pins/package-lock.json" "$js/"
    (cd "$js" && npm ci --silent --no-audit --no-fund)
fi

# Whether $1 (a built component) is newer than the sources $2..., the WIT
# and the toolchain pins: then it is not built again.
fresh() {
    local built=$1
    shift
    [ -f "$built" ] || return 1
    [ -z "$(find "$@" "$root/wit" "$pins" -newer "$built" -print -quit 2>/dev/null)" ]
}

# Each in a copy of its folder, so builds leave nothing in the sources.
build=$root/target/guests/languages
for app in "$root"/examples/python-*/app.py "$root"/tests/guests/python-*/app.py; do
    dir=$(dirname "$app")
    name=$(basename "$dir" | tr - _)
    fresh "$out/$name.wasm" "$dir" && continue
    echo "building $name (Python)" >&2
    rm -rf "${build:?}/$name" && mkdir -p "$build/$name" && cp -r "$dir"/. "$build/$name/"
    (cd "$build/$name" &&
        "$python/bin/componentize-py" -d "$root/wit" -w wasmwiz:platform/platform \
            componentize app -o "$out/$name.wasm" >/dev/null)
done
for app in "$root"/examples/js-*/app.js "$root"/tests/guests/js-*/app.js; do
    dir=$(dirname "$app")
    name=$(basename "$dir" | tr - _)
    fresh "$out/$name.wasm" "$dir" && continue
    echo "building $name (JavaScript)" >&2
    "$js/node_modules/.bin/componentize-js" --wit "$root/wit/js" \
        --world-name wasmwiz:platform/platform -o "$out/$name.wasm" "$app" >/dev/null
done
echo "components in $out:" >&2
ls -1 "$out" >&2
