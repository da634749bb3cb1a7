#!/usr/bin/env bash
# The main job: bootstrap, start Redis and a worker, ingest a sample blob end to end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The service's dependencies only (requirements/runtime.txt): the demo runs no dev tool.
INGEST_DEPS=runtime
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m devtools.demo "$@"
