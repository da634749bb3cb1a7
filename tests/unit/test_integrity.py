"""The integrity invariant through the real commit path, on every storage driver.

The bytes committed under a digest are exactly the bytes that were hashed. A
writer that was already streaming when ``finish`` froze the upload (the handle a
PATCH request holds, its state read before the finish) tries to add bytes at
every step of the commit, through the commit's step hook. Every attempt must be
refused with BLOB_UPLOAD_INVALID, and the committed blob must be exactly the
frozen bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest import paths
from ingest.api import Ingest, Upload
from ingest.commit import commit_upload
from ingest.digests import parse_digest
from ingest.errors import BlobUploadInvalid, DigestInvalid
from ingest.storage.base import StorageDriver
from tests.unit.fakes import DRIVER_KINDS, make_driver, make_ingest, sha256, sha512

REPO = "integrity/late-writes"
DATA = bytes(range(256)) * 4096  # 1 MiB
LATE = b"bytes that were never verified"

#: Every step commit_upload reports, in order. "placing" is just before the rename.
STEPS = ("sealed", "hashed", "checked", "recorded", "placing", "placed", "linked", "committed")


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


def _stage_with_a_late_writer(ing: Ingest) -> tuple[Upload, Upload]:
    """An upload holding DATA, plus a second handle on it that has already written
    (so its storage writer is open) and still believes the upload is open."""
    up = ing.start_upload(REPO)
    up.write(DATA[:4096])
    late = ing.resume(REPO, up.id, immediate=True)
    late.write(DATA[4096:])
    return up, late


def _assert_committed_exactly(driver: StorageDriver, ing: Ingest, claim: str) -> None:
    canonical = parse_digest(sha256(DATA))
    stored = driver.get_content(paths.blob_data_path(canonical))
    assert stored == DATA
    assert hashlib.sha256(stored).hexdigest() == canonical.encoded
    with ing.open(REPO, claim) as blob:
        assert blob.read() == DATA
    assert [fi.path for fi in driver.walk("/blobs")] == [paths.blob_data_path(canonical)]


@pytest.mark.parametrize("claim_of", [sha256, sha512], ids=["sha256", "sha512"])
@pytest.mark.parametrize("step", STEPS)
def test_a_write_from_a_handle_opened_before_finish_is_refused_at_every_commit_step(
    driver: StorageDriver, step: str, claim_of: Callable[[bytes], str]
) -> None:
    claim = claim_of(DATA)
    ing, _ = make_ingest(driver)
    up, late = _stage_with_a_late_writer(ing)
    ticket = up.finish(claim)
    refusals: list[str] = []

    def inject(at: str) -> None:
        if at != step:
            return
        with pytest.raises(BlobUploadInvalid) as refused:
            late.write(LATE)
        refusals.append(refused.value.code)

    result = commit_upload(
        driver, up.id, parse_digest(claim), None, task_id=ticket.task_id, on_step=inject
    )
    late.close()
    assert refusals == ["BLOB_UPLOAD_INVALID"]  # the hook ran, and the write was refused
    assert result["size"] == len(DATA)
    _assert_committed_exactly(driver, ing, claim)


@pytest.mark.parametrize("step", STEPS)
def test_a_handle_that_read_open_before_finish_but_writes_first_after_it_is_refused(
    driver: StorageDriver, step: str
) -> None:
    # The streaming PATCH of the original report: its handle saw "open", then the
    # body took long enough that its first write came after the finish.
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    stale = ing.resume(REPO, up.id, immediate=True)
    ticket = up.finish(sha256(DATA))
    refusals: list[str] = []

    def inject(at: str) -> None:
        if at == step:
            with pytest.raises(BlobUploadInvalid) as refused:
                stale.write(LATE)
            refusals.append(refused.value.code)

    commit_upload(
        driver, up.id, parse_digest(sha256(DATA)), None, task_id=ticket.task_id, on_step=inject
    )
    stale.close()
    assert refusals == ["BLOB_UPLOAD_INVALID"]
    _assert_committed_exactly(driver, ing, sha256(DATA))


def test_every_step_of_the_commit_is_reported_in_order(driver: StorageDriver) -> None:
    # Guards the tests above: a step that is renamed or no longer reported would
    # make them pass without injecting anything.
    ing, _ = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA)
    ticket = up.finish(sha512(DATA))
    seen: list[str] = []
    commit_upload(
        driver, up.id, parse_digest(sha512(DATA)), None, task_id=ticket.task_id, on_step=seen.append
    )
    assert tuple(seen) == STEPS


def test_a_late_write_after_a_rejection_cannot_turn_the_retry_into_a_commit_of_new_bytes(
    driver: StorageDriver,
) -> None:
    # A wrong claim fails; the late writer then tries to make the staged bytes match
    # another claim before the retry. The data stays frozen: the retry judges DATA.
    ing, _ = make_ingest(driver)
    up, late = _stage_with_a_late_writer(ing)
    first = up.finish(sha256(DATA + LATE))
    with pytest.raises(DigestInvalid):
        first.wait()
    with pytest.raises(BlobUploadInvalid):
        late.write(LATE)
    late.close()
    with pytest.raises(DigestInvalid):
        ing.retry(up.id).wait()
    assert ing.retry(up.id, sha256(DATA)).wait()["size"] == len(DATA)
    _assert_committed_exactly(driver, ing, sha256(DATA))
