#!/usr/bin/env bash
# Lint (ruff), then run the default (fast) test suite; pytest's exit 5 ("no tests ran") counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check . || { echo "test.sh: ruff found problems (fix them, or run .venv/bin/ruff check --fix .)" >&2; exit 1; }
.venv/bin/pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$status"
