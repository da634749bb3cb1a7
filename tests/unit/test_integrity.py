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


# -- the paths this restructuring added or moved ---------------------------------------


class _Crash(Exception):
    """A worker dying between two steps of the commit."""


@pytest.mark.parametrize("step", STEPS[1:5])
def test_a_rerun_that_trusts_the_recorded_verification_still_commits_only_the_frozen_bytes(
    driver: StorageDriver, step: str
) -> None:
    # sha512 claims record their verification (uploads.Verification) before the move;
    # the worker dies at `step`, a late writer tries again, the rerun finishes.
    claim = sha512(DATA)
    ing, _ = make_ingest(driver)
    up, late = _stage_with_a_late_writer(ing)
    ticket = up.finish(claim)

    def crash(at: str) -> None:
        if at == step:
            raise _Crash(at)

    with pytest.raises(_Crash):
        commit_upload(
            driver, up.id, parse_digest(claim), None, task_id=ticket.task_id, on_step=crash
        )
    with pytest.raises(BlobUploadInvalid):
        late.write(LATE)
    late.close()
    result = commit_upload(driver, up.id, parse_digest(claim), None, task_id=ticket.task_id)
    assert result["size"] == len(DATA)
    _assert_committed_exactly(driver, ing, claim)


def test_an_immediate_handle_that_appends_and_finishes_while_another_request_finishes(
    driver: StorageDriver,
) -> None:
    # The one-hop PUT (append, then finish trusting the record read at open) against
    # a second request finishing the same upload between the append and the finish.
    ing, queue = make_ingest(driver)
    up = ing.start_upload(REPO)
    up.write(DATA[:4096])
    up.close()
    handle = ing.resume(REPO, up.id, immediate=True)
    handle.write(DATA[4096:])
    other = ing.finish(REPO, up.id, sha256(DATA))  # the racing request
    with pytest.raises(BlobUploadInvalid):  # a late chunk of this handle: refused
        handle.write(LATE)
    mine = handle.finish(sha256(DATA))
    results = [t.wait() for t in (mine, other)]
    assert {r["digest"] for r in results} == {sha256(DATA)}
    assert all(r["size"] == len(DATA) for r in results)
    assert len(queue.calls) == 2
    _assert_committed_exactly(driver, ing, sha256(DATA))


def _batched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Callable[[str], None]
) -> tuple[Ingest, Upload, Upload, str, dict[str, object], StorageDriver]:
    """An upload finished for a batch, with a late writer, and verify_batch's commit
    wired to ``inject``. Returns what the batch will be called with."""
    from workers import tasks

    real = commit_upload

    def with_hook(*args: object, **kwargs: object) -> object:
        return real(*args, on_step=inject, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks, "commit_upload", with_hook)
    monkeypatch.setattr(tasks.verify_batch, "store_outcome", lambda *a: None)
    driver = make_driver("filesystem", tmp_path)
    ing, queue = make_ingest(driver)
    up, late = _stage_with_a_late_writer(ing)
    claim = sha512(DATA)
    ticket = up.finish(claim)
    call = queue.call(ticket.task_id)
    entry: dict[str, object] = {
        "upload_id": up.id,
        "digest": call.digest,
        "size": None,
        "staged_size": call.staged_size,
        "task_id": ticket.task_id,
        "repository": REPO,
    }
    return ing, up, late, claim, entry, driver


@pytest.mark.parametrize("step", STEPS)
def test_a_write_during_a_batched_verification_is_refused_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    from tests.unit.fakes import worker_settings
    from workers import tasks

    refusals: list[str] = []
    holder: dict[str, Upload] = {}

    def inject(at: str) -> None:
        if at == step:
            with pytest.raises(BlobUploadInvalid) as refused:
                holder["late"].write(LATE)
            refusals.append(refused.value.code)

    ing, _, late, claim, entry, driver = _batched(tmp_path, monkeypatch, inject)
    holder["late"] = late
    with worker_settings(tmp_path / "root"):
        summary = tasks.verify_batch([entry])
    late.close()
    assert summary["committed"] == 1
    assert refusals == ["BLOB_UPLOAD_INVALID"]
    _assert_committed_exactly(driver, ing, claim)


@pytest.mark.parametrize("step", ["hashed", "recorded", "placing", "placed", "linked"])
def test_the_uploads_own_task_running_inside_a_batchs_commit_leaves_one_blob_and_one_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # A transient fault, a redelivered batch or reconcile can run the upload's own
    # task while the batch still works on it: here it runs to the end at `step`.
    from tests.unit.fakes import worker_settings
    from workers import tasks

    ran: list[dict[str, object]] = []
    holder: dict[str, object] = {}

    def inject(at: str) -> None:
        if at == step and not ran:
            ran.append(
                commit_upload(
                    holder["driver"],  # type: ignore[arg-type]
                    str(holder["id"]),
                    parse_digest(str(holder["claim"])),
                    None,
                    task_id=str(holder["task"]),
                )
            )

    ing, up, late, claim, entry, driver = _batched(tmp_path, monkeypatch, inject)
    late.close()
    holder.update(driver=driver, id=up.id, claim=claim, task=entry["task_id"])
    with worker_settings(tmp_path / "root"):
        summary = tasks.verify_batch([entry])
    assert summary["committed"] == 1
    assert len(ran) == 1
    assert ing.staging.result(up.id) == ran[0]  # first writer wins; one result
    _assert_committed_exactly(driver, ing, claim)
