"""The worker counts every verification's outcome where it happens, once per attempt
(ingest.outcomes): whether or not anyone waits for it, however often the task is
delivered. Task bodies run in-process; the counters are a fakeredis
(tests/unit/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.commit import commit_upload
from ingest.errors import StorageUnavailable
from ingest.outcomes import OutcomeCounter
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadState
from tests.unit.fakes import sha256, worker_settings
from tests.unit.test_tasks import batch_entry, staged, task_of
from workers import tasks


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FilesystemDriver]:
    monkeypatch.setattr(tasks.verify_upload, "update_state", lambda *a, **k: None)
    with worker_settings(tmp_path / "root") as driver:
        yield driver


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.verify_batch, "store_outcome", lambda *a: None)


def test_a_commit_is_counted_by_the_worker(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    data = b"counted where it happens"
    uid = staged(storage, data, sha256(data))
    res = tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=task_of(uid))
    assert res.state == "SUCCESS"
    assert outcome_counter.totals() == {("committed", ""): 1}


def test_a_rejection_is_counted_with_its_code(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    uid = staged(storage, b"these bytes", sha256(b"other bytes"))
    res = tasks.verify_upload.apply(args=(uid, sha256(b"other bytes"), None), task_id=task_of(uid))
    assert res.state == "FAILURE"
    assert outcome_counter.totals() == {("rejected", "DIGEST_INVALID"): 1}


def test_a_task_delivered_twice_counts_one_outcome(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    data = b"redelivered after the worker died before its ack"
    uid = staged(storage, data, sha256(data))
    for _ in range(2):
        res = tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=task_of(uid))
        assert res.state == "SUCCESS"
    assert outcome_counter.totals() == {("committed", ""): 1}


def test_a_late_duplicate_of_another_attempt_does_not_count_a_second_commit(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    data = b"committed by the current attempt"
    uid = staged(storage, data, sha256(data))
    assert (
        tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=task_of(uid)).state
        == "SUCCESS"
    )
    # An older attempt's message turns up: it finds the upload committed (by the
    # current attempt, whose task id the result names) and returns that result.
    late = tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=str(uuid.uuid4()))
    assert late.state == "SUCCESS"
    assert outcome_counter.totals() == {("committed", ""): 1}


def test_a_refused_message_is_not_an_outcome(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    res = tasks.verify_upload.apply(args=("not-an-upload-id", "sha256:00", None))
    assert res.state == "FAILURE"
    assert outcome_counter.totals() == {}


def test_retries_count_only_the_final_outcome(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"flaky storage"
    uid = staged(storage, data, sha256(data))
    calls = {"n": 0}
    real = commit_upload

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageUnavailable("disk hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "commit_upload", flaky)
    assert (
        tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=task_of(uid)).state
        == "SUCCESS"
    )
    assert outcome_counter.totals() == {("committed", ""): 1}


@pytest.mark.usefixtures("published")
def test_a_batch_counts_each_upload_under_its_own_attempt(
    storage: FilesystemDriver, outcome_counter: OutcomeCounter
) -> None:
    entries = [
        batch_entry(storage, b"one", sha256(b"one")),
        batch_entry(storage, b"two", sha256(b"not two")),
        batch_entry(storage, b"three", sha256(b"three")),
    ]
    tasks.verify_batch(entries)
    assert outcome_counter.totals() == {("committed", ""): 2, ("rejected", "DIGEST_INVALID"): 1}
    # The batch redelivered: nothing new (each upload's attempt was counted).
    tasks.verify_batch(entries)
    assert outcome_counter.totals() == {("committed", ""): 2, ("rejected", "DIGEST_INVALID"): 1}
    assert Staging(storage).state(entries[1]["upload_id"]).state is UploadState.FAILED


def test_counters_that_do_not_answer_never_fail_a_verification(
    storage: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devtools.localredis import free_port

    dead = OutcomeCounter(f"redis://127.0.0.1:{free_port()}/0", marker_ttl=60, timeout=0.2)
    monkeypatch.setattr(tasks, "outcome_counter", lambda settings: dead)
    data = b"metrics are not the product"
    uid = staged(storage, data, sha256(data))
    res = tasks.verify_upload.apply(args=(uid, sha256(data), None), task_id=task_of(uid))
    assert res.state == "SUCCESS"
    assert Staging(storage).result(uid) is not None
