"""What is running: the package version, the Python version and, when known, the git
commit it was built from (``ingest_build_info`` on ``/metrics``).

The commit comes from ``ingest/BUILD_COMMIT``, a one-line file the image build
writes (``docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD)``), else from
the git checkout the package is imported from (a development tree), else it is
unknown (``""``). Read once per process: a running process does not change build.
"""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["BuildInfo", "build_info"]

DISTRIBUTION = "verified-ingest"
_PACKAGE = Path(__file__).resolve().parent
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
#: What a stamped commit may be: a hash, or a describe-style name (``v1.2-3-gabc``).
_STAMP = re.compile(r"[0-9A-Za-z._+-]{1,64}")


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    python: str
    commit: str  # "" when unknown


def _git_commit(checkout: Path) -> str:
    """The commit HEAD names in ``checkout`` (a loose or packed ref), "" if none."""
    git = checkout / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            pointer = git.read_text().strip().removeprefix("gitdir:").strip()
            git = (checkout / pointer).resolve()
        head = (git / "HEAD").read_text().strip()
        if _SHA.fullmatch(head):
            return head  # detached
        ref = head.removeprefix("ref:").strip()
        loose = git / ref
        if loose.is_file():
            sha = loose.read_text().strip()
            return sha if _SHA.fullmatch(sha) else ""
        common = git / "commondir"
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        for line in (base / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _SHA.fullmatch(sha):
                return sha
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _commit(package: Path = _PACKAGE) -> str:
    try:
        stamped = (package / "BUILD_COMMIT").read_text().strip()
    except (OSError, UnicodeDecodeError):
        stamped = ""
    if stamped:
        return stamped if _STAMP.fullmatch(stamped) else ""
    return _git_commit(package.parent)


@functools.cache
def build_info() -> BuildInfo:
    """This process's build (cached)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a tree that was never installed
        version = "unknown"
    return BuildInfo(version, platform.python_version(), _commit())
