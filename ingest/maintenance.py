"""Housekeeping: purge abandoned uploads, re-enqueue verifications Redis lost.

Both jobs work from what storage says, never from Redis alone, so they are
correct after a Redis flush, and both are safe to run while uploads proceed:

* :func:`purge_uploads` removes sessions whose **last activity** (last staged
  write or state change, not start time) is older than a cut-off. It never
  touches uploads that are finishing or verified: those belong to a task.
* :func:`reconcile` finds uploads stuck in ``finishing``/``verified`` and sends
  their task again under the same task id: at once when the worker verifying it
  died (its lease went stale, :mod:`ingest.attempts`), and after a grace when no
  worker ever took it (lost with Redis, or never delivered). Tasks are idempotent,
  so a rare duplicate (a task merely queued for longer than the grace, or a worker
  that was only slow to renew) is harmless.

Run them from Celery beat (``workers.tasks``) or the CLI (``ingest purge``,
``ingest reconcile``); one purge at a time is enforced by the caller's lock. Both
refuse a cut-off below its floor (purge 1 h, reconcile 1 min: :mod:`ingest.arguments`)
whoever calls, since a task message from the broker can ask for anything.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ingest import paths
from ingest.arguments import check_flag, check_purge_age, check_reconcile_grace
from ingest.attempts import attempt_lease
from ingest.config import Settings
from ingest.digests import parse_digest
from ingest.errors import BlobUploadUnknown
from ingest.leases import Lease, write_lease
from ingest.queue import TaskQueue
from ingest.storage.base import PathNotFound, StorageDriver, is_temporary
from ingest.uploads import Staging, UploadRecord, UploadState

__all__ = ["PurgeSummary", "ReconcileSummary", "failed_uploads", "purge_uploads", "reconcile"]

_BUSY = (UploadState.FINISHING, UploadState.VERIFIED)


@dataclass
class PurgeSummary:
    """What a purge removed (or would remove, with ``dry_run``)."""

    dry_run: bool
    older_than: float
    scanned: int = 0
    removed: list[dict[str, Any]] = field(default_factory=list)
    skipped_busy: int = 0
    kept_recent: int = 0
    bytes_freed: int = 0
    #: Driver-level leftovers removed (S3: abandoned multipart uploads, orphan segments).
    leftovers_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "older_than": self.older_than,
            "scanned": self.scanned,
            "removed": self.removed,
            "removed_count": len(self.removed),
            "skipped_busy": self.skipped_busy,
            "kept_recent": self.kept_recent,
            "bytes_freed": self.bytes_freed,
            "leftovers_removed": self.leftovers_removed,
        }


def purge_uploads(
    driver: StorageDriver, *, older_than: float, now: float | None = None, dry_run: bool = False
) -> PurgeSummary:
    """Remove upload sessions idle for more than ``older_than`` seconds.

    Refuses (ArgumentInvalid) an ``older_than`` below
    :data:`~ingest.arguments.MIN_PURGE_AGE`, whoever calls: beat, a task message, the CLI.
    """
    older_than = check_purge_age(older_than)
    dry_run = check_flag("dry_run", dry_run)
    staging = Staging(driver)
    cutoff = (time.time() if now is None else now) - older_than
    summary = PurgeSummary(dry_run=dry_run, older_than=older_than)
    for upload_id in staging.list_ids():
        if is_temporary(upload_id):
            continue
        summary.scanned += 1
        try:
            paths.validate_upload_id(upload_id)
            record = staging.state(upload_id)
            last = staging.last_activity(upload_id)
        except BlobUploadUnknown:
            # A half-created session (crash between its first files): judge by age.
            last, record = _dir_age(driver, upload_id), None
        if record is not None and record.state in _BUSY:
            summary.skipped_busy += 1
            continue
        if last >= cutoff:
            summary.kept_recent += 1
            continue
        size = 0
        with contextlib.suppress(PathNotFound, BlobUploadUnknown):
            size = driver.stat(paths.upload_data_path(upload_id)).size
        entry = {
            "upload_id": upload_id,
            "state": record.state.value if record is not None else "incomplete",
            "last_activity": last,
            "bytes": size,
        }
        if not dry_run:
            try:
                driver.delete(paths.upload_entry_path(upload_id))
            except PathNotFound:
                continue
        summary.removed.append(entry)
        summary.bytes_freed += size
    if not dry_run and isinstance(driver, PurgesLeftovers):
        summary.leftovers_removed = driver.purge_leftovers(older_than, now=now)
    return summary


@runtime_checkable
class PurgesLeftovers(Protocol):
    """A driver with debris of its own that no upload session accounts for (the S3
    driver's open multipart uploads and orphaned segments): the purge removes it too."""

    def purge_leftovers(self, older_than: float, *, now: float | None = None) -> int:
        """Remove such debris older than ``older_than`` seconds; return how much."""


def _dir_age(driver: StorageDriver, upload_id: str) -> float:
    try:
        return max(
            (fi.mod_time for fi in driver.walk(paths.upload_entry_path(upload_id))),
            default=0.0,
        )
    except Exception:  # noqa: BLE001 - an unreadable leftover is old by definition
        return 0.0


@dataclass
class ReconcileSummary:
    dry_run: bool
    scanned: int = 0
    requeued: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    recorded_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "requeued": self.requeued,
            "requeued_count": len(self.requeued),
            "in_flight": self.in_flight,
            "recorded_failures": self.recorded_failures,
        }


def reconcile(
    driver: StorageDriver,
    queue: TaskQueue,
    settings: Settings,
    *,
    grace: float,
    now: float | None = None,
    dry_run: bool = False,
) -> ReconcileSummary:
    """Re-enqueue verifications of uploads stuck for ``grace`` seconds with no live task.

    Refuses (ArgumentInvalid) a ``grace`` below :data:`~ingest.arguments.MIN_RECONCILE_GRACE`.
    """
    grace = check_reconcile_grace(grace)
    dry_run = check_flag("dry_run", dry_run)
    from ingest.commit import mark_failed
    from ingest.errors import from_dict

    staging = Staging(driver)
    now = time.time() if now is None else now
    cutoff = now - grace
    summary = ReconcileSummary(dry_run=dry_run)
    for upload_id in staging.list_ids():
        try:
            paths.validate_upload_id(upload_id)
            record = staging.state(upload_id)
        except BlobUploadUnknown:
            continue
        if record.state not in _BUSY or staging.result(upload_id) is not None:
            continue
        summary.scanned += 1
        if not record.task_id or not record.claimed_digest:
            summary.in_flight += 1
            continue
        lease = attempt_lease(driver, upload_id, record)
        if lease is not None and not lease.requeued:
            if not lease.stale(now):
                summary.in_flight += 1  # a live worker renews it
                continue
            # Its worker died mid-verification: hand it over now, whatever the grace
            # (the broker would redeliver only after the whole visibility timeout).
            reason = "lease-expired"
        else:
            # No lease of this attempt: queued, retrying, or lost; or re-sent by an
            # earlier reconcile and still queued. Only time tells these apart.
            since = record.updated_at if lease is None else lease.renewed_at
            if since >= cutoff:
                summary.in_flight += 1
                continue
            info = queue.info(record.task_id)
            if info.state == "FAILURE" and info.error is not None:
                # The task ended but its bookkeeping did not reach storage.
                if not dry_run:
                    mark_failed(staging, upload_id, from_dict(info.error), record.task_id)
                summary.recorded_failures += 1
                continue
            if info.state == "RETRY":
                summary.in_flight += 1  # a worker holds it until its backoff ends
                continue
            # PENDING (queued or lost), SUCCESS without a result in storage, or a
            # STARTED/PROGRESS whose worker left no lease: nothing runs it now.
            reason = "lost"
        entry = {
            "upload_id": upload_id,
            "task_id": record.task_id,
            "state": record.state.value,
            "reason": reason,
        }
        if not dry_run:
            # Mark the hand-over, so the next reconciles wait for the re-sent task
            # (which writes its own lease when it starts) instead of re-sending it.
            write_lease(
                driver,
                paths.upload_verify_lease_path(upload_id),
                Lease(record.task_id, now, requeued=True),
            )
            size = record.size if record.size is not None else staging.size(upload_id)
            queue.enqueue_verify(
                upload_id,
                parse_digest(record.claimed_digest),
                record.expected_size,
                task_id=record.task_id,
                staged_size=size,
            )
        summary.requeued.append(entry)
    return summary


def failed_uploads(
    driver: StorageDriver,
    *,
    since: float | None = None,
    code: str | None = None,
    now: float | None = None,
) -> list[tuple[str, UploadRecord]]:
    """Failed uploads, optionally only those failed in the last ``since`` seconds
    and with error ``code`` -- the input of a bulk retry after an outage."""
    staging = Staging(driver)
    cutoff = None if since is None else (time.time() if now is None else now) - since
    out = []
    for upload_id in staging.list_ids():
        try:
            paths.validate_upload_id(upload_id)
            record = staging.state(upload_id)
        except BlobUploadUnknown:
            continue
        if record.state is not UploadState.FAILED:
            continue
        if cutoff is not None and record.updated_at < cutoff:
            continue
        if code is not None and (record.error or {}).get("code") != code:
            continue
        out.append((upload_id, record))
    return out
