"""Prints, for each test that failed in a `cargo test` log, its own message
first: the test's name, where it panicked and the assertion's words, before
the long diagnostics (server logs, tool reports) that the message carries
after them. Used by scripts/test.sh when the suite fails, so the reason for
a red CI run is the first thing a reader sees, not the 200th line of a log.

Usage: python3 scripts/lib/failed-tests.py CARGO_TEST_LOG
"""

import re
import sys

# Lines of a failure's message kept before the diagnostics it quotes.
MESSAGE_LINES = 12
# Where a message's quoted diagnostics begin (helpers.rs `kept`, a log).
DIAGNOSTICS = re.compile(r"^\[last \d+ lines|^--- server log ---|^server log:|^\d{4}-\d\d-\d\dT\d\d:")


def main(path: str) -> int:
    text = open(path, encoding="utf-8", errors="replace").read()
    failed = []
    for block in re.split(r"\n(?=---- )", text):
        match = re.match(r"---- (\S+) stdout ----\n", block)
        if not match:
            continue
        name = match.group(1)
        body = block[match.end():]
        lines = []
        for line in body.splitlines():
            if not lines and not line.strip():
                continue
            if DIAGNOSTICS.search(line) or line.startswith("failures:"):
                lines.append("    [... diagnostics: see the full output above or target/test-logs/]")
                break
            lines.append("    " + line)
            if len(lines) >= MESSAGE_LINES:
                lines.append("    [...]")
                break
        failed.append((name, lines))
    if not failed:
        return 0
    print("\n=== failed tests, each with its own message (details follow in the full output above)")
    for name, lines in failed:
        print(f"\n--- {name}")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
