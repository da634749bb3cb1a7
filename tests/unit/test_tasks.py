"""The verification task's policy: transient faults retry, verdicts do not."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest import paths
from ingest.commit import commit_upload
from ingest.errors import DigestInvalid, StorageUnavailable
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadRecord, UploadState
from tests.unit.fakes import sha256, worker_settings
from workers import tasks
from workers.app import app


@pytest.fixture
def progress_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record progress reports instead of sending them to a result backend."""
    calls: list[dict[str, Any]] = []

    def record(
        task_id: str | None = None, state: str | None = None, meta: Any = None, **kw: Any
    ) -> None:
        calls.append({"state": state, **(meta or {})})

    monkeypatch.setattr(tasks.verify_upload, "update_state", record)
    return calls


@pytest.fixture
def storage(tmp_path: Path, progress_calls: list[dict[str, Any]]) -> Iterator[FilesystemDriver]:
    with worker_settings(tmp_path / "root") as driver:
        yield driver


def staged(driver: FilesystemDriver, data: bytes, digest: str) -> str:
    staging = Staging(driver)
    info = staging.create("unit/tasks")
    w = driver.writer(paths.upload_data_path(info.id), append=True)
    w.write(data)
    w.commit()
    w.close()
    record = staging.state(info.id)
    staging.transition(
        info.id,
        record,
        UploadState.FINISHING,
        claimed_digest=digest,
        size=len(data),
        task_id=task_of(info.id),
    )
    return info.id


def task_of(upload_id: str) -> str:
    """The task id the staged upload's finish recorded (tasks act only for it)."""
    return f"task-{upload_id}"


def test_task_is_registered_under_its_explicit_name_with_json_only() -> None:
    assert tasks.verify_upload.name == "ingest.verify_upload"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit


def test_transient_storage_faults_are_retried_then_the_upload_commits(
    storage: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"retry me" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    uid = staged(storage, data, digest)
    calls = {"n": 0}
    real = commit_upload

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise StorageUnavailable("disk hiccup", {"errno": "EIO"})
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "commit_upload", flaky)
    res = tasks.verify_upload.apply(args=(uid, digest, None), task_id=task_of(uid))
    assert res.state == "SUCCESS"
    assert isinstance(res.result, dict)
    assert res.result["status"] == "committed"
    assert calls["n"] == 3


def test_retries_are_bounded_and_the_final_failure_is_recorded(
    storage: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"never works"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    uid = staged(storage, data, digest)
    calls = {"n": 0}

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        raise StorageUnavailable("disk gone", {"errno": "EIO"})

    monkeypatch.setattr(tasks, "commit_upload", broken)
    res = tasks.verify_upload.apply(args=(uid, digest, None), task_id=task_of(uid))
    assert res.state == "FAILURE"
    assert isinstance(res.result, StorageUnavailable)
    assert calls["n"] == 1 + app.conf.ingest_settings.task_max_retries
    record: UploadRecord = Staging(storage).state(uid)
    assert record.state is UploadState.FAILED
    assert record.error is not None
    assert record.error["code"] == "UNAVAILABLE"


def test_progress_is_reported_as_a_custom_state_with_bytes_done_and_total(
    storage: FilesystemDriver,
    progress_calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ingest.commit.PROGRESS_MIN_SIZE", 0)
    data = b"p" * 5000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    uid = staged(storage, data, digest)
    assert (
        tasks.verify_upload.apply(args=(uid, digest, None), task_id=task_of(uid)).state == "SUCCESS"
    )
    assert progress_calls[0] == {
        "state": "PROGRESS",
        "upload_id": uid,
        "digest": digest,
        "done": 0,
        "total": 5000,
    }


def test_a_digest_mismatch_fails_once_without_retrying(storage: FilesystemDriver) -> None:
    uid = staged(storage, b"actual bytes", "sha256:" + "0" * 64)
    res = tasks.verify_upload.apply(args=(uid, "sha256:" + "0" * 64, None), task_id=task_of(uid))
    assert res.state == "FAILURE"
    assert isinstance(res.result, DigestInvalid)
    assert res.result.detail["computed"] == "sha256:" + hashlib.sha256(b"actual bytes").hexdigest()
    assert res.result.detail["claimed"] == "sha256:" + "0" * 64
    assert Staging(storage).state(uid).state is UploadState.FAILED
    assert (storage.root / "uploads" / uid / "data").exists()


def _received(task: Any, kwargs: dict[str, Any], **headers: Any) -> Any:
    """The request a worker builds for a message to ``task`` (protocol 2)."""
    from celery.contrib.testing.mocks import TaskMessage

    message = TaskMessage(task.name, args=("0" * 8,), kwargs=kwargs, **headers)
    return tasks.PolicyRequest(message, app=app, task=task)


@pytest.mark.parametrize("staged_size", [0, 1 << 20, 3 << 30, None, "huge", -1])
def test_the_worker_sets_a_verifications_time_limits_from_its_staged_size(
    staged_size: object,
) -> None:
    settings = app.conf.ingest_settings
    # Whatever the sender put in the headers, the worker's policy decides.
    req = _received(tasks.verify_upload, {"staged_size": staged_size}, timelimit=(999_999, 999_998))
    size = staged_size if isinstance(staged_size, int) and staged_size >= 0 else None
    hard = settings.time_limit(size)
    assert req.time_limits == (hard, tasks.soft_limit(hard))
    assert hard <= settings.max_time_limit()
    assert req.time_limits[1] < req.time_limits[0]


def test_other_tasks_get_their_base_class_time_limits() -> None:
    settings = app.conf.ingest_settings
    fsck = _received(tasks.fsck_share, {}, timelimit=(5, 4))
    assert fsck.time_limits[0] == settings.fsck_time_limit()
    prehash = _received(tasks.prehash, {}, timelimit=(5, 4))
    assert prehash.time_limits[0] == settings.max_time_limit()
    assert tasks.prehash.max_duration() < prehash.time_limits[1]


def test_each_task_takes_its_policy_from_its_base_class() -> None:
    assert (tasks.verify_upload.acks_late, tasks.verify_upload.reject_on_worker_lost) == (
        True,
        True,
    )
    assert tasks.verify_upload.max_retries == app.conf.ingest_settings.task_max_retries
    assert tasks.verify_upload.autoretry_for == (StorageUnavailable,)
    assert (tasks.prehash.acks_late, tasks.prehash.max_retries) == (False, 0)
    assert (tasks.fsck_share.acks_late, tasks.fsck_share.max_retries) == (False, 0)
    assert tasks.reconcile_uploads.acks_late is True
    # Only these decode a message's body in the consumer to set its limits.
    assert tasks.verify_upload.limits_from_arguments
    assert tasks.verify_batch.limits_from_arguments
    assert not tasks.prehash.limits_from_arguments
    assert not tasks.fsck_share.limits_from_arguments
    for task in (
        tasks.verify_upload,
        tasks.prehash,
        tasks.fsck_share,
        tasks.purge_abandoned_uploads,
    ):
        assert task.Request == "workers.tasks:PolicyRequest"


def test_the_injected_backends_leave_celerys_own_task_attributes_alone() -> None:
    # Celery reads ``queue`` (routing), ``name``, ``request``...: a property shadowing
    # one breaks every send through the task object (beat sends that way).
    for task in (tasks.verify_upload, tasks.reconcile_uploads, tasks.fsck_share):
        assert getattr(task, "queue", None) is None
        route = app.amqp.router.route({}, task.name)
        assert route["queue"].name in ("verify", "maintenance")


# -- batched verifications ------------------------------------------------------------


def batch_entry(driver: FilesystemDriver, data: bytes, digest: str) -> dict[str, Any]:
    """A finished upload and the batch entry a frontend would send for it."""
    import uuid

    staging = Staging(driver)
    info = staging.create("unit/batch")
    w = driver.writer(paths.upload_data_path(info.id), append=True)
    w.write(data)
    w.commit()
    w.close()
    task_id = str(uuid.uuid4())
    staging.transition(
        info.id,
        staging.state(info.id),
        UploadState.FINISHING,
        claimed_digest=digest,
        size=len(data),
        task_id=task_id,
    )
    return {
        "upload_id": info.id,
        "digest": digest,
        "size": None,
        "staged_size": len(data),
        "task_id": task_id,
        "repository": "unit/batch",
    }


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, Any]]:
    """Per-task outcomes the batch publishes, instead of a result backend."""
    seen: dict[str, tuple[str, Any]] = {}

    def store(task_id: str, value: Any, state: str) -> None:
        seen[task_id] = (state, value)

    monkeypatch.setattr(tasks.verify_batch, "store_outcome", store)
    return seen


def test_a_batch_commits_each_upload_and_isolates_a_bad_digest(
    storage: FilesystemDriver, published: dict[str, tuple[str, Any]]
) -> None:
    entries = [
        batch_entry(storage, b"first blob", sha256(b"first blob")),
        batch_entry(storage, b"second blob", sha256(b"something else")),  # a lie
        batch_entry(storage, b"third blob", sha256(b"third blob")),
    ]
    storage_state = Staging(storage)
    summary = tasks.verify_batch(entries)
    assert (summary["uploads"], summary["committed"]) == (3, 2)
    for entry in (entries[0], entries[2]):
        state, value = published[entry["task_id"]]
        assert state == "SUCCESS"
        assert value["status"] == "committed"
        assert storage_state.result(entry["upload_id"]) is not None
    state, error = published[entries[1]["task_id"]]
    assert state == "FAILURE"
    assert isinstance(error, DigestInvalid)
    record = storage_state.state(entries[1]["upload_id"])
    assert record.state is UploadState.FAILED
    assert record.error is not None
    assert record.error["code"] == "DIGEST_INVALID"


def test_a_transient_fault_hands_just_that_upload_to_a_task_of_its_own(
    storage: FilesystemDriver,
    published: dict[str, tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [batch_entry(storage, d, sha256(d)) for d in (b"one", b"two", b"three")]
    flaky = entries[0]["upload_id"]
    real = commit_upload

    def commit(driver: Any, upload_id: str, *args: Any, **kwargs: Any) -> Any:
        if upload_id == flaky:
            raise StorageUnavailable("disk hiccup")
        return real(driver, upload_id, *args, **kwargs)

    resent: list[str] = []
    monkeypatch.setattr(tasks, "commit_upload", commit)
    monkeypatch.setattr(tasks.verify_batch, "resend", lambda e: resent.append(e.task_id))
    summary = tasks.verify_batch(entries)
    assert resent == [entries[0]["task_id"]]
    assert summary["committed"] == 2
    assert entries[0]["task_id"] not in published  # its own task will publish it
    assert Staging(storage).state(flaky).state is UploadState.FINISHING  # not failed


@pytest.mark.parametrize(
    "entries",
    [
        [],
        "not a list",
        [{"upload_id": "x"}],
        [
            {
                **dict.fromkeys(("upload_id", "digest", "size", "staged_size", "repository")),
                "task_id": "t",
            }
        ],
    ],
)
def test_a_malformed_batch_is_refused_before_touching_storage(
    storage: FilesystemDriver, entries: Any
) -> None:
    from ingest.errors import ArgumentInvalid

    res = tasks.verify_batch.apply(args=(entries,))
    assert isinstance(res.result, ArgumentInvalid)


def test_a_batchs_time_limit_is_the_sum_of_its_uploads_capped_at_the_longest() -> None:
    settings = app.conf.ingest_settings
    entries = [{"staged_size": 1 << 20}, {"staged_size": 2 << 20}]
    limit = tasks.verify_batch.time_limits([entries], {})
    assert limit == min(
        settings.time_limit(1 << 20) + settings.time_limit(2 << 20), settings.max_time_limit()
    )
    many = [{"staged_size": settings.max_blob_size}] * 3
    assert tasks.verify_batch.time_limits([many], {}) == settings.max_time_limit()
