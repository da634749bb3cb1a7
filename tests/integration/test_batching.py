"""Batched verifications through a real worker: one task for several small uploads,
and every upload still gets its own outcome, waiter, status and retry."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ingest.api import Ticket
from ingest.errors import DigestInvalid, VerificationTimeout
from ingest.queue import CeleryTaskQueue
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_concurrent_finishes_share_a_task_and_each_upload_keeps_its_own_outcome(
    redis_url: str, tmp_path: Path
) -> None:
    stack = Stack(redis_url, tmp_path, INGEST_BATCH_WINDOW="1s", INGEST_BATCH_MAX="8")
    stack.worker()
    try:
        ing = stack.ingest
        queue = ing.queue
        assert isinstance(queue, CeleryTaskQueue)
        batches: list[int] = []
        send_batch = queue._send_batch

        def counting(entries: Sequence[dict[str, Any]]) -> None:
            batches.append(len(entries))
            send_batch(entries)

        queue._batcher._send_many = counting
        repo = "batch/many"
        blobs = [f"small blob {i}".encode() * 100 for i in range(6)]
        uploads = []
        for data in blobs:
            up = ing.start_upload(repo)
            up.write(data)
            uploads.append(up)
        claims = [sha256(d) for d in blobs]
        claims[3] = sha256(b"not what was staged")
        warm = ing.start_upload(repo)
        warm.write(b"warm-up")
        warm.finish(sha256(b"warm-up")).wait(60)  # recent activity: the next ones batch

        def another_client_waiting() -> None:
            # Company: some other finish's outcome is awaited meanwhile.
            with contextlib.suppress(VerificationTimeout):
                queue.wait(str(uuid.uuid4()), 5)

        waiter = threading.Thread(target=another_client_waiting)
        waiter.start()
        time.sleep(0.2)
        tickets: list[Ticket | None] = [None] * len(uploads)
        start = threading.Barrier(len(uploads))

        def finish(i: int) -> None:
            start.wait()
            tickets[i] = uploads[i].finish(claims[i])

        threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(uploads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        waiter.join(10)
        assert batches, "no batch was sent"
        assert sum(batches) >= 2
        for i, ticket in enumerate(tickets):
            assert ticket is not None
            if i == 3:
                with pytest.raises(DigestInvalid) as err:
                    ticket.wait(60)
                assert err.value.detail["reason"] == "mismatch"
                continue
            result = ticket.wait(60)
            assert result["digest"] == claims[i]
            assert result["upload_id"] == uploads[i].id
            # Its own task id carries its own result, as for an unbatched upload.
            status = ing.status(uploads[i].id)
            assert (status.state, status.task_id) == ("committed", ticket.task_id)
            with ing.open(repo, claims[i]) as blob:
                assert blob.read() == blobs[i]
        bad = ing.status(uploads[3].id)
        assert bad.state == "failed"
        assert bad.error is not None
        assert bad.error["code"] == "DIGEST_INVALID"
        # A retry re-verifies just that upload, against the corrected claim.
        fixed = ing.retry(uploads[3].id, sha256(blobs[3])).wait(60)
        assert fixed["digest"] == sha256(blobs[3])
    finally:
        stack.close()
