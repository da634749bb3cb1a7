"""A clone is self-contained: docs, benchmarks and scripts name only what is in it.

The benchmarks' peer configs live in ``bench/peers/`` (the path of another one is a
command-line option or an environment variable, and a missing one is a clear error),
the TarSum specification in ``docs/``, and every path the docs give as part of the
project exists in it. The storage docs describe the key layout the code produces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import paths
from ingest.digests import parse_digest
from ingest.storage import base
from ingest.storage.filesystem import FilesystemDriver

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "var", "__pycache__", ".mypy_cache", ".ruff_cache"}
SKIP_DIRS |= {".pytest_cache", ".hypothesis", "vectors", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".in", ".cfg", ".ini"}
TEXT_NAMES = {"Dockerfile", ".dockerignore", "run"}
#: Paths of the workspace this project was developed in, outside the repository.
OUTSIDE = re.compile(r"/work/|\.\./shared\b|\bshared/(anchors|specs|vectors|hooks)\b|\.mirror/")
#: A path given as part of the project in a doc: `ingest/...`, `docs/...`, ...
PROJECT_PATH = re.compile(
    r"`((?:ingest|workers|tests|docs|bench|scripts|devtools|requirements|\.ci)/[\w./-]*)`"
)
RELATIVE_PATH = re.compile(r"`(\.\./[\w./-]+)`")


def _text_files() -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                found.append(path)
    return found


def _docs() -> list[Path]:
    return [p for p in _text_files() if p.suffix == ".md"] + [
        ROOT / "tests" / "vectors" / "tarsum" / "README.md"
    ]


def test_nothing_refers_to_paths_outside_the_repository() -> None:
    here = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _text_files()
        if path.resolve() != here
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_check_sees_such_a_reference() -> None:
    assert OUTSIDE.search("see /work/shared/anchors/go-registry.yml")
    assert OUTSIDE.search("a copy of `shared/vectors/tarsum/`")
    assert OUTSIDE.search("docker-registry serve ../shared/anchors/x.yml")
    assert not OUTSIDE.search("one shared storage/ for every worker; network/ and homework/")


def test_every_project_path_the_docs_name_exists() -> None:
    missing: list[str] = []
    for doc in _docs():
        text = doc.read_text()
        for match in PROJECT_PATH.finditer(text):
            if not (ROOT / match.group(1).rstrip("/")).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {match.group(1)}")
        for match in RELATIVE_PATH.finditer(text):
            target = (doc.parent / match.group(1)).resolve()
            if ROOT not in target.parents or not target.exists():
                missing.append(f"{doc.relative_to(ROOT)}: {match.group(1)}")
    assert missing == []


def test_the_tarsum_specification_ships_with_the_code() -> None:
    spec = ROOT / "docs" / "tarsum-spec.md"
    assert spec.read_text().count("## ") >= 10
    assert "docs/tarsum-spec.md" in (ROOT / "docs" / "tarsum.md").read_text()


def test_the_benchmark_peers_configs_are_in_the_repository() -> None:
    peers = ROOT / "bench" / "peers"
    for name in ("go-registry.yml", "go-registry-v3.yml"):
        text = (peers / name).read_text()
        # bench_push.py rewrites exactly one of each for the v3 peer.
        assert len(re.findall(r"^\s*rootdirectory:", text, re.MULTILINE)) == 1, name
        assert len(re.findall(r"^\s*addr:", text, re.MULTILINE)) == 1, name
    assert os.access(peers / "build_registry_v3.sh", os.X_OK)


def _bench_push(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_push.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_benchmarks_default_to_the_configs_in_the_repository() -> None:
    run = _bench_push("--help")
    assert run.returncode == 0, run.stderr
    help_text = " ".join(run.stdout.split())
    assert "bench/peers/go-registry.yml" in help_text
    assert "bench/peers/go-registry-v3.yml" in help_text


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--peers", "2.8", "--go-config", "/nonexistent/go.yml"), {}, "--go-config"),
        (("--peers", "2.8"), {"BENCH_GO_CONFIG": "/nonexistent/go.yml"}, "--go-config"),
        (("--peers", "v3", "--v3-config", "/nonexistent/go.yml"), {}, "--v3-config"),
    ],
)
def test_a_missing_peer_config_stops_the_benchmark_naming_it(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    run = _bench_push(*args, **env)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "/nonexistent/go.yml does not exist" in run.stderr
    assert named in run.stderr


def test_the_storage_docstring_shows_the_keys_the_code_builds(tmp_path: Path) -> None:
    doc = base.__doc__ or ""
    example = re.search(r"keys such as ``(/[^`]+)``", doc)
    assert example is not None
    hexdigest = "ab12" + "0" * 60
    key = paths.blob_data_path(parse_digest(f"sha256:{hexdigest}"))
    assert re.fullmatch(re.escape(example.group(1)).replace("…", "[0-9a-f]*"), key), key
    # ... directly below the filesystem driver's root: no distribution-style prefix.
    driver = FilesystemDriver(tmp_path)
    driver.put_content(key, b"x")
    assert (tmp_path / "blobs" / "sha256" / "ab" / hexdigest / "data").read_bytes() == b"x"
    assert "/docker/registry/v2/" not in (ROOT / "README.md").read_text()
