#!/usr/bin/env bash
# Runs the whole test suite: builds the guest components, then every test of
# the host (unit and integration) against real components over real sockets.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/test.sh [--help] [CARGO TEST ARGS...]

Builds the components (scripts/build-examples.sh), installs the browser
tests' packages (npm ci in tests/browser; they drive /usr/bin/chromium, or
\$CHROMIUM) and Schemathesis (tests/api/requirements.txt), then runs
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
# The console's browser tests (host/tests/it/console.rs) run Playwright from
# tests/browser, at the version its lock file pins.
browser=tests/browser
if [ ! -x "$browser/node_modules/.bin/playwright" ] \
    || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
    (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error)
fi
# The API conformance run (host/tests/it/conformance.rs) uses Schemathesis,
# at the version tests/api/requirements.txt pins, in a virtualenv of its own.
st=target/toolchains/schemathesis
if ! cmp -s tests/api/requirements.txt "$st/requirements.txt"; then
    rm -rf "$st"
    python3 -m venv "$st"
    "$st/bin/pip" install --quiet --disable-pip-version-check -r tests/api/requirements.txt
    cp tests/api/requirements.txt "$st/requirements.txt"
fi
# A failing test's message, not a backtrace, is what a reader of the output
# needs (and long diagnostics go to target/test-logs/, see
# host/tests/it/helpers.rs `kept`): WASMWIZ_TEST_BACKTRACE=1 brings them back.
export RUST_BACKTRACE="${WASMWIZ_TEST_BACKTRACE:-0}"
# The whole output is kept; if anything fails, each failed test's own
# message is printed again at the end, ahead of the long diagnostics it
# quotes, so the reason is the first thing a reader of CI's output sees.
mkdir -p target/test-logs
output=target/test-logs/cargo-test.log
status=0
cargo test --workspace --locked -- "$@" 2>&1 | tee "$output" || status=$?
if [ "$status" -ne 0 ]; then
    python3 scripts/lib/failed-tests.py "$output" >&2
fi
exit "$status"
