"""Prehash: a worker hashes an upload while it grows; the commit takes its record."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest import commit, paths, prehash
from ingest.api import Ingest
from ingest.commit import commit_upload
from ingest.config import Settings
from ingest.digests import parse_digest
from ingest.errors import DigestInvalid, StorageUnavailable
from ingest.leases import Lease, read_lease, write_lease
from ingest.prehash import Prehashed, await_prehash, prehash_upload, read_prehash
from ingest.storage.base import PathNotFound, StorageDriver
from ingest.uploads import UploadState
from tests.unit.fakes import DRIVER_KINDS, RecordingQueue, make_driver, make_ingest, sha256

REPO = "library/prehash"
PARTS = [bytes([i]) * (3000 + i) for i in range(1, 8)]
DATA = b"".join(PARTS)


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


@pytest.fixture(autouse=True)
def small_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # Commits look for a prehash only above 8 MiB; the tests use small blobs.
    monkeypatch.setattr(prehash, "LOOKUP_MIN_SIZE", 0)


class Clock:
    """A fake monotonic + wall clock that only moves when the code under test sleeps,
    and lets a test act (write, finish, cancel) at each sleep."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.t = 1000.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.sleeps += 1
        if self.on_sleep is not None:
            self.on_sleep(self.sleeps)


def _run(driver: StorageDriver, upload_id: str, clock: Clock, **kw: Any) -> dict[str, Any]:
    return prehash_upload(
        driver,
        upload_id,
        task_id="pre-1",
        sleep=clock.sleep,
        clock=clock,
        now=clock,
        chunk_size=4096,
        **kw,
    )


def _growing_upload(driver: StorageDriver, digest: str | None = None) -> tuple[Ingest, str, Clock]:
    """An upload that receives one more part each time the prehash sleeps, then is
    finished with ``digest`` (the right one by default)."""
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(PARTS[0])
    pending = list(PARTS[1:])

    def act(_: int) -> None:
        if pending:
            h = ing.resume(REPO, up.id)
            h.write(pending.pop(0))
            h.close()
        elif ing.staging.state(up.id).state is UploadState.OPEN:
            ing.finish(REPO, up.id, digest or sha256(DATA))

    return ing, up.id, Clock(act)


def test_the_prehash_follows_a_growing_upload_and_records_the_finished_size(
    driver: StorageDriver,
) -> None:
    _, uid, clock = _growing_upload(driver)
    summary = _run(driver, uid, clock)
    assert summary["status"] == "hashed"
    assert summary["bytes"] == len(DATA)
    assert read_prehash(driver, uid) == Prehashed(len(DATA), sha256(DATA))
    with pytest.raises(PathNotFound):
        driver.stat(paths.upload_prehash_lease_path(uid))


def test_the_commit_takes_the_prehash_instead_of_reading_the_bytes_again(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ing, uid, clock = _growing_upload(driver)
    _run(driver, uid, clock)

    def no_second_read(*a: object, **kw: object) -> None:
        raise AssertionError("the staged bytes were read again")

    monkeypatch.setattr(commit, "compute_digests", no_second_read)
    result = commit_upload(driver, uid, parse_digest(sha256(DATA)))
    assert result["prehashed"] is True
    assert result["canonical_digest"] == sha256(DATA)
    with ing.open(REPO, sha256(DATA)) as blob:
        assert blob.read() == DATA


def test_a_wrong_claim_is_judged_by_a_full_read_and_a_corrected_retry_commits(
    driver: StorageDriver,
) -> None:
    wrong = sha256(b"something else")
    ing, uid, clock = _growing_upload(driver, wrong)
    _run(driver, uid, clock)
    with pytest.raises(DigestInvalid) as exc:
        commit_upload(driver, uid, parse_digest(wrong))
    assert exc.value.detail["computed"] == sha256(DATA)
    assert ing.staging.state(uid).state is UploadState.FAILED
    # A rejection drops the record: the retry reads the bytes again.
    assert read_prehash(driver, uid) is None
    result = ing.retry(uid, sha256(DATA)).wait()
    assert (result["status"], result["prehashed"]) == ("committed", False)


def test_only_agreement_is_taken_from_the_record(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    up.finish(sha256(DATA))
    # A record that disagrees with the claim (say the staged bytes were repaired
    # after it was taken): the full pass decides, and the record is dropped.
    _record(driver, up.id, len(DATA), sha256(b"x"))
    result = commit_upload(driver, up.id, parse_digest(sha256(DATA)))
    assert result["prehashed"] is False
    assert read_prehash(driver, up.id) is None


def test_a_record_of_another_size_is_ignored_and_the_bytes_are_read(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    up.finish(sha256(DATA))
    driver.put_content(
        paths.upload_prehash_path(up.id),
        json.dumps({"size": len(DATA) - 1, "digest": sha256(DATA[:-1])}).encode(),
    )
    result = commit_upload(driver, up.id, parse_digest(sha256(DATA)))
    assert result["prehashed"] is False


def test_a_non_sha256_claim_does_not_use_the_prehash(driver: StorageDriver) -> None:
    import hashlib

    claim = "sha512:" + hashlib.sha512(DATA).hexdigest()
    _ing, uid, clock = _growing_upload(driver, claim)
    assert _run(driver, uid, clock)["status"] == "hashed"
    result = commit_upload(driver, uid, parse_digest(claim))
    assert result["prehashed"] is False
    assert result["canonical_digest"] == sha256(DATA)


def test_an_idle_upload_is_abandoned_and_leaves_no_lease(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    clock = Clock()
    summary = _run(driver, up.id, clock, idle_timeout=2.0)
    assert (summary["status"], summary["reason"]) == ("abandoned", "idle")
    assert summary["bytes"] == len(DATA)
    assert clock.t - 1000.0 == pytest.approx(2.0, abs=0.05)
    assert read_prehash(driver, up.id) is None
    with pytest.raises(PathNotFound):
        driver.stat(paths.upload_prehash_lease_path(up.id))
    # The verification then reads the bytes itself.
    assert up.finish(sha256(DATA)).wait()["prehashed"] is False


def test_the_lease_is_renewed_while_hashing(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    renewals: list[float] = []
    offsets: list[int] = []

    def watch(_: int) -> None:
        lease = read_lease(driver, paths.upload_prehash_lease_path(up.id))
        assert lease is not None
        assert lease.task_id == "pre-1"
        offsets.append(lease.detail["offset"])
        renewals.append(lease.renewed_at)

    _run(driver, up.id, Clock(watch), idle_timeout=3.5)
    assert offsets[-1] == len(DATA)
    assert len(set(renewals)) >= 3
    assert max(b - a for a, b in itertools.pairwise(renewals)) <= 1.1


def test_an_upload_no_longer_open_is_left_to_the_verification(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    up.finish(sha256(DATA))
    summary = _run(driver, up.id, Clock())
    assert (summary["status"], summary["reason"]) == ("skipped", "not open")
    assert read_prehash(driver, up.id) is None


def test_a_cancel_while_hashing_stops_it_and_leaves_no_directory(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)

    def cancel_on_second_sleep(n: int) -> None:
        if n == 2:
            ing.cancel(up.id)

    summary = _run(driver, up.id, Clock(cancel_on_second_sleep))
    assert summary["status"] == "skipped"
    with pytest.raises(PathNotFound):
        driver.stat(paths.upload_dir(up.id))


def test_an_unknown_upload_is_skipped(driver: StorageDriver) -> None:
    summary = _run(driver, "0b3c6f0e-6a3c-4c1e-9a57-2f3d7f9b1a11", Clock())
    assert summary["status"] == "skipped"


# -- await_prehash ------------------------------------------------------------------


def _lease(driver: StorageDriver, uid: str, renewed_at: float) -> None:
    write_lease(driver, paths.upload_prehash_lease_path(uid), Lease("t", renewed_at))


def _record(driver: StorageDriver, uid: str, size: int, digest: str) -> None:
    body = json.dumps({"size": size, "digest": digest}).encode()
    driver.put_content(paths.upload_prehash_path(uid), body)


def _upload(driver: StorageDriver) -> str:
    ing, _ = make_ingest(driver)
    return ing.start_upload(REPO).id


def test_await_waits_for_a_live_prehash_to_record(driver: StorageDriver) -> None:
    uid = _upload(driver)
    _lease(driver, uid, 1000.0)

    def record_on_fourth_sleep(n: int) -> None:
        if n == 4:
            _record(driver, uid, 10, "sha256:" + "a" * 64)

    clock = Clock(record_on_fourth_sleep)
    assert await_prehash(driver, uid, 10, sleep=clock.sleep, now=clock) == Prehashed(
        10, "sha256:" + "a" * 64
    )
    assert clock.sleeps == 4


def test_await_gives_up_on_a_lease_that_is_no_longer_renewed(driver: StorageDriver) -> None:
    uid = _upload(driver)
    _lease(driver, uid, 1000.0)
    clock = Clock()
    assert await_prehash(driver, uid, 10, sleep=clock.sleep, now=clock) is None
    assert prehash.LEASE_STALE < clock.t - 1000.0 < prehash.LEASE_STALE + 0.1


def test_await_without_lease_or_record_returns_at_once(driver: StorageDriver) -> None:
    uid = _upload(driver)
    clock = Clock()
    assert await_prehash(driver, uid, 10, sleep=clock.sleep, now=clock) is None
    assert clock.sleeps == 0


def test_await_ignores_a_record_of_another_size(driver: StorageDriver) -> None:
    uid = _upload(driver)
    _record(driver, uid, 9, "sha256:" + "a" * 64)
    assert await_prehash(driver, uid, 10) is None


def test_await_ignores_small_uploads(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prehash, "LOOKUP_MIN_SIZE", 100)
    uid = _upload(driver)
    _record(driver, uid, 10, "sha256:" + "a" * 64)
    assert await_prehash(driver, uid, 10) is None


# -- the frontend side: when a prehash is asked for ---------------------------------


def _ingest(driver: StorageDriver, threshold: int) -> tuple[Ingest, RecordingQueue]:
    return make_ingest(driver, Settings(prehash_min_size=threshold))


def test_exactly_one_prehash_is_asked_for_when_the_upload_crosses_the_threshold(
    driver: StorageDriver,
) -> None:
    ing, queue = _ingest(driver, 100)
    up = ing.start_upload(REPO)
    up.write(b"a" * 60)
    assert queue.prehashes == []
    up.write(b"b" * 60)
    assert queue.prehashes == [up.id]
    up.write(b"c" * 500)
    up.close()
    again = ing.resume(REPO, up.id)
    again.write_at(again.offset, b"d" * 10)
    assert queue.prehashes == [up.id]


def test_a_write_landing_exactly_on_the_threshold_asks_for_one(driver: StorageDriver) -> None:
    ing, queue = _ingest(driver, 100)
    up = ing.start_upload(REPO)
    up.write(b"a" * 100)
    up.write(b"a")
    assert queue.prehashes == [up.id]


def test_read_from_asks_for_one_as_it_crosses(driver: StorageDriver) -> None:
    import io

    ing, queue = _ingest(driver, 3 << 20)
    up = ing.start_upload(REPO)
    up.read_from(io.BytesIO(b"z" * (5 << 20)))
    assert queue.prehashes == [up.id]


def test_zero_disables_it(driver: StorageDriver) -> None:
    ing, queue = _ingest(driver, 0)
    up = ing.start_upload(REPO)
    up.write(b"a" * 1000)
    assert queue.prehashes == []


def test_a_broker_failure_does_not_fail_the_write(driver: StorageDriver) -> None:
    class Down(RecordingQueue):
        def enqueue_prehash(self, upload_id: str) -> None:
            raise StorageUnavailable("broker down")

    ing = Ingest(driver, Down(driver), Settings(prehash_min_size=10))
    up = ing.start_upload(REPO)
    assert up.write(b"a" * 20) == 20
    assert up.offset == 20
