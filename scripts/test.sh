#!/usr/bin/env bash
# Runs the whole test suite: builds the guest components, then every test of
# the host (unit and integration) against real components over real sockets.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/test.sh [--help] [CARGO TEST ARGS...]

Builds the components (scripts/build-examples.sh), then runs
\`cargo test --workspace\` with any extra arguments passed through, e.g.
\`scripts/test.sh run::\` to run the tests of \`wasmwiz run\` only.
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-examples.sh
cargo test --workspace --locked -- "$@"
