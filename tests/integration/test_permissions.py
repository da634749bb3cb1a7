"""Least privilege on disk: what a real frontend and worker create is private."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_staged_committed_and_recorded_files_are_private_and_blobs_read_only(stack: Stack) -> None:
    stack.worker()
    url = stack.frontend().url
    data, staged = os.urandom(3 << 20), os.urandom(1 << 20)
    with httpx.Client(base_url=url, timeout=60) as client:
        location = client.post("/v2/perm/repo/blobs/uploads/").headers["location"]
        assert client.patch(location, content=data).status_code == 202
        assert client.put(location, params={"digest": sha256(data)}).status_code == 201
        open_upload = client.post("/v2/perm/repo/blobs/uploads/").headers["location"]
        assert client.patch(open_upload, content=staged).status_code == 202

    files = [p for p in stack.storage.rglob("*") if p.is_file()]
    dirs = [p for p in stack.storage.rglob("*") if p.is_dir()]
    assert files
    assert dirs
    blob = stack.storage / "blobs" / "sha256" / sha256(data)[7:9] / sha256(data)[7:] / "data"
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o440 if path == blob else 0o640
        assert mode == want, f"{path.relative_to(stack.storage)}: {mode:#o}"
    for path in dirs:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o750, f"{path.relative_to(stack.storage)}: {mode:#o}"


def test_the_file_mode_setting_reaches_every_process(redis_url: str, tmp_path: Path) -> None:
    stack = Stack(redis_url, tmp_path, INGEST_FILE_MODE="0600", INGEST_DIR_MODE="0700")
    try:
        stack.worker()
        url = stack.frontend().url
        data = os.urandom(1 << 20)
        with httpx.Client(base_url=url, timeout=60) as client:
            location = client.post("/v2/perm/setting/blobs/uploads/").headers["location"]
            assert (
                client.put(location, params={"digest": sha256(data)}, content=data).status_code
                == 201
            )
        modes = {stat.S_IMODE(p.stat().st_mode) for p in stack.storage.rglob("*")}
        assert modes <= {0o600, 0o400, 0o700}, sorted(oct(m) for m in modes)
        assert 0o400 in modes  # the committed blob
    finally:
        stack.close()
