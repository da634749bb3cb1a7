"""A real full disk: the storage root on an 8 MiB tmpfs, through the HTTP frontend.

Mounting a tmpfs takes CAP_SYS_ADMIN over a mount namespace. Root on a machine or VM
has it (scripts/test.sh in CI as root): the tmpfs is mounted directly. Without it (a
non-root user), the test runs again, alone, in a pytest inside ``unshare --user
--map-root-user --mount``: an unprivileged user namespace owns its own mount
namespace, where mounting a tmpfs is allowed, and the worker and the frontend that
test starts live there too, so they see the tmpfs at its path. Where neither works
(an unprivileged container whose seccomp profile refuses both mount and unshare, as
Docker's default does without ``--cap-add SYS_ADMIN``), the test skips, or fails
under CI=true, naming both reasons.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO_ROOT, Stack, unavailable

pytestmark = pytest.mark.integration

#: Set in the pytest that re-runs a test inside a user namespace.
_IN_USERNS = "INGEST_TEST_SMALL_DISK_IN_USERNS"


def _mount_tmpfs(mount: Path) -> str | None:
    """Mount an 8 MiB tmpfs on ``mount``: None if it worked, else why not."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"mount: {done.stderr.strip() or done.returncode}"


def _unshare() -> list[str] | str:
    """The command prefix that runs a command in a new user and mount namespace, as
    root there; or why this machine cannot do that."""
    binary = shutil.which("unshare")
    if binary is None:
        return "unshare: not installed (util-linux)"
    prefix = [binary, "--user", "--map-root-user", "--mount"]
    done = subprocess.run(
        [*prefix, "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return f"unshare: {done.stderr.strip() or done.returncode}"
    return prefix


def _run_in_user_namespace(
    prefix: list[str], request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> None:
    """Run this one test again in a pytest inside a user namespace; fail if it fails."""
    env = {**os.environ, _IN_USERNS: "1", "REDIS_URL": redis_url}
    run = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "pytest",
            request.node.nodeid,
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "userns"),
            "--timeout",
            "240",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, "in a user namespace:\n" + run.stdout[-6000:] + run.stderr[-2000:]
    # Exactly this test, passed: not skipped, not deselected.
    assert re.search(r"^1 passed in ", run.stdout, re.MULTILINE), run.stdout[-2000:]


@pytest.fixture
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[Path | None]:
    """An 8 MiB tmpfs, or None when the test has already run, and passed, in a user
    namespace (see the module docstring): the test then has nothing left to do."""
    mount = tmp_path / "small"
    mount.mkdir()
    problem = _mount_tmpfs(mount)
    if problem is not None:
        if os.environ.get(_IN_USERNS):
            unavailable(f"cannot mount a tmpfs even in a user namespace: {problem}")
        prefix = _unshare()
        if isinstance(prefix, str):
            unavailable(
                "a size-limited tmpfs needs root (CAP_SYS_ADMIN) or unprivileged user "
                f"namespaces, and this machine allows neither: {problem}; {prefix}"
            )
        _run_in_user_namespace(prefix, request, tmp_path, redis_url)
        yield None
        return
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
    redis_url: str, small_disk: Path | None
) -> None:
    if small_disk is None:
        return  # it ran, and passed, in a user namespace
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


def fill(mount: Path) -> Path:
    """Fill the filesystem to the last byte; returns the filler to delete later."""
    filler = mount / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb") as f:
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                break
    return filler


def wait_for_task_end(stack: Stack, task_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = stack.ingest.queue.info(task_id).state
        if state in ("SUCCESS", "FAILURE"):
            return state
        time.sleep(0.2)
    pytest.fail("the verification never ended")


def test_a_disk_full_while_linking_ends_in_a_state_that_retry_and_a_repeated_put_take(
    redis_url: str, small_disk: Path | None, tmp_path: Path
) -> None:
    if small_disk is None:
        return  # it ran, and passed, in a user namespace
    # The worker's retries run out while the disk is full, and its failure cannot be
    # written either, so storage still says "finishing". As soon as space is back, a
    # retry and a repeated finishing PUT must both go through, with no reconcile.
    # Storage on the small disk; logs elsewhere, so the worker can start on a full one.
    stack = Stack(
        redis_url,
        tmp_path / "stack",
        INGEST_STORAGE_ROOT=str(small_disk / "storage"),
        INGEST_TASK_MAX_RETRIES="2",
    )
    try:
        url = stack.frontend().url
        blobs = [os.urandom(1 << 20), os.urandom(1 << 20)]
        with httpx.Client(base_url=url, timeout=60) as client:
            locations = []
            for data in blobs:
                location = client.post("/v2/disk/link/blobs/uploads/").headers["location"]
                assert client.patch(location, content=data).status_code == 202
                put = client.put(
                    location, params={"digest": sha256(data)}, headers={"Prefer": "respond-async"}
                )
                assert put.status_code == 202
                locations.append(location)
            uids = [loc.rsplit("/", 1)[1] for loc in locations]
            tasks = [stack.ingest.staging.state(uid).task_id for uid in uids]
            filler = fill(small_disk)
            stack.worker()
            for uid, task in zip(uids, tasks, strict=True):
                assert task is not None
                assert wait_for_task_end(stack, task) == "FAILURE"
                # The outcome could not be recorded: the upload still says finishing.
                assert stack.ingest.staging.state(uid).state.value == "finishing"
            filler.unlink()  # space is back

            retried = client.post(f"/ingest/v1/uploads/{uids[0]}/retry")
            assert retried.status_code == 202, retried.text
            again = client.put(locations[1], params={"digest": sha256(blobs[1])})
            assert again.status_code == 201, again.text
            deadline = time.monotonic() + 60
            while client.get(f"/ingest/v1/uploads/{uids[0]}").json()["state"] != "committed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            for data in blobs:
                assert client.get(f"/v2/disk/link/blobs/{sha256(data)}").content == data
    finally:
        stack.close()
