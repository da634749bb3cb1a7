#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, then integration tests against a
# private redis-server and real celery worker subprocesses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; exec python -m pytest "$@"
