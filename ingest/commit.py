"""Verify a staged upload and commit it into content-addressed storage.

:func:`commit_upload` is the body of the verification task, free of Celery so it
can be tested and reused directly. It is **idempotent** and safe to run twice
at once for the same upload (the Redis broker redelivers; clients re-finish).

Why no lock: every step is either a pure function of the staged bytes or an
atomic, repeatable storage operation, and progress is recorded in storage
*before* the step that destroys its input:

1. ``result.json`` exists → return it (already committed).
2. Seal the staged data (``finish`` sealed it already; this covers a finish by an
   older frontend). Then stream the staged bytes once, computing the canonical
   sha256 and the claimed digest together -- or, when a worker hashed the same
   bytes while they arrived (:mod:`ingest.prehash`) and got the claimed sha256,
   take that. Mismatch → state ``failed`` with the error, data kept.
3. Record ``verified`` (canonical digest, size) in ``state.json``. Only now may
   the staged data disappear, because a rerun that finds it gone can trust this
   record instead of re-hashing.
4. Move the data into ``/blobs/sha256/…`` (fsync, atomic rename), or drop it if
   that blob already exists (dedup). Two runners racing here both end with the
   same bytes under the same name.
5. Write the links (atomic temp + rename; same content if repeated).
6. Write ``result.json`` (atomic), then remove the staging data.

**The integrity invariant**: the bytes committed under a digest are exactly the
bytes that were hashed. It rests on the seal (``StorageDriver.seal``): hashing
starts only on sealed data, a sealed object takes no write from any writer however
old, and the seal moves with the object, so the bytes read in step 2 are the bytes
step 4 renames into place. The size read to the end must equal the size ``finish``
froze, and the placed blob must have it too, before anything links to it.
``tests/unit/test_integrity.py`` injects a late write at every step.

A crash between any two steps leaves a state from which a rerun completes the
commit, and no state in which a link names a missing blob. The verification's
lease (:mod:`ingest.leases`) is not a lock: it only tells ``reconcile`` and
``retry`` that this attempt is alive. Nothing about safety depends on it; a
wrong verdict about it costs at most a duplicate run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ingest import gc, paths
from ingest.blobs import BlobStore
from ingest.digests import (
    CANONICAL_ALGORITHM,
    Digest,
    VerifierLimits,
    new_hasher,
    new_verifier,
)
from ingest.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    IngestError,
    SizeInvalid,
    StorageUnavailable,
    Unknown,
)
from ingest.leases import LEASE_RENEW, hold_lease
from ingest.prehash import await_prehash
from ingest.storage.base import PathNotFound, StorageDriver, exists, sync_in_background
from ingest.uploads import Staging, UploadRecord, UploadState, Verification

__all__ = ["VERIFY_CHUNK", "Progress", "commit_upload", "compute_digests", "mark_failed"]

#: Read size of the verification pass: large enough that hashing, not Python,
#: dominates; small enough to keep the worker's memory flat.
VERIFY_CHUNK = 4 << 20
#: Minimum seconds between two progress reports.
PROGRESS_INTERVAL = 1.0
#: Blobs smaller than this verify in a few ms: no "started" progress report for
#: them (each report is a result-backend write and an event).
PROGRESS_MIN_SIZE = 32 << 20

#: ``progress(done_bytes, total_bytes)``
Progress = Callable[[int, int], None]
#: ``on_step(name)``: called after each step of a commit (a seam for tests that
#: inject faults and races between steps). Names: ``sealed``, ``hashed``,
#: ``checked``, ``recorded``, ``placing`` (just before the rename), ``placed``,
#: ``linked``, ``committed``.
StepHook = Callable[[str], None]


def _no_step(name: str) -> None:
    pass


def compute_digests(
    driver: StorageDriver,
    path: str,
    claimed: Digest,
    *,
    total: int | None = None,
    progress: Progress | None = None,
    chunk_size: int = VERIFY_CHUNK,
    limits: VerifierLimits | None = None,
) -> Verification:
    """One streaming pass over ``path`` computing sha256 and ``claimed``'s kind of digest.

    Memory is one reused buffer of ``chunk_size`` bytes whatever the blob size.
    """
    canonical = new_hasher(CANONICAL_ALGORITHM)
    same = claimed.algorithm == CANONICAL_ALGORITHM
    other = None if same else new_verifier(claimed, limits)
    size = 0
    last_report = time.monotonic()
    f = driver.reader(path)
    try:
        if total is None:
            total = driver.stat(path).size
        # A small blob gets a small buffer: zeroing 4 MiB for a 64 KiB blob cost more
        # than hashing it. (+1: the read that finds the end must not be a full one.)
        buf = bytearray(max(1, min(chunk_size, total + 1)))
        view = memoryview(buf)
        if progress is not None and total >= PROGRESS_MIN_SIZE:
            progress(0, total)
        readinto = f.readinto  # type: ignore[attr-defined]
        while True:
            n = readinto(view)
            if not n:
                break
            chunk = view[:n]
            canonical.update(chunk)
            if other is not None:
                other.update(chunk)
            size += n
            if progress is not None:
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL:
                    last_report = now
                    progress(size, total)
    finally:
        f.close()
    canonical_digest = Digest(CANONICAL_ALGORITHM, canonical.result().partition(":")[2])
    computed = canonical_digest if other is None else _as_digest(other.result())
    return Verification(canonical_digest, computed, size)


def _as_digest(text: str) -> Digest:
    # A hasher's own output: trusted to be "algorithm:encoded".
    algorithm, _, encoded = text.partition(":")
    return Digest(algorithm, encoded)


def mark_failed(
    staging: Staging, upload_id: str, error: IngestError, task_id: str | None = None
) -> None:
    """Record a failed verification -- unless the upload committed meanwhile, or (with
    ``task_id``) a newer attempt owns it: a late report of an old attempt must not
    overwrite a retry that is already under way."""
    if staging.result(upload_id) is not None:
        return
    try:
        record = staging.state(upload_id)
    except BlobUploadUnknown:
        return
    if task_id is not None and record.task_id != task_id:
        return  # another attempt's upload (or one never finished): not ours to judge
    if record.state is UploadState.OPEN:
        return
    if record.state is UploadState.FAILED and record.error == error.to_dict():
        return  # already recorded (the task body records before the result is visible)
    staging.transition(upload_id, record, UploadState.FAILED, error=error.to_dict())


def commit_upload(
    driver: StorageDriver,
    upload_id: str,
    claimed: Digest,
    expected_size: int | None = None,
    *,
    progress: Progress | None = None,
    task_id: str | None = None,
    chunk_size: int = VERIFY_CHUNK,
    limits: VerifierLimits | None = None,
    on_step: StepHook = _no_step,
) -> dict[str, Any]:
    """Verify upload ``upload_id`` against the ``claimed`` digest and commit it.

    Returns the committed result (a JSON-safe dict). Raises DigestInvalid or
    SizeInvalid (recorded in the upload's state, data kept for a retry),
    BlobUploadUnknown, BlobUploadInvalid (an upload that was never finished, or a
    superseded attempt), or StorageUnavailable (transient: retry the call).
    """
    started = time.monotonic()
    staging = Staging(driver)
    blobs = BlobStore(driver)
    paths.validate_upload_id(upload_id)

    done = staging.result(upload_id)
    if done is not None:
        return done
    info = staging.info(upload_id)
    record = staging.state(upload_id)
    if task_id is not None and record.task_id is not None and record.task_id != task_id:
        # A late duplicate of an earlier attempt: the newer attempt owns the upload.
        raise BlobUploadInvalid(
            "verification attempt superseded by a newer one",
            {"reason": "superseded", "upload_id": upload_id, "task_id": task_id},
        )
    if record.state is UploadState.OPEN or record.size is None:
        # Only finish() freezes an upload and records its size; a task naming an
        # upload that is still being written is not acted on (and not recorded).
        raise BlobUploadInvalid(
            "upload is not finished",
            {"reason": "not-finished", "upload_id": upload_id, "state": record.state.value},
        )
    # While the lease is renewed, reconcile and retry leave this attempt alone; if the
    # worker dies, it goes stale in seconds and they hand the work to another worker.
    # A small blob verifies in milliseconds: its lease is written only if it stalls.
    first_after = 0.0 if record.size >= PROGRESS_MIN_SIZE else LEASE_RENEW
    try:
        with hold_lease(
            driver, paths.upload_verify_lease_path(upload_id), task_id, first_after=first_after
        ):
            return _verify_and_place(
                started,
                driver,
                staging,
                blobs,
                info.repository,
                upload_id,
                claimed,
                expected_size,
                record,
                progress=progress,
                task_id=task_id,
                chunk_size=chunk_size,
                limits=limits,
                on_step=on_step,
            )
    finally:
        staging.remove_husk(upload_id)  # cancelled while we worked


def _verify_and_place(
    started: float,
    driver: StorageDriver,
    staging: Staging,
    blobs: BlobStore,
    repository: str,
    upload_id: str,
    claimed: Digest,
    expected_size: int | None,
    record: UploadRecord,
    *,
    progress: Progress | None,
    task_id: str | None,
    chunk_size: int,
    limits: VerifierLimits | None,
    on_step: StepHook,
) -> dict[str, Any]:
    """Steps 2 to 6 of the module docstring, for a finished upload."""
    data_path = paths.upload_data_path(upload_id)
    verified = _recorded_verification(record, claimed)
    if verified is not None and exists(driver, data_path):
        # Still staged: hash it again rather than trust a record about it. The record
        # is for a rerun that finds the data already moved into the blob store.
        verified = None
    computed: Verification | None = None
    flusher: threading.Thread | None = None
    prehashed = False
    if verified is None:
        try:
            # From here the staged bytes cannot change (see the module docstring).
            frozen = driver.seal(data_path)
        except PathNotFound:
            frozen = None  # gone: handled with the same case below
        on_step("sealed")
        if frozen == record.size:
            computed = _prehashed(driver, upload_id, claimed, record)
        prehashed = computed is not None
        if computed is None:
            # Flush the staged bytes to disk while we hash them: the fsync before the
            # rename into the blob store then has little left to do (for a large blob
            # the flush costs about as much as half the hashing).
            flusher = _background_sync(driver, data_path, record.size)
            try:
                computed = compute_digests(
                    driver,
                    data_path,
                    claimed,
                    total=record.size,
                    progress=progress,
                    chunk_size=chunk_size,
                    limits=limits,
                )
            except PathNotFound:
                # The staged data is gone: cancelled (state() raises BlobUploadUnknown),
                # committed by a concurrent runner, or verified and moved by one.
                if (done := staging.result(upload_id)) is not None:
                    return done
                record = staging.state(upload_id)
                verified = _recorded_verification(record, claimed) or _in_store(
                    blobs, claimed, record
                )
                if verified is None:
                    # Transient by nature: the runner that took the data will record an
                    # outcome, and the retry then finds it.
                    raise StorageUnavailable(
                        "staged data missing while the upload is still finishing",
                        {"upload_id": upload_id},
                    ) from None
    if verified is None:
        assert computed is not None
        if flusher is not None:
            flusher.join()
        on_step("hashed")
        try:
            _check(computed, claimed, expected_size, record)
        except (DigestInvalid, SizeInvalid, BlobUploadInvalid) as exc:
            # Name the upload, so whoever sees the error can retry it.
            exc.detail.setdefault("upload_id", upload_id)
            exc.args = (exc.message, exc.detail)
            mark_failed(staging, upload_id, exc, task_id)
            raise
        on_step("checked")
        verified = computed
        if (done := staging.result(upload_id)) is not None:
            return done  # a concurrent runner committed while we hashed
        if claimed != computed.canonical:
            # Only a claim in another algorithm needs this record: for a sha256
            # claim the blob's own path proves the verification (see _in_store).
            record = staging.transition(upload_id, record, UploadState.VERIFIED, verified=verified)
        on_step("recorded")

    canonical, size = verified.canonical, verified.size
    deduplicated = _place_blob(blobs, driver, data_path, canonical, size, upload_id, on_step)
    on_step("placed")

    blobs.link(repository, canonical, canonical)
    if claimed != canonical:
        blobs.link(repository, claimed, canonical)
    on_step("linked")

    result: dict[str, Any] = {
        "status": "committed",
        "upload_id": upload_id,
        "repository": repository,
        "digest": str(claimed),
        "canonical_digest": str(canonical),
        "size": size,
        "deduplicated": deduplicated,
        "prehashed": prehashed,
        "duration": round(time.monotonic() - started, 6),
        "task_id": task_id,
        "committed_at": time.time(),
    }
    if (done := staging.result(upload_id)) is not None:
        return done  # first writer wins: every caller sees one result
    staging.write_result(upload_id, result)
    # result.json is authoritative; the state file follows for readers of state alone.
    staging.transition(upload_id, record, UploadState.COMMITTED, durable=False)
    if deduplicated:
        # The staged copy is left only when the blob was already there; a move took
        # it otherwise (on an object store a delete of nothing still costs requests).
        with contextlib.suppress(PathNotFound):
            driver.delete(data_path)
    on_step("committed")
    return result


#: Below this size the early flush is not worth a thread.
EARLY_SYNC_MIN_SIZE = 8 << 20


def _background_sync(driver: StorageDriver, path: str, size: int | None) -> threading.Thread | None:
    if size is None or size < EARLY_SYNC_MIN_SIZE:
        return None
    return sync_in_background(driver, path)


def _prehashed(
    driver: StorageDriver, upload_id: str, claimed: Digest, record: UploadRecord
) -> Verification | None:
    """The digests a prehash computed while the bytes arrived (see
    :mod:`ingest.prehash`); only a sha256 claim can use them.

    Only agreement is taken from it: if the prehash disagrees with the claim, the
    record is dropped and the full pass decides, so every rejection (and the retry
    after one, perhaps with repaired staged bytes) rests on a fresh read.
    """
    if claimed.algorithm != CANONICAL_ALGORITHM or record.size is None:
        return None
    pre = await_prehash(driver, upload_id, record.size)
    if pre is None:
        return None
    if pre.digest != str(claimed):
        with contextlib.suppress(PathNotFound):
            driver.delete(paths.upload_prehash_path(upload_id))
        return None
    digest = _as_digest(pre.digest)
    return Verification(digest, digest, pre.size)


def _in_store(blobs: BlobStore, claimed: Digest, record: UploadRecord) -> Verification | None:
    """For a sha256 claim whose staged data is gone: if the content address holds a
    blob of the frozen size, a runner verified and moved it (nothing else writes
    there), so the commit can carry on from the move."""
    if claimed.algorithm != CANONICAL_ALGORITHM:
        return None
    size = blobs.exists(claimed)
    if size is None or (record.size is not None and size != record.size):
        return None
    return Verification(claimed, claimed, size)


def _recorded_verification(record: UploadRecord, claimed: Digest) -> Verification | None:
    """The verification a runner recorded for this claim, if any (trusted on rerun)."""
    v = record.verified
    if record.state is UploadState.VERIFIED and v is not None and v.computed == claimed:
        return v
    return None


def _check(
    computed: Verification, claimed: Digest, expected_size: int | None, record: UploadRecord
) -> None:
    if record.size is not None and computed.size != record.size:
        # Bytes landed after finish() froze the size: never commit what was not verified
        # as the client finished it.
        raise BlobUploadInvalid(
            "staged data changed after finish",
            {"reason": "modified", "expected_size": record.size, "size": computed.size},
        )
    if expected_size is not None and computed.size != expected_size:
        raise SizeInvalid(
            f"blob has {computed.size} bytes, {expected_size} were claimed",
            {"claimed": expected_size, "computed": computed.size},
        )
    if computed.computed != claimed:
        raise DigestInvalid(
            "provided digest did not match uploaded content",
            {
                "reason": "mismatch",
                "claimed": str(claimed),
                "computed": str(computed.computed),
                "canonical": str(computed.canonical),
            },
        )


def _place_blob(
    blobs: BlobStore,
    driver: StorageDriver,
    data_path: str,
    canonical: Digest,
    size: int,
    upload_id: str,
    on_step: StepHook,
) -> bool:
    """Get the verified bytes to ``/blobs/…``; True if the blob was already there."""
    # Before relying on a stored blob: keep it from a garbage collection that is
    # deciding about it (this upload's state names it: ingest.gc, "the writers").
    gc.retain_blob(driver, canonical)
    # A blob of the wrong size under a content address is damage, not a dedup hit:
    # it is replaced by the bytes just verified.
    if blobs.exists(canonical) == size:
        return True
    on_step("placing")
    try:
        driver.move(data_path, paths.blob_data_path(canonical))
    except PathNotFound:
        # The staged copy is gone: a concurrent runner moved it. Only fine if the
        # blob is now in place.
        if blobs.exists(canonical) == size:
            return False
        raise BlobUploadUnknown(
            "staged data vanished before it was committed", {"upload_id": upload_id}
        ) from None
    placed = blobs.exists(canonical)
    if placed != size:
        # Cannot happen while every writer honours the seal; if one did not, nothing
        # may link to what it left (fsck reports the blob).
        raise Unknown(
            "the placed blob does not have the verified size",
            {"upload_id": upload_id, "digest": str(canonical), "size": size, "placed": placed},
        )
    return False
