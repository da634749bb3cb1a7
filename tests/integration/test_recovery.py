"""Recovery from a dead worker with the default settings, through real processes.

A whole worker (main process and pool) is killed with SIGKILL mid-verification.
Its message stays unacknowledged in Redis for the whole visibility timeout (about
16 minutes by default), so recovery must not wait for the broker: the verification
lease goes stale, and the reconciler (beat) or an operator's ``ingest retry`` hands
the work to another worker. No setting is shortened here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.leases import LEASE_STALE
from tests.integration.conftest import Stack, stage_large, wait_for_progress

pytestmark = pytest.mark.integration

SIZE = 512 << 20


def blob_files(stack: Stack) -> list[str]:
    root = stack.storage / "blobs"
    return sorted(str(p.relative_to(stack.storage)) for p in root.rglob("data"))


def kill_mid_verification(stack: Stack, repo: str) -> tuple[str, str, str, float]:
    """Stage SIZE bytes, finish with a sha512 claim, SIGKILL the whole worker while it
    hashes. Returns (upload id, claim, canonical digest, when it was killed)."""
    worker = stack.worker()
    ing = stack.ingest
    uid, claim, canonical = stage_large(ing, repo, SIZE)
    ticket = ing.resume(repo, uid).finish(claim)
    wait_for_progress(ing, ticket.task_id)
    worker.kill()  # SIGKILL to the main process and its pool at once
    return uid, claim, canonical, time.monotonic()


def wait_committed(stack: Stack, uid: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = stack.ingest.staging.result(uid)
        if result is not None:
            return result
        time.sleep(0.1)
    status = stack.ingest.status(uid).to_dict()
    pytest.fail(f"not committed within {timeout} s: {status}")


def assert_intact(stack: Stack, repo: str, claim: str, canonical: str) -> None:
    assert blob_files(stack) == [f"blobs/sha256/{canonical[7:9]}/{canonical[7:]}/data"]
    with stack.ingest.open(repo, claim) as blob:
        assert blob.size == SIZE
    assert not list(stack.storage.rglob(".tmp-*"))


def test_a_killed_worker_s_verification_commits_within_a_minute_of_a_new_worker_with_defaults(
    redis_url: str, tmp_path: Path
) -> None:
    stack = Stack(redis_url, tmp_path, INGEST_PREHASH_MIN_SIZE="0")  # one reader: the verify
    assert stack.settings.visibility_timeout > 900  # the default: the broker will not help
    try:
        repo = "recovery/beat"
        uid, claim, canonical, killed_at = kill_mid_verification(stack, repo)
        # The replacement runs beat too (as `ingest worker --beat` does).
        stack.worker(extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
        started = time.monotonic()
        result = wait_committed(stack, uid, timeout=90)
        after_start = time.monotonic() - started
        print(
            f"committed {after_start:.1f} s after the new worker started, "
            f"{time.monotonic() - killed_at:.1f} s after the kill"
        )
        assert after_start <= 60, after_start
        assert result["canonical_digest"] == canonical
        assert_intact(stack, repo, claim, canonical)
    finally:
        stack.close()


def test_ingest_retry_takes_over_a_verification_whose_worker_died(
    redis_url: str, tmp_path: Path
) -> None:
    stack = Stack(redis_url, tmp_path, INGEST_PREHASH_MIN_SIZE="0")
    try:
        repo = "recovery/retry"
        uid, claim, canonical, killed_at = kill_mid_verification(stack, repo)
        env = {**stack.env, "INGEST_URL": ""}

        def retry() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "ingest.cli", "retry", uid, "--no-wait"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        # While the lease may still be renewed by a live worker, retry refuses...
        early = retry()
        assert early.returncode == 3, early.stdout + early.stderr
        assert "BLOB_UPLOAD_INVALID" in early.stdout + early.stderr
        # ...and once it is provably dead (not renewed for LEASE_STALE), retry takes it.
        time.sleep(max(0.0, killed_at + LEASE_STALE + 1 - time.monotonic()))
        done = retry()
        assert done.returncode == 0, done.stdout + done.stderr
        stack.worker()
        result = wait_committed(stack, uid, timeout=60)
        assert result["canonical_digest"] == canonical
        assert stack.ingest.status(uid).attempt == 2
        assert_intact(stack, repo, claim, canonical)
    finally:
        stack.close()
