#!/bin/sh
# Build the browser editor into frontend/dist/ (committed, so that
# `pip install` alone serves it).
#
#   frontend/build.sh          install pinned dependencies if needed, rebuild dist/
#   frontend/build.sh --check  fail if the committed dist/ is stale
#   frontend/build.sh --test   also run the Node unit tests
set -eu
cd "$(dirname "$0")"
if ! command -v node >/dev/null 2>&1; then
    echo "frontend/build.sh: node (>= 18) is required" >&2
    exit 2
fi
# Install exactly the versions in package-lock.json when node_modules is
# missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
case "${1:-}" in
    --check) node build.mjs --check ;;
    --test) node build.mjs && node --test test/ ;;
    "") node build.mjs ;;
    *) echo "usage: frontend/build.sh [--check|--test]" >&2; exit 2 ;;
esac
