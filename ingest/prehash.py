"""Hash a large upload on a worker while its bytes are still arriving.

Verification re-reads the staged bytes after ``finish``; for a large blob that
pass is a second trip through the data after the receive, and on a small machine
the two run one after the other. A *prehash* overlaps them: once an upload has
grown past ``INGEST_PREHASH_MIN_SIZE`` the frontend enqueues
``ingest.prehash_upload``, and a worker tails the staged file, feeding sha256 as
bytes land. When the upload is finished it hashes the tail and records
``prehash.json`` (size, sha256). The verification task then only has to wait for
that record and compare it with the claim.

Why this is as strong as the full pass: the record is computed by a worker from
the staged bytes in storage, not by the frontend from the request; staged data is
append-only (:class:`~ingest.uploads.UploadWriter` refuses writes anywhere but at
the end, and any write once the upload is no longer open), so the hash of the
first N bytes cannot go stale; and the record is used only if N is exactly the
size ``finish`` froze.

It is an optimisation only. No prehash, a dead one (its lease stops being
renewed), an abandoned one (the client went idle) or a claim in another
algorithm than sha256 all fall back to the full pass, and a prehash never
changes an upload's state.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest import paths
from ingest.digests import CANONICAL_ALGORITHM, new_hasher
from ingest.errors import BlobUploadUnknown
from ingest.leases import Lease, read_lease, write_lease
from ingest.storage.base import PathNotFound, StorageDriver, sync_in_background
from ingest.uploads import Staging, UploadState

__all__ = ["Prehashed", "await_prehash", "prehash_upload", "read_prehash"]

#: Seconds between two renewals of the lease while hashing (see :mod:`ingest.leases`;
#: shorter than a verification's, because a verification may be waiting on it).
LEASE_RENEW = 1.0
#: A lease not renewed for this long belongs to a dead or stuck prehash.
LEASE_STALE = 5.0
#: Polling at the end of the staged data: start fast, back off while nothing arrives.
POLL_MIN = 0.002
POLL_MAX = 0.02
#: fsync the staged data in the background every this many new bytes, so the fsync
#: before the commit's rename has only the tail left to flush.
SYNC_EVERY = 64 << 20
#: Below this size a commit does not look for a prehash at all.
LOOKUP_MIN_SIZE = 8 << 20


@dataclass(frozen=True, slots=True)
class Prehashed:
    """sha256 of the first ``size`` staged bytes, computed by a worker."""

    size: int
    digest: str  # "sha256:<hex>"


def read_prehash(driver: StorageDriver, upload_id: str) -> Prehashed | None:
    try:
        raw = json.loads(driver.get_content(paths.upload_prehash_path(upload_id)))
        return Prehashed(int(raw["size"]), str(raw["digest"]))
    except (PathNotFound, ValueError, KeyError, TypeError):
        return None


def await_prehash(
    driver: StorageDriver,
    upload_id: str,
    size: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> Prehashed | None:
    """The prehash of exactly ``size`` bytes, waiting while a live prehash is still
    catching up; None if there is none (or it died, or hashed another size)."""
    if size < LOOKUP_MIN_SIZE:
        return None
    delay = POLL_MIN
    while True:
        done = read_prehash(driver, upload_id)
        if done is not None:
            return done if done.size == size else None
        lease = read_lease(driver, paths.upload_prehash_lease_path(upload_id))
        if lease is None:
            # It may have finished between the two reads.
            done = read_prehash(driver, upload_id)
            return done if done is not None and done.size == size else None
        if lease.stale(now(), LEASE_STALE):
            return None
        sleep(delay)
        delay = min(delay * 2, POLL_MAX)


def prehash_upload(
    driver: StorageDriver,
    upload_id: str,
    *,
    task_id: str | None = None,
    idle_timeout: float = 10.0,
    max_duration: float | None = None,
    chunk_size: int = 4 << 20,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Tail upload ``upload_id``'s staged bytes until it is finished, then record their
    sha256 in ``prehash.json``. Returns a JSON-safe summary whose ``status`` is
    ``hashed``, ``skipped`` (not open when we started, or gone) or ``abandoned``
    (idle for ``idle_timeout`` s, or ``max_duration`` s passed).
    """
    paths.validate_upload_id(upload_id)
    staging = Staging(driver)
    started = clock()
    lease_path = paths.upload_prehash_lease_path(upload_id)
    data_path = paths.upload_data_path(upload_id)
    summary: dict[str, Any] = {"upload_id": upload_id, "bytes": 0, "task_id": task_id}

    def outcome(status: str, reason: str | None = None) -> dict[str, Any]:
        summary.update(status=status, duration=round(clock() - started, 6))
        if reason:
            summary["reason"] = reason
        return summary

    def renew(offset: int) -> None:
        write_lease(driver, lease_path, Lease(task_id, now(), detail={"offset": offset}))

    try:
        staging.info(upload_id)
    except BlobUploadUnknown:
        return outcome("skipped", "unknown upload")
    if read_prehash(driver, upload_id) is not None:
        return outcome("skipped", "already hashed")
    # Lease first, state second: a verification that starts meanwhile either sees the
    # lease and waits for us, or we see its state and leave the work to it.
    renew(0)
    f = None
    try:
        try:
            if staging.state(upload_id).state is not UploadState.OPEN:
                return outcome("skipped", "not open")
            f = driver.reader(data_path)
        except (BlobUploadUnknown, PathNotFound):
            return outcome("skipped", "unknown upload")
        hasher = new_hasher(CANONICAL_ALGORITHM)
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        # One background fsync at a time, every SYNC_EVERY new bytes.
        syncing: threading.Thread | None = None
        hashed = synced = 0
        last_data = last_renew = clock()
        delay = POLL_MIN
        reopened_at = -1
        while True:
            n = f.readinto(view)  # type: ignore[attr-defined]
            if n:
                hasher.update(view[:n])
                hashed += n
                summary["bytes"] = hashed
                t = clock()
                last_data, delay = t, POLL_MIN
                if t - last_renew >= LEASE_RENEW:
                    renew(hashed)
                    last_renew = t
                if hashed - synced >= SYNC_EVERY and not (syncing and syncing.is_alive()):
                    syncing, synced = sync_in_background(driver, data_path), hashed
                continue
            if delay == POLL_MIN and clock() - last_data < POLL_MAX:
                # Just caught up with the writer: more bytes are the likely news, so
                # wait a moment before paying for a look at the state.
                sleep(delay)
                delay *= 2
                continue
            # At the end of what this reader sees: finished, or more to come?
            try:
                record = staging.state(upload_id)
                staged = driver.stat(data_path).size
            except (BlobUploadUnknown, PathNotFound):
                return outcome("skipped", "upload gone")
            if staged > hashed and reopened_at != hashed:
                # A driver whose readers are snapshots (not the filesystem's) does not
                # show bytes appended after the open: read on from a fresh reader.
                f.close()
                f = driver.reader(data_path, hashed)
                reopened_at = hashed
                continue
            if record.state is UploadState.OPEN:
                t = clock()
                if t - last_data > idle_timeout:
                    return outcome("abandoned", "idle")
                if max_duration is not None and t - started > max_duration:
                    return outcome("abandoned", "time limit")
                if t - last_renew >= LEASE_RENEW:
                    renew(hashed)
                    last_renew = t
                sleep(delay)
                delay = min(delay * 2, POLL_MAX)
                continue
            if record.state is UploadState.COMMITTED or record.size != hashed:
                # Committed by a full pass already, or a size we cannot vouch for.
                return outcome("skipped", f"upload {record.state.value}")
            summary["digest"] = hasher.result()
            record_json = {"size": hashed, "digest": summary["digest"], "task_id": task_id}
            driver.put_content(
                paths.upload_prehash_path(upload_id),
                json.dumps(record_json).encode(),
                durable=False,
            )
            return outcome("hashed")
    finally:
        if f is not None:
            f.close()
        with contextlib.suppress(PathNotFound):
            driver.delete(lease_path)
        staging.remove_husk(upload_id)
