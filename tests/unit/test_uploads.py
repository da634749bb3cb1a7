"""Upload sessions: creating, writing at offsets, resuming, closing, cancelling, limits."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest import paths
from ingest.api import Ingest
from ingest.config import Settings
from ingest.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    NameInvalid,
    RangeInvalid,
    SizeInvalid,
    UploadClosed,
)
from ingest.storage.base import StorageDriver
from ingest.uploads import COPY_CHUNK, Staging, UploadRecord, UploadState
from tests.unit.fakes import DRIVER_KINDS, make_driver, make_ingest, sha256

REPO = "library/ubuntu"


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


@pytest.fixture
def ing(driver: StorageDriver) -> Ingest:
    return make_ingest(driver)[0]


def _staged(driver: StorageDriver, upload_id: str) -> bytes:
    return driver.get_content(paths.upload_data_path(upload_id))


def test_start_upload_returns_uuid4_id_repository_start_time_and_offset_zero(
    ing: Ingest,
) -> None:
    before = time.time()
    up = ing.start_upload(REPO)
    after = time.time()
    assert uuid.UUID(up.id).version == 4
    assert paths.validate_upload_id(up.id) == up.id
    assert up.repository == REPO
    assert before <= up.started_at <= after
    assert up.offset == 0
    assert not up.closed
    assert ing.staging.state(up.id).state is UploadState.OPEN


def test_each_upload_gets_its_own_id(ing: Ingest) -> None:
    ids = {ing.start_upload(REPO).id for _ in range(5)}
    assert len(ids) == 5
    assert sorted(ing.staging.list_ids()) == sorted(ids)


def test_start_upload_with_an_invalid_name_creates_nothing(
    ing: Ingest, driver: StorageDriver
) -> None:
    with pytest.raises(NameInvalid):
        ing.start_upload("../escape")
    assert list(driver.walk("/")) == []
    assert ing.staging.list_ids() == []


def test_write_appends_and_advances_the_offset(ing: Ingest, driver: StorageDriver) -> None:
    up = ing.start_upload(REPO)
    assert up.write(b"hello ") == 6
    assert up.write(bytearray(b"world")) == 5
    assert up.offset == 11
    up.close()
    assert _staged(driver, up.id) == b"hello world"


def test_write_at_the_current_offset_appends(ing: Ingest, driver: StorageDriver) -> None:
    up = ing.start_upload(REPO)
    assert up.write_at(0, b"abc") == 3
    assert up.write_at(3, memoryview(b"def")) == 3
    up.close()
    assert _staged(driver, up.id) == b"abcdef"


@pytest.mark.parametrize("wrong", [0, 2, 4, 100, -1])
def test_write_at_wrong_offset_reports_current_offset(
    ing: Ingest, driver: StorageDriver, wrong: int
) -> None:
    up = ing.start_upload(REPO)
    up.write(b"abc")
    with pytest.raises(RangeInvalid) as info:
        up.write_at(wrong, b"zzz")
    assert info.value.detail["offset"] == 3
    assert info.value.detail["requested"] == wrong
    assert info.value.http_status == 416
    up.close()
    assert _staged(driver, up.id) == b"abc"


def test_read_from_copies_a_stream_larger_than_the_copy_chunk(
    ing: Ingest, driver: StorageDriver
) -> None:
    payload = bytes(range(256)) * (COPY_CHUNK * 5 // 2 // 256) + b"tail"
    assert len(payload) > 2 * COPY_CHUNK
    up = ing.start_upload(REPO)
    up.write(b"head")
    assert up.read_from(io.BytesIO(payload)) == len(payload)
    assert up.offset == 4 + len(payload)
    up.close()
    assert _staged(driver, up.id) == b"head" + payload


def test_read_from_with_a_limit_copies_only_that_many_bytes(
    ing: Ingest, driver: StorageDriver
) -> None:
    stream = io.BytesIO(b"0123456789")
    up = ing.start_upload(REPO)
    assert up.read_from(stream, limit=4) == 4
    assert stream.read() == b"456789"
    assert up.read_from(io.BytesIO(b""), limit=10) == 0
    up.close()
    assert _staged(driver, up.id) == b"0123"


def test_close_keeps_the_staged_bytes_and_is_idempotent(ing: Ingest, driver: StorageDriver) -> None:
    with ing.start_upload(REPO) as up:
        up.write(b"kept")
        up.flush()
    assert up.closed
    up.close()
    assert _staged(driver, up.id) == b"kept"
    assert ing.staging.size(up.id) == 4


def test_resume_from_a_second_ingest_instance_continues_writing(driver: StorageDriver) -> None:
    first, _ = make_ingest(driver)
    up = first.start_upload(REPO)
    up.write(b"part one, ")
    up.close()

    second, queue2 = make_ingest(driver)
    again = second.resume(REPO, up.id)
    assert (again.id, again.repository, again.started_at) == (up.id, REPO, up.started_at)
    assert again.offset == 10
    again.write_at(10, b"part two")
    ticket = again.finish(sha256(b"part one, part two"), size=18)
    result = ticket.wait()
    assert result["size"] == 18
    assert len(queue2.calls) == 1
    with second.open(REPO, sha256(b"part one, part two")) as blob:
        assert blob.read() == b"part one, part two"


def test_resume_with_a_different_repository_is_blob_upload_unknown(ing: Ingest) -> None:
    up = ing.start_upload(REPO)
    up.close()
    with pytest.raises(BlobUploadUnknown):
        ing.resume("library/debian", up.id)
    with pytest.raises(BlobUploadUnknown):
        ing.staging.info(up.id, "library/debian")


@pytest.mark.parametrize("upload_id", [str(uuid.uuid4()), "../../etc", "", "NOT-A-UUID"])
def test_resume_of_an_unknown_or_malformed_id_is_blob_upload_unknown(
    ing: Ingest, upload_id: str
) -> None:
    with pytest.raises(BlobUploadUnknown):
        ing.resume(REPO, upload_id)


def test_operations_on_a_closed_handle_raise_upload_closed(ing: Ingest) -> None:
    up = ing.start_upload(REPO)
    up.write(b"abc")
    up.close()
    operations: list[Callable[[], object]] = [
        lambda: up.write(b"x"),
        lambda: up.write_at(3, b"x"),
        lambda: up.read_from(io.BytesIO(b"x")),
        lambda: up.offset,
        lambda: up.finish(sha256(b"abc")),
        up.cancel,
    ]
    for op in operations:
        with pytest.raises(UploadClosed):
            op()
    # The session itself is untouched and can be resumed.
    assert ing.resume(REPO, up.id).offset == 3


def test_the_handle_is_closed_after_finish(ing: Ingest) -> None:
    up = ing.start_upload(REPO)
    up.write(b"abc")
    up.finish(sha256(b"abc"))
    assert up.closed
    with pytest.raises(UploadClosed):
        up.write(b"more")


def test_writes_after_finish_are_blob_upload_invalid(ing: Ingest, driver: StorageDriver) -> None:
    up = ing.start_upload(REPO)
    other = ing.resume(REPO, up.id)
    up.write(b"abc")
    up.finish(sha256(b"abc"))
    late_writes: list[Callable[[], object]] = [
        lambda: other.write(b"late"),
        lambda: other.write_at(3, b"late"),
        lambda: other.read_from(io.BytesIO(b"late")),
    ]
    for op in late_writes:
        with pytest.raises(BlobUploadInvalid) as info:
            op()
        assert type(info.value) is BlobUploadInvalid
        assert info.value.detail["state"] == "finishing"
    with pytest.raises(BlobUploadInvalid):
        ing.resume(REPO, up.id)
    assert _staged(driver, up.id) == b"abc"


def test_cancel_then_any_operation_is_blob_upload_unknown(
    ing: Ingest, driver: StorageDriver
) -> None:
    up = ing.start_upload(REPO)
    other = ing.resume(REPO, up.id)
    other.write(b"some bytes")
    up.cancel()
    assert up.closed
    assert list(driver.walk("/uploads")) == []
    operations: list[Callable[[], object]] = [
        lambda: ing.resume(REPO, up.id),
        lambda: ing.status(up.id),
        lambda: ing.retry(up.id),
        lambda: ing.cancel(up.id),
        lambda: other.write(b"x"),
        lambda: other.write_at(10, b"x"),
        lambda: other.finish(sha256(b"some bytes")),
        lambda: ing.staging.size(up.id),
    ]
    for op in operations:
        with pytest.raises(BlobUploadUnknown):
            op()


def test_max_blob_size_is_enforced_while_writing(driver: StorageDriver) -> None:
    ing, queue = make_ingest(driver, Settings(max_blob_size=10))
    up = ing.start_upload(REPO)
    up.write(b"12345678")
    with pytest.raises(SizeInvalid) as info:
        up.write(b"abc")
    assert info.value.detail["limit"] == 10
    with pytest.raises(SizeInvalid):
        up.write_at(8, b"abc")
    up.write_at(8, b"90")
    with pytest.raises(SizeInvalid):
        up.write(b"!")
    assert up.offset == 10
    up.close()
    assert _staged(driver, up.id) == b"1234567890"
    assert queue.calls == []


def test_read_from_stops_at_max_blob_size_without_writing_past_it(
    driver: StorageDriver,
) -> None:
    limit = COPY_CHUNK + 100
    ing, _ = make_ingest(driver, Settings(max_blob_size=limit))
    up = ing.start_upload(REPO)
    with pytest.raises(SizeInvalid):
        up.read_from(io.BytesIO(b"x" * (2 * COPY_CHUNK)))
    assert up.offset <= limit
    up.close()


def test_upload_record_survives_its_json_form() -> None:
    record = UploadRecord(
        UploadState.FAILED,
        12.5,
        claimed_digest=sha256(b""),
        expected_size=3,
        size=3,
        task_id="t",
        attempt=2,
        error={"code": "DIGEST_INVALID"},
        verified=None,
        history=[{"state": "failed", "at": 12.5}],
    )
    assert UploadRecord.from_json(record.to_json()) == record


def test_last_activity_is_the_latest_state_change_or_write(driver: StorageDriver) -> None:
    now = [1000.0]
    staging = Staging(driver, clock=lambda: now[0])
    info = staging.create(REPO)
    assert info.started_at == 1000.0
    data_mtime = driver.stat(paths.upload_data_path(info.id)).mod_time
    assert staging.last_activity(info.id) == data_mtime  # the write is newer than 1000.0
    now[0] = 1e11  # a state change far in the future
    record = staging.state(info.id)
    staging.transition(info.id, record, UploadState.FAILED)
    assert staging.last_activity(info.id) == 1e11
    assert staging.state(info.id).history == [{"state": "failed", "at": 1e11}]
