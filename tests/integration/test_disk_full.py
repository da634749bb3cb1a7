"""A real full disk: the storage root on an 8 MiB tmpfs, through the HTTP frontend."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    patch = client.patch(location, content=data)
    if patch.status_code != 202:
        return patch
    return client.put(location, params={"digest": sha256(data)})


def test_a_full_disk_is_a_clear_503_with_nothing_half_visible_and_space_recovers(
    redis_url: str, small_disk: Path
) -> None:
    stack = Stack(redis_url, small_disk)
    try:
        stack.worker()
        url = stack.frontend().url
        first, too_big, later = os.urandom(3 << 20), os.urandom(6 << 20), os.urandom(4 << 20)
        with httpx.Client(base_url=url, timeout=60) as client:
            assert push(client, "disk/full", first).status_code == 201

            location = client.post("/v2/disk/full/blobs/uploads/").headers["location"]
            patch = client.patch(location, content=too_big)
            assert patch.status_code == 503
            error = patch.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert error["detail"]["errno"] == "ENOSPC"
            assert client.head(f"/v2/disk/full/blobs/{sha256(too_big)}").status_code == 404
            assert not list((stack.storage / "blobs").rglob(sha256(too_big)[7:]))
            # The upload kept what fit, durably, and says so.
            status = client.get(location)
            assert status.status_code == 204

            # The client gives up on it: cancelling frees the space.
            assert client.delete(location).status_code == 204
            assert push(client, "disk/full", later).status_code == 201
            assert client.get(f"/v2/disk/full/blobs/{sha256(later)}").content == later
            assert client.get(f"/v2/disk/full/blobs/{sha256(first)}").content == first
    finally:
        stack.close()
