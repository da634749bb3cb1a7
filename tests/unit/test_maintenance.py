"""Purge of abandoned uploads and the reconciler of lost verifications."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from ingest import locks, paths
from ingest.config import Settings
from ingest.errors import TooManyRequests
from ingest.leases import LEASE_STALE, Lease, read_lease, write_lease
from ingest.maintenance import purge_uploads, reconcile
from ingest.queue import TaskInfo
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadState, UploadWriter
from tests.unit.fakes import make_ingest, sha256


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def touch_data(driver: FilesystemDriver, upload_id: str, mtime: float) -> None:
    os.utime(driver.root / "uploads" / upload_id / "data", (mtime, mtime))


def test_purge_judges_by_last_activity_not_start_time(driver: FilesystemDriver) -> None:
    clock = Clock()
    staging = Staging(driver, clock=clock)
    old_but_active = staging.create("purge/a")
    idle = staging.create("purge/a")
    # Both started long ago; one still received bytes recently.
    touch_data(driver, old_but_active.id, clock.now + 90_000)
    touch_data(driver, idle.id, clock.now)
    summary = purge_uploads(driver, older_than=3600, now=clock.now + 90_100)
    assert [r["upload_id"] for r in summary.removed] == [idle.id]
    assert summary.kept_recent == 1
    assert staging.list_ids() == [old_but_active.id]


def test_purge_never_touches_finishing_or_verified_uploads(driver: FilesystemDriver) -> None:
    clock = Clock()
    staging = Staging(driver, clock=clock)
    ids = []
    for state in (UploadState.FINISHING, UploadState.VERIFIED, UploadState.FAILED):
        info = staging.create("purge/b")
        staging.transition(info.id, staging.state(info.id), state)
        touch_data(driver, info.id, clock.now)
        ids.append(info.id)
    summary = purge_uploads(driver, older_than=3600, now=clock.now + 10_000)
    assert summary.skipped_busy == 2
    assert [r["upload_id"] for r in summary.removed] == [ids[2]]
    assert sorted(staging.list_ids()) == sorted(ids[:2])


def test_purge_dry_run_reports_without_removing(driver: FilesystemDriver) -> None:
    clock = Clock()
    staging = Staging(driver, clock=clock)
    info = staging.create("purge/c")
    w = UploadWriter(staging, info)
    w.write(b"x" * 1234)
    w.close()
    touch_data(driver, info.id, clock.now)
    summary = purge_uploads(driver, older_than=3600, now=clock.now + 3_700, dry_run=True)
    assert summary.to_dict()["removed_count"] == 1
    assert summary.bytes_freed == 1234
    assert staging.list_ids() == [info.id]


def test_purge_removes_half_created_sessions_by_age(driver: FilesystemDriver) -> None:
    uid = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"
    driver.put_content(paths.upload_info_path(uid), b"{}")  # crash before state.json
    summary = purge_uploads(driver, older_than=3600, now=os.path.getmtime(driver.root) + 10_000)
    assert [r["state"] for r in summary.removed] == ["incomplete"]


def test_the_purge_lock_admits_one_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        "redis.Redis.from_url", lambda url, **kw: fakeredis.FakeRedis(server=server)
    )
    with (
        locks.exclusive("redis://x", "purge", ttl=60),
        pytest.raises(TooManyRequests),
        locks.exclusive("redis://x", "purge", ttl=60),
    ):
        pass  # pragma: no cover - the second runner never gets here
    with locks.exclusive("redis://x", "purge", ttl=60):
        pass  # released: the next run gets it


class Backend:
    """TaskInfo states a result backend would report, per task id."""

    def __init__(self, states: dict[str, TaskInfo]) -> None:
        self.states = states

    def __call__(self, task_id: str) -> TaskInfo:
        return self.states.get(task_id, TaskInfo(task_id, "PENDING"))


def finishing_upload(driver: FilesystemDriver, data: bytes) -> tuple[str, str]:
    ing, _queue = make_ingest(driver)
    up = ing.start_upload("reconcile/x")
    up.write(data)
    ticket = up.finish(sha256(data))
    return up.id, ticket.task_id


def lease(driver: FilesystemDriver, upload_id: str, task_id: str, renewed_at: float) -> None:
    write_lease(driver, paths.upload_verify_lease_path(upload_id), Lease(task_id, renewed_at))


def test_reconcile_requeues_lost_tasks_under_the_same_id_and_leaves_live_ones(
    driver: FilesystemDriver,
) -> None:
    lost_id, lost_task = finishing_upload(driver, b"lost")
    live_id, live_task = finishing_upload(driver, b"live")
    _, queue = make_ingest(driver)
    lease(driver, live_id, live_task, renewed_at=2e10 - 1)  # its worker renews it
    backend: dict[str, TaskInfo] = {live_task: TaskInfo(live_task, "PROGRESS", progress={})}
    queue.info = Backend(backend)  # type: ignore[method-assign]
    summary = reconcile(driver, queue, Settings(), grace=60, now=2e10)
    assert [(r["upload_id"], r["reason"]) for r in summary.requeued] == [(lost_id, "lost")]
    assert summary.in_flight == 1
    assert [(c.upload_id, c.task_id, c.digest) for c in queue.calls] == [
        (lost_id, lost_task, sha256(b"lost"))
    ]
    assert queue.wait(lost_task, 1)["status"] == "committed"
    # Committed uploads are not scanned again; the live one is still left alone.
    again = reconcile(driver, queue, Settings(), grace=60, now=2e10)
    assert again.requeued == []
    assert (again.scanned, again.in_flight) == (1, 1)


def test_a_verification_whose_worker_died_is_requeued_at_once_whatever_the_grace(
    driver: FilesystemDriver,
) -> None:
    uid, task = finishing_upload(driver, b"worker died")
    _, queue = make_ingest(driver)
    started = time.time()
    lease(driver, uid, task, renewed_at=started)
    # Its PROGRESS is stale too, but the lease is what counts.
    queue.info = Backend({task: TaskInfo(task, "PROGRESS", progress={})})  # type: ignore[method-assign]
    alive = reconcile(driver, queue, Settings(), grace=3600, now=started + LEASE_STALE - 1)
    assert (alive.requeued, alive.in_flight) == ([], 1)
    dead = reconcile(driver, queue, Settings(), grace=3600, now=started + LEASE_STALE + 1)
    assert [(r["upload_id"], r["reason"]) for r in dead.requeued] == [(uid, "lease-expired")]
    assert [c.task_id for c in queue.calls] == [task]
    handed = read_lease(driver, paths.upload_verify_lease_path(uid))
    assert handed is not None
    assert handed.requeued
    # The re-sent task is queued: later reconciles wait for it instead of re-sending.
    later = reconcile(driver, queue, Settings(), grace=3600, now=started + 600)
    assert (later.requeued, later.in_flight) == ([], 1)
    assert len(queue.calls) == 1
    assert queue.wait(task, 1)["status"] == "committed"
    done = reconcile(driver, queue, Settings(), grace=3600, now=started + 7200)
    assert (done.scanned, done.requeued) == (0, [])  # committed: nothing left to judge


def test_a_stale_lease_of_an_earlier_attempt_is_no_evidence_about_the_current_one(
    driver: FilesystemDriver,
) -> None:
    uid, _ = finishing_upload(driver, b"retried")
    _, queue = make_ingest(driver)
    lease(driver, uid, "an-earlier-attempt", renewed_at=0.0)
    summary = reconcile(driver, queue, Settings(), grace=3600, now=time.time() + 60)
    assert (summary.requeued, summary.in_flight) == ([], 1)
    assert queue.calls == []


def test_a_retrying_task_without_a_lease_is_left_to_its_backoff(driver: FilesystemDriver) -> None:
    _, task = finishing_upload(driver, b"retrying")
    _, queue = make_ingest(driver)
    queue.info = Backend({task: TaskInfo(task, "RETRY")})  # type: ignore[method-assign]
    summary = reconcile(driver, queue, Settings(), grace=60, now=2e10)
    assert (summary.requeued, summary.in_flight) == ([], 1)


def test_reconcile_respects_the_grace_period_and_dry_run(driver: FilesystemDriver) -> None:
    uid, _ = finishing_upload(driver, b"young")
    _, queue = make_ingest(driver)
    young = reconcile(driver, queue, Settings(), grace=3600)
    assert young.requeued == []
    assert young.in_flight == 1
    dry = reconcile(driver, queue, Settings(), grace=60, now=2e10, dry_run=True)
    assert [r["upload_id"] for r in dry.requeued] == [uid]
    assert queue.calls == []


def test_reconcile_records_a_failure_the_backend_knows_but_storage_missed(
    driver: FilesystemDriver,
) -> None:
    uid, task = finishing_upload(driver, b"failed")
    _, queue = make_ingest(driver)
    error: dict[str, Any] = {"code": "DIGEST_INVALID", "message": "mismatch", "detail": {}}
    queue.info = Backend({task: TaskInfo(task, "FAILURE", error=error)})  # type: ignore[method-assign]
    summary = reconcile(driver, queue, Settings(), grace=60, now=2e10)
    assert summary.recorded_failures == 1
    record = Staging(driver).state(uid)
    assert record.state is UploadState.FAILED
    assert record.error is not None
    assert record.error["code"] == "DIGEST_INVALID"


def test_commits_racing_purges_and_unlinks_never_leave_a_link_without_its_blob(
    driver: FilesystemDriver,
) -> None:
    import threading

    from ingest.blobs import BlobStore
    from ingest.commit import commit_upload
    from ingest.digests import parse_digest

    ing, _ = make_ingest(driver)
    blobs = [os.urandom(20_000) for _ in range(6)]
    jobs = []
    for i in range(30):
        data = blobs[i % len(blobs)]
        up = ing.start_upload(f"race/r{i % 3}")
        up.write(data)
        ticket = up.finish(sha256(data))
        jobs.append((up.id, sha256(data), ticket.task_id, f"race/r{i % 3}"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def disturb() -> None:
        store = BlobStore(driver)
        while not stop.is_set():
            try:
                # The floor's cut-off, a day from now: every idle upload is old.
                purge_uploads(driver, older_than=3600, now=time.time() + 86_400)
                for data in blobs:
                    for repo in ("race/r0", "race/r1", "race/r2"):
                        with contextlib.suppress(Exception):
                            store.unlink(repo, parse_digest(sha256(data)))
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)
                return

    t = threading.Thread(target=disturb)
    t.start()
    try:
        results = [
            commit_upload(driver, uid, parse_digest(d), None, task_id=tid)
            for uid, d, tid, _ in jobs
        ]
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert all(r["status"] == "committed" for r in results)
    # The invariant: whatever survived the unlinks names a whole blob.
    for link in (driver.root / "repositories").rglob("link"):
        hexd = link.read_text().strip().split(":", 1)[1]
        blob = driver.root / "blobs" / "sha256" / hexd[:2] / hexd / "data"
        assert blob.is_file()
        assert blob.stat().st_size == 20_000
