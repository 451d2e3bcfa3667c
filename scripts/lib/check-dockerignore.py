#!/usr/bin/env python3
"""Checks the repository root's .dockerignore against what deploy/Dockerfile
needs: every file the build reads is in the build context, and nothing
secret, no installation data and no build output is.

The context is computed with docker-py's own .dockerignore matching (the
`docker` module, which Debian's docker-compose depends on), so no Docker
engine is needed. Usage: check-dockerignore.py [REPO_ROOT]. Exit 1 on a
problem, naming the path.
"""

import os
import sys

from docker.utils.build import exclude_paths

# What deploy/Dockerfile's `cargo build -p wasmwiz` and its COPY lines read:
# the workspace manifests, the crate (its sources, the console and OpenAPI
# files it embeds, the bench target its manifest declares), the WIT worlds it
# binds to, and the migrations it embeds and copies into the image.
NEEDED = [
    "Cargo.toml",
    "Cargo.lock",
    "host/Cargo.toml",
    "host/src/main.rs",
    "host/src/lib.rs",
    "host/src/api/openapi.json",
    "host/console/index.html",
    "host/benches/invocation.rs",
    "wit",
    "migrations/postgres",
    "migrations/sqlite",
]

# Never in the context, when they exist in the work tree.
FORBIDDEN_DIRS = ["secrets", ".wasmwiz", "backups", "target", ".git", "deploy/nginx/certs"]
FORBIDDEN_SUFFIXES = (".db", ".db-wal", ".db-shm", ".sqlite", ".sqlite3", ".pem", ".key", ".dump")


def main(root):
    with open(os.path.join(root, ".dockerignore"), encoding="utf-8") as f:
        patterns = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    context = exclude_paths(root, patterns)
    problems = []
    for need in NEEDED:
        if not os.path.exists(os.path.join(root, need)):
            problems.append(f"{need}: the build needs it but it is not in the repository (update this list)")
        elif not any(p == need or p.startswith(need + "/") for p in context):
            problems.append(f"{need}: the build needs it but .dockerignore leaves it out")
    for path in context:
        parts = path.split("/")
        if any(path == d or path.startswith(d + "/") for d in FORBIDDEN_DIRS) or "target" in parts[:-1] \
                or "node_modules" in parts or path.endswith(FORBIDDEN_SUFFIXES):
            problems.append(f"{path}: in the build context but must not be")
    for problem in problems:
        print(f"ERROR .dockerignore: {problem}")
    if not problems:
        print(f".dockerignore: {len(context)} files in the build context, everything the build needs, nothing it must not")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
