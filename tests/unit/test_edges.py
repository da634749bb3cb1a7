"""The edges reach the core through the ``Ingest`` facade's public operations only.

The import contracts (``lint-imports``, pyproject.toml) keep modules apart; this
checks what an import cannot show: that a frontend does not reach *into* the facade
(its stores, its driver, its private methods).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDGES = sorted([*(ROOT / "ingest" / "http").glob("*.py"), ROOT / "ingest" / "cli.py"])
#: The facade's internals: what it composes, not what it offers.
INTERNALS = {"staging", "blobs", "driver", "queue"}


def _reaches_in(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
            continue
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if node.attr in INTERNALS or private:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", EDGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_edge_uses_only_the_facades_public_operations(path: Path) -> None:
    assert _reaches_in(ast.parse(path.read_text())) == []


def test_the_check_sees_a_frontend_reaching_into_the_facade() -> None:
    bad = "def h(ing):\n    ing._finish(1)\n    return ing.staging.size(2)\n"
    assert _reaches_in(ast.parse(bad)) == ["line 2: ._finish", "line 3: .staging"]
