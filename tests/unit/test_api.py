"""The Ingest facade: finish, wait, retry, open and status, over a recording queue."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pytest

from ingest import paths
from ingest.api import Ingest
from ingest.config import Settings
from ingest.digests import Digest, parse_digest
from ingest.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    StorageUnavailable,
)
from ingest.leases import LEASE_STALE, Lease, write_lease
from ingest.queue import TaskInfo
from ingest.storage.base import PathNotFound, StorageDriver
from ingest.uploads import UploadState
from tests.unit.fakes import (
    DRIVER_KINDS,
    RecordingQueue,
    make_driver,
    make_ingest,
    sha256,
    sha512,
)

REPO = "library/ubuntu"
OTHER_REPO = "library/debian"
DATA = b"layer bytes\n" * 300


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


@pytest.fixture
def ingq(driver: StorageDriver) -> tuple[Ingest, RecordingQueue]:
    return make_ingest(driver)


def _staged_upload(ing: Ingest, data: bytes = DATA, repo: str = REPO) -> str:
    up = ing.start_upload(repo)
    up.write(data)
    up.close()
    return up.id


def _commit(ing: Ingest, data: bytes, digest: str, repo: str = REPO) -> dict[str, object]:
    up = ing.start_upload(repo)
    up.write(data)
    return up.finish(digest).wait()


# -- finish ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digest", "reason"),
    [
        ("sha256:abc", "malformed"),
        ("SHA256:" + "a" * 64, "malformed"),
        ("sha256:" + "A" * 64, "malformed"),
        ("not a digest", "malformed"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported"),
    ],
)
def test_finish_with_a_bad_digest_is_rejected_before_anything_is_enqueued(
    ingq: tuple[Ingest, RecordingQueue], digest: str, reason: str
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(DigestInvalid) as info:
        up.finish(digest)
    assert info.value.detail["reason"] == reason
    assert queue.calls == []
    record = ing.staging.state(up.id)
    assert (record.state, record.task_id, record.attempt) == (UploadState.OPEN, None, 0)
    # The session stays open: it can be resumed and finished properly.
    assert ing.resume(REPO, up.id).finish(sha256(DATA)).wait()["size"] == len(DATA)


@pytest.mark.parametrize("size", [len(DATA) - 1, len(DATA) + 1, 0, -1])
def test_finish_with_a_wrong_size_is_size_invalid_and_enqueues_nothing(
    ingq: tuple[Ingest, RecordingQueue], size: int
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(SizeInvalid):
        up.finish(sha256(DATA), size=size)
    assert queue.calls == []
    assert ing.staging.state(up.id).state is UploadState.OPEN


def test_finish_enqueues_one_verification_with_the_upload_arguments(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    ticket = up.finish(sha256(DATA), size=len(DATA))
    [call] = queue.calls
    assert (call.upload_id, call.digest, call.size, call.task_id) == (
        up.id,
        sha256(DATA),
        len(DATA),
        ticket.task_id,
    )
    # The size finish froze: the worker derives the task's time limit from it.
    assert call.staged_size == len(DATA)
    assert uuid.UUID(ticket.task_id)
    assert ticket.upload_id == up.id
    record = ing.staging.state(up.id)
    assert (record.state, record.task_id, record.size, record.attempt) == (
        UploadState.FINISHING,
        ticket.task_id,
        len(DATA),
        1,
    )


def test_finish_twice_with_the_same_digest_returns_the_same_task_and_enqueues_once(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    second_handle = ing.resume(REPO, up.id)
    third_handle = ing.resume(REPO, up.id)
    up.write(DATA)
    first = up.finish(sha256(DATA))
    again = second_handle.finish(sha256(DATA))
    assert again.task_id == first.task_id
    assert len(queue.calls) == 1
    with pytest.raises(BlobUploadInvalid):
        third_handle.finish(sha512(DATA))
    assert len(queue.calls) == 1


def test_finish_after_the_commit_returns_the_committed_result_without_enqueuing(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    late = ing.resume(REPO, up.id)
    other_digest = ing.resume(REPO, up.id)
    up.write(DATA)
    result = up.finish(sha256(DATA)).wait()
    ticket = late.finish(sha256(DATA))
    assert ticket.task_id == result["task_id"]
    assert ticket.wait() == result
    assert len(queue.calls) == 1
    assert len(queue.waited) == 1
    with pytest.raises(BlobUploadInvalid):
        other_digest.finish(sha512(DATA))


def test_a_broker_failure_while_finishing_leaves_a_failed_upload_a_repeated_finish_takes(
    driver: StorageDriver,
) -> None:
    class DownQueue(RecordingQueue):
        down = True

        def enqueue_verify(
            self,
            upload_id: str,
            digest: Digest,
            size: int | None,
            *,
            task_id: str,
            staged_size: int,
            repository: str | None = None,
        ) -> None:
            if self.down:
                raise StorageUnavailable("broker down")
            super().enqueue_verify(
                upload_id, digest, size, task_id=task_id, staged_size=staged_size
            )

    queue = DownQueue(driver)
    ing = Ingest(driver, queue)
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(StorageUnavailable):
        up.finish(sha256(DATA))
    record = ing.staging.state(up.id)
    # The data was frozen before the send failed, so the upload cannot reopen...
    assert record.state is UploadState.FAILED
    assert record.error is not None
    assert record.error["code"] == "UNAVAILABLE"
    with pytest.raises(BlobUploadInvalid):
        ing.resume(REPO, up.id)
    # ...but the client's repeated finish goes through once the broker is back.
    queue.down = False
    assert ing.finish(REPO, up.id, sha256(DATA)).wait(timeout=5)["size"] == len(DATA)


# -- wait / commit ---------------------------------------------------------------------


def test_finish_then_wait_returns_the_committed_result(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    ticket = up.finish(sha256(DATA), size=len(DATA))
    result = ticket.wait(timeout=5)
    assert result["status"] == "committed"
    assert result["repository"] == REPO
    assert result["digest"] == sha256(DATA)
    assert result["canonical_digest"] == sha256(DATA)
    assert result["size"] == len(DATA)
    assert result["upload_id"] == up.id
    assert result["deduplicated"] is False
    assert isinstance(result["duration"], float)
    assert result["duration"] >= 0
    assert result["task_id"] == ticket.task_id
    with pytest.raises(PathNotFound):
        driver.stat(paths.upload_data_path(up.id))
    with ing.open(REPO, sha256(DATA)) as blob:
        assert blob.read() == DATA


def test_a_sha512_claim_links_the_sha256_blob_and_the_sha512_alias(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    result = _commit(ing, DATA, sha512(DATA))
    assert (result["digest"], result["canonical_digest"]) == (sha512(DATA), sha256(DATA))
    canonical, alias = parse_digest(sha256(DATA)), parse_digest(sha512(DATA))
    assert [i.path for i in driver.walk("/blobs")] == [paths.blob_data_path(canonical)]
    assert driver.get_content(paths.layer_link_path(REPO, canonical)) == sha256(DATA).encode()
    assert driver.get_content(paths.layer_link_path(REPO, alias)) == sha256(DATA).encode()
    with ing.open(REPO, sha256(DATA)) as a, ing.open(REPO, sha512(DATA)) as b:
        assert a.read() == b.read() == DATA
        assert (a.digest, b.digest) == (sha256(DATA), sha512(DATA))
        assert a.info.canonical == b.info.canonical == sha256(DATA)
    assert ing.stat(REPO, sha512(DATA)).size == len(DATA)


def test_identical_content_in_a_second_repository_is_deduplicated(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    first = _commit(ing, DATA, sha256(DATA), REPO)
    second = _commit(ing, DATA, sha256(DATA), OTHER_REPO)
    assert (first["deduplicated"], second["deduplicated"]) == (False, True)
    assert len(list(driver.walk("/blobs"))) == 1
    assert not [i.path for i in driver.walk("/uploads") if i.path.endswith("/data")]
    for repo in (REPO, OTHER_REPO):
        with ing.open(repo, sha256(DATA)) as blob:
            assert blob.read() == DATA


def test_a_mismatch_raises_digest_invalid_and_keeps_the_upload_for_a_retry(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    claimed = sha256(b"what the client thought it sent")
    ticket = up.finish(claimed)
    with pytest.raises(DigestInvalid) as info:
        ticket.wait()
    assert info.value.detail["claimed"] == claimed
    assert info.value.detail["computed"] == sha256(DATA)
    status = ing.status(up.id)
    assert status.state == "failed"
    assert status.error is not None
    assert status.error["code"] == "DIGEST_INVALID"
    assert driver.get_content(paths.upload_data_path(up.id)) == DATA
    with pytest.raises(BlobUnknown):
        ing.open(REPO, claimed)


def test_retry_after_fixing_the_staged_bytes_commits(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, queue = ingq
    intended = b"the bytes the client meant"
    up = ing.start_upload(REPO)
    up.write(b"the bytes that got garbled")
    first = up.finish(sha256(intended))
    with pytest.raises(DigestInvalid):
        first.wait()
    # Sealed data takes no writes: an operator repairs it by replacing the object.
    driver.put_content(paths.upload_data_path(up.id), intended)
    ticket = ing.retry(up.id)
    assert ticket.task_id != first.task_id
    assert len(queue.calls) == 2
    result = ticket.wait()
    assert (result["status"], result["digest"], result["size"]) == (
        "committed",
        sha256(intended),
        len(intended),
    )
    assert ing.staging.state(up.id).attempt == 2
    with ing.open(REPO, sha256(intended)) as blob:
        assert blob.read() == intended
    # Committed now: no further attempt can be made.
    with pytest.raises(BlobUploadInvalid) as info:
        ing.retry(up.id)
    assert "committed" in info.value.message


def test_retry_with_a_corrected_digest_commits(ingq: tuple[Ingest, RecordingQueue]) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(DigestInvalid):
        up.finish(sha256(b"typo")).wait()
    ticket = ing.retry(up.id, sha512(DATA))
    assert queue.calls[-1].digest == sha512(DATA)
    result = ticket.wait()
    assert (result["digest"], result["canonical_digest"]) == (sha512(DATA), sha256(DATA))


def test_retry_with_a_malformed_digest_is_rejected_before_enqueuing(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(DigestInvalid):
        up.finish(sha256(b"typo")).wait()
    with pytest.raises(DigestInvalid):
        ing.retry(up.id, "sha256:nope")
    assert len(queue.calls) == 1
    assert ing.staging.state(up.id).state is UploadState.FAILED


def test_retry_of_a_committed_upload_is_blob_upload_invalid(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    up.finish(sha256(DATA)).wait()
    with pytest.raises(BlobUploadInvalid):
        ing.retry(up.id)
    assert len(queue.calls) == 1


def test_retry_of_an_open_or_finishing_upload_is_blob_upload_invalid(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(BlobUploadInvalid) as info:
        ing.retry(up.id)
    assert info.value.detail["state"] == "open"
    up.finish(sha256(DATA))
    with pytest.raises(BlobUploadInvalid) as info:
        ing.retry(up.id)
    assert info.value.detail["state"] == "finishing"
    assert len(queue.calls) == 1


def _finishing_with_lease(ing: Ingest, renewed_at: float) -> tuple[str, str]:
    up = ing.start_upload(REPO)
    up.write(DATA)
    ticket = up.finish(sha256(DATA))
    write_lease(
        ing.driver, paths.upload_verify_lease_path(up.id), Lease(ticket.task_id, renewed_at)
    )
    return up.id, ticket.task_id


def test_retry_and_a_repeated_finish_leave_a_verification_with_a_live_lease_alone(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    uid, task = _finishing_with_lease(ing, renewed_at=time.time())
    with pytest.raises(BlobUploadInvalid):
        ing.retry(uid)
    assert ing.finish(REPO, uid, sha256(DATA)).task_id == task  # the same attempt
    assert len(queue.calls) == 1


def test_retry_takes_over_a_verification_whose_worker_died(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    uid, task = _finishing_with_lease(ing, renewed_at=time.time() - LEASE_STALE - 1)
    ticket = ing.retry(uid)
    assert ticket.task_id != task
    assert ing.staging.state(uid).attempt == 2
    assert ticket.wait()["size"] == len(DATA)


def test_a_repeated_finish_takes_over_a_verification_whose_worker_died(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    uid, task = _finishing_with_lease(ing, renewed_at=time.time() - LEASE_STALE - 1)
    ticket = ing.finish(REPO, uid, sha256(DATA))
    assert ticket.task_id != task
    assert ticket.wait()["status"] == "committed"


def test_an_attempt_that_ended_without_recording_its_failure_can_be_retried(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    # A full disk: the task ran out of retries and could not write its failure, so
    # storage still says "finishing" while the result backend holds the FAILURE.
    ing, queue = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    first = up.finish(sha256(DATA))
    error = {"code": "UNAVAILABLE", "message": "no space", "detail": {}}
    ended = {first.task_id: TaskInfo(first.task_id, "FAILURE", error=error)}
    queue.info = lambda task_id: ended.get(task_id, TaskInfo(task_id, "PENDING"))  # type: ignore[method-assign]
    assert ing.staging.state(up.id).state is UploadState.FINISHING
    again = ing.finish(REPO, up.id, sha256(DATA))  # the client's repeated PUT
    assert again.task_id != first.task_id
    with pytest.raises(BlobUploadInvalid):
        ing.retry(up.id)  # the new attempt is queued: nothing to retry
    assert again.wait()["size"] == len(DATA)


def test_retry_of_a_cancelled_upload_is_blob_upload_unknown(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    with pytest.raises(DigestInvalid):
        up.finish(sha256(b"typo")).wait()
    ing.cancel(up.id)
    with pytest.raises(BlobUploadUnknown):
        ing.retry(up.id)


def test_cancel_of_a_committed_upload_removes_the_record_but_keeps_the_blob(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    up.finish(sha256(DATA)).wait()
    ing.cancel(up.id)
    assert list(driver.walk("/uploads")) == []
    with pytest.raises(BlobUploadUnknown):
        ing.status(up.id)
    with ing.open(REPO, sha256(DATA)) as blob:
        assert blob.read() == DATA


# -- reading blobs ---------------------------------------------------------------------


def test_open_of_a_blob_linked_only_in_another_repository_is_blob_unknown(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    _commit(ing, DATA, sha256(DATA), OTHER_REPO)
    with pytest.raises(BlobUnknown) as info:
        ing.open(REPO, sha256(DATA))
    assert info.value.detail == {"repository": REPO, "digest": sha256(DATA)}
    with pytest.raises(BlobUnknown):
        ing.stat(REPO, sha256(DATA))


def test_open_of_an_unknown_digest_is_blob_unknown_and_of_a_bad_one_digest_invalid(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    with pytest.raises(BlobUnknown):
        ing.open(REPO, sha256(b"never uploaded"))
    with pytest.raises(DigestInvalid):
        ing.open(REPO, "sha256:../../etc/passwd")


def test_open_of_a_linked_blob_whose_data_is_missing_is_blob_unknown(
    ingq: tuple[Ingest, RecordingQueue], driver: StorageDriver
) -> None:
    ing, _ = ingq
    _commit(ing, DATA, sha256(DATA))
    driver.delete(paths.blob_dir(parse_digest(sha256(DATA))))
    with pytest.raises(BlobUnknown):
        ing.open(REPO, sha256(DATA))


def test_blob_reader_supports_seek_read_tell_and_readinto(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    data = bytes(range(200))
    _commit(ing, data, sha256(data))
    with ing.open(REPO, sha256(data)) as blob:
        assert (blob.repository, blob.digest, blob.size) == (REPO, sha256(data), 200)
        assert blob.created_at > 0
        assert blob.readable()
        assert blob.seekable()
        assert blob.tell() == 0
        assert blob.read(10) == data[:10]
        assert blob.tell() == 10
        assert blob.seek(100) == 100
        assert blob.read(5) == data[100:105]
        assert blob.seek(-10, io.SEEK_END) == 190
        assert blob.read() == data[190:]
        assert blob.read() == b""
        assert blob.seek(5, io.SEEK_SET) == 5
        assert blob.seek(5, io.SEEK_CUR) == 10
        buf = bytearray(4)
        assert blob.readinto(buf) == 4
        assert bytes(buf) == data[10:14]
    assert blob.closed


# -- status ----------------------------------------------------------------------------


def test_status_of_an_open_upload(ingq: tuple[Ingest, RecordingQueue]) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(b"12345")
    status = ing.status(up.id)
    assert (status.upload_id, status.repository, status.started_at) == (up.id, REPO, up.started_at)
    assert (status.state, status.offset, status.attempt) == ("open", 5, 0)
    assert status.claimed_digest is None
    assert status.task_id is None
    assert status.task_state is None
    assert status.result is None
    assert status.error is None
    assert status.last_activity >= status.started_at
    assert set(status.to_dict()) == {
        "upload_id",
        "repository",
        "started_at",
        "last_activity",
        "state",
        "offset",
        "claimed_digest",
        "task_id",
        "attempt",
        "task_state",
        "progress",
        "result",
        "error",
    }


def test_status_of_a_finishing_upload_asks_the_queue(ingq: tuple[Ingest, RecordingQueue]) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    ticket = up.finish(sha256(DATA))
    status = ing.status(up.id)
    assert (status.state, status.task_id, status.task_state, status.claimed_digest) == (
        "finishing",
        ticket.task_id,
        "PENDING",
        sha256(DATA),
    )
    assert (status.offset, status.attempt) == (len(DATA), 1)


def test_status_of_a_failed_upload_carries_the_error(ingq: tuple[Ingest, RecordingQueue]) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    claimed = sha256(b"typo")
    with pytest.raises(DigestInvalid):
        up.finish(claimed).wait()
    status = ing.status(up.id)
    assert (status.state, status.offset, status.claimed_digest) == ("failed", len(DATA), claimed)
    assert status.task_state is None
    assert status.result is None
    assert status.error is not None
    assert status.error["code"] == "DIGEST_INVALID"
    assert status.error["detail"]["computed"] == sha256(DATA)


def test_status_of_a_committed_upload_carries_the_result(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA)
    result = up.finish(sha256(DATA)).wait()
    status = ing.status(up.id)
    assert (status.state, status.offset, status.result) == ("committed", len(DATA), result)
    assert status.task_state is None
    assert status.error is None


def test_max_blob_size_is_enforced_again_at_finish(driver: StorageDriver) -> None:
    small, queue = make_ingest(driver, Settings(max_blob_size=8))
    big, _ = make_ingest(driver)
    up = big.start_upload(REPO)
    up.write(b"123456789")
    up.close()
    with pytest.raises(SizeInvalid):
        small.resume(REPO, up.id).finish(sha256(b"123456789"))
    assert queue.calls == []


# -- the facade's operations for frontends ------------------------------------------------


def test_mount_links_a_blob_only_from_a_repository_that_holds_it(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    _commit(ing, DATA, sha512(DATA))
    claimed = parse_digest(sha512(DATA))
    assert ing.mount("library/alpine", OTHER_REPO, claimed) is False  # not there
    with pytest.raises(BlobUnknown):
        ing.stat("library/alpine", claimed)
    assert ing.mount(OTHER_REPO, REPO, claimed) is True
    # The alias and the canonical digest both resolve in the new repository.
    assert ing.stat(OTHER_REPO, claimed).canonical == sha256(DATA)
    assert ing.stat(OTHER_REPO, sha256(DATA)).size == len(DATA)
    with ing.open(OTHER_REPO, claimed) as blob:
        assert blob.read() == DATA


def test_offset_counts_staged_bytes_of_an_open_session_of_that_repository(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    up = ing.start_upload(REPO)
    up.write(DATA[:100])
    up.close()
    assert ing.offset(REPO, up.id) == 100
    with pytest.raises(BlobUploadUnknown):
        ing.offset(OTHER_REPO, up.id)
    ing.finish(REPO, up.id, sha256(DATA[:100])).wait()
    with pytest.raises(BlobUploadUnknown):  # committed: no longer a session
        ing.offset(REPO, up.id)


def test_cancel_by_another_repository_is_unknown_and_leaves_the_upload(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    uid = _staged_upload(ing)
    with pytest.raises(BlobUploadUnknown):
        ing.cancel(uid, OTHER_REPO)
    assert ing.offset(REPO, uid) == len(DATA)
    ing.cancel(uid, REPO)
    with pytest.raises(BlobUploadUnknown):
        ing.offset(REPO, uid)


def test_unlink_removes_one_repositorys_link_and_keeps_the_blob_for_others(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, _ = ingq
    _commit(ing, DATA, sha256(DATA))
    _commit(ing, DATA, sha256(DATA), repo=OTHER_REPO)
    ing.unlink(REPO, parse_digest(sha256(DATA)))
    with pytest.raises(BlobUnknown):
        ing.stat(REPO, sha256(DATA))
    assert ing.stat(OTHER_REPO, sha256(DATA)).size == len(DATA)


def test_an_unsupported_tarsum_label_is_refused_at_finish_before_anything_is_queued(
    ingq: tuple[Ingest, RecordingQueue],
) -> None:
    ing, queue = ingq
    uid = _staged_upload(ing)
    with pytest.raises(DigestInvalid) as err:
        ing.finish(REPO, uid, "tarsum.v9+sha256:" + "0" * 64)
    assert err.value.detail["reason"] == "tarsum-unsupported"
    assert queue.calls == []
    assert ing.status(uid).state == "open"
