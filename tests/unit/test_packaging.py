"""What the wheel ships: the service (``ingest``, ``workers``), never the dev harness.

``devtools/`` (the demo's and the tests' private Redis and subprocesses), ``tests/`` and
``bench/`` live next to the shipped packages but outside the wheel, so nothing shipped
may import them: an installed service would fail with ModuleNotFoundError.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = ("devtools", "tests", "bench")


def _shipped() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        packages: list[str] = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"][
            "packages"
        ]
    return packages


def _imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_wheel_ships_the_service_packages_and_not_the_dev_harness() -> None:
    assert _shipped() == ["ingest", "workers"]
    assert (ROOT / "devtools" / "__init__.py").is_file()


def test_no_shipped_module_imports_the_dev_harness_the_tests_or_the_benchmarks() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for package in _shipped()
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imported(path)
        if name.split(".")[0] in NOT_SHIPPED
    ]
    assert offenders == []


def test_the_check_itself_sees_an_import_of_the_harness(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom devtools.localredis import free_port\nfrom . import x\n")
    assert _imported(module) == ["os", "devtools.localredis"]
