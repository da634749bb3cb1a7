"""The core never imports Celery, Redis, Kombu, click or a web framework (checked in a
fresh interpreter, like click's tests/test_imports.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("celery", "redis", "kombu", "click", "starlette")


def _imported_forbidden(imports: str) -> list[str]:
    code = f"{imports}; import sys; print([m for m in {FORBIDDEN!r} if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    value = ast.literal_eval(out.stdout.strip())
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_importing_the_core_pulls_in_no_celery_redis_or_frontend_libraries() -> None:
    imports = (
        "import ingest, ingest.api, ingest.commit, ingest.uploads, ingest.blobs, "
        "ingest.storage.filesystem"
    )
    assert _imported_forbidden(imports) == []


@pytest.mark.parametrize("module", ["ingest.queue", "ingest.config", "ingest.errors"])
def test_importing_a_seam_module_alone_pulls_in_no_celery(module: str) -> None:
    assert _imported_forbidden(f"import {module}") == []


def test_the_check_itself_sees_a_forbidden_import() -> None:
    assert _imported_forbidden("import ingest.queue, celery") == ["celery"]
