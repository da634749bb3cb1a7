"""commit_upload: verification, idempotence, crash recovery, progress and memory."""

from __future__ import annotations

import hashlib
import itertools
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from ingest import commit, paths
from ingest.api import Ingest
from ingest.commit import commit_upload, compute_digests, mark_failed
from ingest.digests import parse_digest
from ingest.errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, SizeInvalid
from ingest.storage.base import ObjectSealed, PathNotFound, StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from ingest.storage.memory import MemoryDriver
from ingest.uploads import UploadState, Verification
from tests.unit.fakes import DRIVER_KINDS, make_driver, make_ingest, sha256, sha512

REPO = "library/ubuntu"
DATA = b"verified content " * 100


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


def _finished(
    ing: Ingest, data: bytes, digest: str, repo: str = REPO, *, upload: str | None = None
) -> tuple[str, str]:
    """Stage ``data`` (in a new upload, or appended to ``upload``) and finish it;
    return (upload id, task id)."""
    up = ing.start_upload(repo) if upload is None else ing.resume(repo, upload)
    up.write(data)
    ticket = up.finish(digest)
    return up.id, ticket.task_id


def _blob_files(driver: StorageDriver) -> list[str]:
    return [i.path for i in driver.walk("/blobs")]


def _assert_committed_layout(driver: StorageDriver, upload_id: str, data: bytes) -> None:
    canonical = parse_digest(sha256(data))
    assert _blob_files(driver) == [paths.blob_data_path(canonical)]
    assert driver.get_content(paths.blob_data_path(canonical)) == data
    link = driver.get_content(paths.layer_link_path(REPO, canonical))
    assert link == str(canonical).encode()
    with pytest.raises(PathNotFound):
        driver.stat(paths.upload_data_path(upload_id))


def test_commit_upload_run_twice_returns_the_identical_result_and_one_blob(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    first = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    second = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    assert first == second
    assert first["status"] == "committed"
    assert first["task_id"] == tid
    _assert_committed_layout(driver, uid, DATA)
    assert ing.staging.state(uid).state is UploadState.COMMITTED
    assert ing.staging.result(uid) == first


def test_commit_completes_after_a_crash_between_the_move_and_the_links(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    canonical = sha256(DATA)
    # What a runner killed right after step 4 leaves behind: verified, moved, unlinked.
    record = ing.staging.state(uid)
    ing.staging.transition(
        uid,
        record,
        UploadState.VERIFIED,
        verified=Verification(parse_digest(canonical), parse_digest(canonical), len(DATA)),
    )
    driver.move(paths.upload_data_path(uid), paths.blob_data_path(parse_digest(canonical)))
    with pytest.raises(PathNotFound):
        driver.get_content(paths.layer_link_path(REPO, parse_digest(canonical)))

    result = commit_upload(driver, uid, parse_digest(canonical), None, task_id=tid)
    assert (result["status"], result["canonical_digest"], result["size"]) == (
        "committed",
        canonical,
        len(DATA),
    )
    _assert_committed_layout(driver, uid, DATA)
    with ing.open(REPO, canonical) as blob:
        assert blob.read() == DATA


def test_commit_completes_after_a_crash_right_after_verification(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha512(DATA))
    record = ing.staging.state(uid)
    ing.staging.transition(
        uid,
        record,
        UploadState.VERIFIED,
        verified=Verification(parse_digest(sha256(DATA)), parse_digest(sha512(DATA)), len(DATA)),
    )
    result = commit_upload(driver, uid, parse_digest(sha512(DATA)), None, task_id=tid)
    assert result["deduplicated"] is False
    _assert_committed_layout(driver, uid, DATA)
    assert (
        driver.get_content(paths.layer_link_path(REPO, parse_digest(sha512(DATA))))
        == sha256(DATA).encode()
    )


def test_a_late_duplicate_task_with_another_task_id_is_superseded(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    with pytest.raises(BlobUploadInvalid) as info:
        commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id="00000000-old-task")
    assert info.value.detail["reason"] == "superseded"
    record = ing.staging.state(uid)
    assert (record.state, record.task_id) == (UploadState.FINISHING, tid)
    assert _blob_files(driver) == []
    assert driver.get_content(paths.upload_data_path(uid)) == DATA


def test_a_late_duplicate_after_the_commit_gets_the_committed_result(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    result = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    assert commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id="another") == result


def test_a_mismatch_is_recorded_as_failed_and_keeps_the_staged_data(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    wrong = sha256(b"something else")
    uid, tid = _finished(ing, DATA, wrong)
    with pytest.raises(DigestInvalid) as info:
        commit_upload(driver, uid, parse_digest(wrong), None, task_id=tid)
    detail = info.value.detail
    assert (detail["reason"], detail["claimed"], detail["computed"]) == (
        "mismatch",
        wrong,
        sha256(DATA),
    )
    record = ing.staging.state(uid)
    assert record.state is UploadState.FAILED
    assert record.error is not None
    assert record.error["code"] == "DIGEST_INVALID"
    assert record.error["detail"]["computed"] == sha256(DATA)
    assert driver.get_content(paths.upload_data_path(uid)) == DATA
    assert _blob_files(driver) == []


def test_a_wrong_expected_size_is_recorded_as_size_invalid(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    with pytest.raises(SizeInvalid) as info:
        commit_upload(driver, uid, parse_digest(sha256(DATA)), len(DATA) + 1, task_id=tid)
    assert info.value.detail == {"claimed": len(DATA) + 1, "computed": len(DATA), "upload_id": uid}
    assert ing.staging.state(uid).state is UploadState.FAILED


def test_a_corrupt_blob_under_the_same_address_is_replaced_not_deduplicated(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    driver.put_content(paths.blob_data_path(parse_digest(sha256(DATA))), b"damaged")
    uid, tid = _finished(ing, DATA, sha256(DATA))
    result = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    assert result["deduplicated"] is False
    _assert_committed_layout(driver, uid, DATA)


@pytest.mark.parametrize("upload_id", ["2b1c4f6e-8a3d-4e5f-9a0b-1c2d3e4f5a6b", "../x", "X"])
def test_commit_of_an_unknown_or_malformed_upload_is_blob_upload_unknown(
    driver: StorageDriver, upload_id: str
) -> None:
    with pytest.raises(BlobUploadUnknown):
        commit_upload(driver, upload_id, parse_digest(sha256(DATA)))


def test_mark_failed_never_overrides_a_committed_upload(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    mark_failed(ing.staging, uid, DigestInvalid())
    assert ing.staging.state(uid).state is UploadState.COMMITTED
    mark_failed(ing.staging, "2b1c4f6e-8a3d-4e5f-9a0b-1c2d3e4f5a6b", DigestInvalid())


def test_progress_starts_at_zero_and_is_reported_at_most_once_a_second(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ingest.commit.PROGRESS_MIN_SIZE", 0)  # treat this blob as large
    clock = [0.0]

    def monotonic() -> float:
        clock[0] += 0.3  # every read of the clock advances it
        return clock[0]

    monkeypatch.setattr(commit, "time", types.SimpleNamespace(monotonic=monotonic, time=time.time))
    ing, _ = make_ingest(driver)
    data = bytes(range(256)) * 256  # 64 KiB: 64 chunks of 1 KiB
    uid, tid = _finished(ing, data, sha256(data))
    reports: list[tuple[int, int, float]] = []
    commit_upload(
        driver,
        uid,
        parse_digest(sha256(data)),
        None,
        task_id=tid,
        chunk_size=1024,
        progress=lambda done, total: reports.append((done, total, clock[0])),
    )
    assert reports[0][:2] == (0, len(data))
    assert len(reports) >= 5
    for (done_a, _, at_a), (done_b, total_b, at_b) in itertools.pairwise(reports):
        assert at_b - at_a >= commit.PROGRESS_INTERVAL
        assert done_a < done_b <= total_b == len(data)
    assert len(reports) <= 64 * 0.3 / commit.PROGRESS_INTERVAL + 2


def test_progress_is_reported_for_every_chunk_when_the_interval_is_zero(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(commit, "PROGRESS_MIN_SIZE", 0)
    data = b"x" * 10_000
    driver.put_content("/staged/data", data)
    reports: list[tuple[int, int]] = []
    computed = compute_digests(
        driver,
        "/staged/data",
        parse_digest(sha256(data)),
        chunk_size=4096,
        progress=lambda done, total: reports.append((done, total)),
    )
    assert reports == [(0, 10_000), (4096, 10_000), (8192, 10_000), (10_000, 10_000)]
    assert (str(computed.canonical), str(computed.computed), computed.size) == (
        sha256(data),
        sha256(data),
        10_000,
    )


@pytest.mark.parametrize("claim", [sha256, sha512])
def test_compute_digests_returns_canonical_and_claimed_kind(
    driver: StorageDriver, claim: Callable[[bytes], str]
) -> None:
    driver.put_content("/staged/data", DATA)
    computed = compute_digests(driver, "/staged/data", parse_digest(claim(b"other")))
    assert str(computed.canonical) == sha256(DATA)
    assert str(computed.computed) == claim(DATA)
    assert computed.size == len(DATA)


def test_compute_digests_memory_stays_flat_for_a_64_mib_blob(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    chunk = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    w = driver.writer("/staged/data")
    for i in range(64):
        block = bytes([i]) + chunk[1:]
        w.write(block)
        h256.update(block)
        h512.update(block)
    w.commit()
    w.close()
    claim = parse_digest("sha512:" + h512.hexdigest())
    tracemalloc.start()
    try:
        computed = compute_digests(driver, "/staged/data", claim, chunk_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert computed.size == 64 << 20
    assert str(computed.canonical) == "sha256:" + h256.hexdigest()
    assert computed.computed == claim
    assert peak < 8 << 20


class _RunnerFinishesDuringOpen(MemoryDriver):
    """Lets a test run code just before the next ``reader`` call opens its path."""

    def __init__(self) -> None:
        super().__init__()
        self.before_reader: Callable[[], None] | None = None

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        hook, self.before_reader = self.before_reader, None
        if hook is not None:
            hook()
        return super().reader(path, offset)


def test_a_runner_racing_a_concurrent_commit_of_the_same_task_still_commits() -> None:
    driver = _RunnerFinishesDuringOpen()
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))

    def other_runner_verifies_and_moves() -> None:
        record = ing.staging.state(uid)
        ing.staging.transition(
            uid,
            record,
            UploadState.VERIFIED,
            verified=Verification(
                parse_digest(sha256(DATA)), parse_digest(sha256(DATA)), len(DATA)
            ),
        )
        driver.move(paths.upload_data_path(uid), paths.blob_data_path(parse_digest(sha256(DATA))))

    driver.before_reader = other_runner_verifies_and_moves
    result = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    assert result["status"] == "committed"
    _assert_committed_layout(driver, uid, DATA)


def test_a_write_after_finish_is_refused_and_the_frozen_bytes_are_what_commits(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    late = ing.start_upload(REPO)
    late.write(DATA)  # a handle with its writer open, as a streaming request has
    uid, tid = _finished(ing, b"", sha256(DATA), upload=late.id)
    with pytest.raises(BlobUploadInvalid):
        late.write(b"late")
    with pytest.raises(ObjectSealed):
        driver.writer(paths.upload_data_path(uid), append=True)
    result = commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=tid)
    assert result["size"] == len(DATA)
    assert driver.get_content(paths.blob_data_path(parse_digest(sha256(DATA)))) == DATA


def test_staged_data_replaced_after_finish_is_recorded_as_modified_and_can_be_retried(
    driver: StorageDriver,
) -> None:
    # Not a write (writes cannot touch sealed data) but a new object at the path,
    # as an operator repairing staged bytes would make: the frozen size disagrees.
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA + b"late"))
    driver.put_content(paths.upload_data_path(uid), DATA + b"late")
    with pytest.raises(BlobUploadInvalid) as info:
        commit_upload(driver, uid, parse_digest(sha256(DATA + b"late")), None, task_id=tid)
    assert info.value.detail["reason"] == "modified"
    assert _blob_files(driver) == []
    assert ing.staging.state(uid).state is UploadState.FAILED
    assert ing.retry(uid).wait()["size"] == len(DATA) + 4


def test_small_blobs_send_no_start_progress_report(driver: StorageDriver) -> None:
    ing, _ = make_ingest(driver)
    uid, tid = _finished(ing, DATA, sha256(DATA))
    reports: list[tuple[int, int]] = []
    commit_upload(
        driver,
        uid,
        parse_digest(sha256(DATA)),
        None,
        task_id=tid,
        progress=lambda done, total: reports.append((done, total)),
    )
    assert reports == []


def test_a_late_failure_report_of_an_old_attempt_does_not_clobber_a_retry(
    driver: StorageDriver,
) -> None:
    ing, _ = make_ingest(driver)
    uid, first_task = _finished(ing, DATA, sha256(b"wrong"))
    with pytest.raises(DigestInvalid) as failure:
        commit_upload(driver, uid, parse_digest(sha256(b"wrong")), None, task_id=first_task)
    retry = ing.retry(uid, sha256(DATA))
    # The old attempt's failure bookkeeping arrives after the retry started.
    mark_failed(ing.staging, uid, failure.value, first_task)
    record = ing.staging.state(uid)
    assert record.state is UploadState.FINISHING
    assert record.task_id == retry.task_id
    assert commit_upload(driver, uid, parse_digest(sha256(DATA)), None, task_id=retry.task_id)[
        "status"
    ] == ("committed")
