#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, then integration tests against a
# private redis-server and real celery worker subprocesses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The service's dependencies and the test and lint tools (requirements/dev.txt).
INGEST_DEPS=dev
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

# Real OCI clients for the frontend's integration tests, redis-cli for the compose
# health check's test, and mount/unshare for the full-disk tests' tmpfs (Debian packages).
need=()
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v mount >/dev/null 2>&1 || need+=(mount)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null \
      || echo "warning: could not install ${need[*]}; those tests will skip (or fail under CI=true)"
  else
    echo "warning: ${need[*]} missing and cannot be installed here"
  fi
fi
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== import contracts"; lint-imports
echo "== pytest"; exec python -m pytest "$@"
