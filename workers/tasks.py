"""Celery tasks: thin shells around :mod:`ingest.commit`.

All retry and time-limit policy lives in :class:`IngestTask`, not in task bodies:

* Transient failures (:class:`~ingest.errors.StorageUnavailable`: I/O errors,
  ENOSPC, a storage hiccup) retry automatically with exponential backoff and
  full jitter, at most ``INGEST_TASK_MAX_RETRIES`` times.
* Verdicts on the content (every :class:`~ingest.errors.ClientError`:
  DIGEST_INVALID, SIZE_INVALID, BLOB_UPLOAD_UNKNOWN...) never retry; they are
  listed in ``throws`` so the worker logs them as outcomes, without a traceback.
* When a task finally fails for any reason, the upload's state records the
  error, so ``Ingest.retry`` and ``status`` see it even after Redis forgets.
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from ingest.commit import commit_upload, mark_failed
from ingest.config import Settings
from ingest.errors import ClientError, IngestError, StorageUnavailable, Unknown, VerificationTimeout
from ingest.locks import exclusive
from ingest.maintenance import purge_uploads, reconcile
from ingest.prehash import prehash_upload
from ingest.queue import (
    STATE_PROGRESS,
    TASK_PREHASH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_VERIFY,
    CeleryTaskQueue,
)
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging
from workers.app import app

log = logging.getLogger(__name__)


@cache
def _driver(root: str) -> FilesystemDriver:
    return FilesystemDriver(root)


def _settings() -> Settings:
    s = app.conf.ingest_settings
    assert isinstance(s, Settings)
    return s


class IngestTask(Task[Any, Any]):
    """Base class carrying the retry policy and failure bookkeeping."""

    autoretry_for = (StorageUnavailable,)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    throws = (ClientError, VerificationTimeout)
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not args:
            return
        error = (
            exc
            if isinstance(exc, IngestError)
            else Unknown("verification failed unexpectedly", {"error": type(exc).__name__})
        )
        try:
            # Normally already recorded by the task body; this catches the rest.
            mark_failed(Staging(_driver(_settings().storage_root)), str(args[0]), error, task_id)
        except Exception:
            log.exception("could not record failure of upload %s", args[0])


@app.task(bind=True, base=IngestTask, name=TASK_VERIFY, max_retries=_settings().task_max_retries)
def verify_upload(
    self: IngestTask,
    upload_id: str,
    digest: str,
    size: int | None = None,
    repository: str | None = None,
) -> dict[str, Any]:
    """Verify staged upload ``upload_id`` against ``digest`` and commit it.

    ``repository`` is informational only: the upload's own record is authoritative.
    """
    settings = _settings()

    def progress(done: int, total: int) -> None:
        meta = {"upload_id": upload_id, "digest": digest, "done": done, "total": total}
        try:
            # Result backend: read by status() and the ingest API.
            self.update_state(state=STATE_PROGRESS, meta=meta)
            # Event stream: Flower shows the task in state PROGRESS with these fields.
            if self.request.id and not self.request.is_eager:
                self.send_event(
                    "task-progress", upload_id=upload_id, digest=digest, done=done, total=total
                )
        except Exception:
            log.debug("progress report failed", exc_info=True)

    driver = _driver(settings.storage_root)
    try:
        return commit_upload(
            driver,
            upload_id,
            digest,
            size,
            progress=progress,
            task_id=self.request.id,
            chunk_size=settings.verify_chunk,
            limits=settings.verifier_limits(),
        )
    except Exception as exc:
        # Record the outcome in storage *before* Celery publishes the failure, so a
        # client that sees FAILURE and retries at once finds the upload failed.
        final = _final_error(self, exc, upload_id)
        if final is not None:
            with contextlib.suppress(Exception):
                mark_failed(Staging(driver), upload_id, final, self.request.id)
        if isinstance(exc, SoftTimeLimitExceeded):
            raise VerificationTimeout(detail={"upload_id": upload_id}) from None
        raise


def _final_error(task: IngestTask, exc: Exception, upload_id: str) -> IngestError | None:
    """The error to record if ``exc`` ends this verification (None if it will retry)."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return VerificationTimeout(detail={"upload_id": upload_id})
    if isinstance(exc, StorageUnavailable):
        return exc if task.request.retries >= (task.max_retries or 0) else None
    if isinstance(exc, IngestError):
        return exc
    return Unknown("verification failed unexpectedly", {"error": type(exc).__name__})


# Acked on receipt and never retried: a prehash is an optimisation, and a lost one
# only means the verification reads the bytes itself (see ingest.prehash).
@app.task(bind=True, name=TASK_PREHASH, acks_late=False, max_retries=0)
def prehash(self: Task[Any, Any], upload_id: str) -> dict[str, Any]:
    """Hash upload ``upload_id``'s staged bytes while they arrive."""
    settings = _settings()
    # Stop before the soft time limit, cleanly, rather than be killed by it.
    limit = settings.max_time_limit()
    try:
        return prehash_upload(
            _driver(settings.storage_root),
            upload_id,
            task_id=self.request.id,
            idle_timeout=settings.prehash_idle,
            max_duration=max(1.0, limit - 30.0),
            chunk_size=settings.verify_chunk,
        )
    except SoftTimeLimitExceeded:
        return {"upload_id": upload_id, "status": "abandoned", "reason": "time limit"}


@app.task(name=TASK_RECONCILE, acks_late=True)
def reconcile_uploads(grace: float | None = None) -> dict[str, Any]:
    """Re-enqueue verifications whose task was lost (e.g. with Redis)."""
    settings = _settings()
    summary = reconcile(
        _driver(settings.storage_root),
        CeleryTaskQueue(app),
        settings,
        grace=settings.reconcile_grace if grace is None else grace,
    )
    if summary.requeued:
        log.warning("reconcile re-enqueued %d verification(s)", len(summary.requeued))
    return summary.to_dict()


@app.task(name=TASK_PURGE, acks_late=True)
def purge_abandoned_uploads(
    older_than: float | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Remove abandoned uploads; one runner at a time across the cluster."""
    settings = _settings()
    age = settings.purge_age if older_than is None else older_than
    with exclusive(settings.redis_url, "purge", ttl=max(600.0, settings.purge_interval)):
        summary = purge_uploads(_driver(settings.storage_root), older_than=age, dry_run=dry_run)
    log.info("purge removed %d upload(s), %d bytes", len(summary.removed), summary.bytes_freed)
    return summary.to_dict()
