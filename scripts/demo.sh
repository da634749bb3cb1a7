#!/usr/bin/env bash
# The main job: bootstrap, start Redis and a worker, ingest a sample blob end to end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m devtools.demo "$@"
