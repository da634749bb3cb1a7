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
import inspect
import logging
from functools import cache
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from ingest.arguments import check_flag, check_purge_age, check_upload_id, check_verify_arguments
from ingest.commit import commit_upload, mark_failed
from ingest.config import Settings
from ingest.errors import (
    ArgumentInvalid,
    ClientError,
    IngestError,
    StorageUnavailable,
    TooManyRequests,
    Unknown,
    VerificationTimeout,
)
from ingest.fsck import Finding, run_share, throttled
from ingest.locks import exclusive
from ingest.maintenance import purge_uploads, reconcile
from ingest.prehash import prehash_upload
from ingest.queue import (
    STATE_PROGRESS,
    TASK_FSCK,
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
def _driver() -> FilesystemDriver:
    return FilesystemDriver.from_settings(_settings())


def _settings() -> Settings:
    s = app.conf.ingest_settings
    assert isinstance(s, Settings)
    return s


@cache
def _signature(run: Any) -> inspect.Signature:
    return inspect.signature(run)


class CheckedTask(Task[Any, Any]):
    """Refuses a message whose arguments do not fit the task (ArgumentInvalid, not a
    TypeError from inside Celery), and logs every refused message: whoever can publish
    to the broker can send anything (docs/operations.md, "The broker is a trust
    boundary"). Each task also checks its arguments' types and ranges at its entry."""

    throws: tuple[type[Exception], ...] = (ArgumentInvalid,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                _signature(self.run).bind(*args, **kwargs)
            except TypeError as exc:
                raise ArgumentInvalid(
                    "arguments do not match the task's signature",
                    {"argument": "*", "reason": "signature", "error": str(exc)[:200]},
                ) from None
            return super().__call__(*args, **kwargs)
        except ArgumentInvalid as exc:
            log.warning("refused %s[%s]: %r", self.name, self.request.id, exc)
            raise


class IngestTask(CheckedTask):
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
        if not args or isinstance(exc, ArgumentInvalid):
            return  # a refused message touches no storage, not even to record itself
        error = (
            exc
            if isinstance(exc, IngestError)
            else Unknown("verification failed unexpectedly", {"error": type(exc).__name__})
        )
        try:
            # Normally already recorded by the task body; this catches the rest.
            mark_failed(Staging(_driver()), str(args[0]), error, task_id)
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
    check_verify_arguments(upload_id, digest, size, repository)  # before any storage access
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

    driver = _driver()
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
@app.task(bind=True, base=CheckedTask, name=TASK_PREHASH, acks_late=False, max_retries=0)
def prehash(self: Task[Any, Any], upload_id: str) -> dict[str, Any]:
    """Hash upload ``upload_id``'s staged bytes while they arrive."""
    check_upload_id(upload_id)
    settings = _settings()
    # Stop before the soft time limit, cleanly, rather than be killed by it.
    limit = settings.max_time_limit()
    try:
        return prehash_upload(
            _driver(),
            upload_id,
            task_id=self.request.id,
            idle_timeout=settings.prehash_idle,
            max_duration=max(1.0, limit - 30.0),
            chunk_size=settings.verify_chunk,
        )
    except SoftTimeLimitExceeded:
        return {"upload_id": upload_id, "status": "abandoned", "reason": "time limit"}


@app.task(base=CheckedTask, name=TASK_RECONCILE, acks_late=True)
def reconcile_uploads(grace: float | None = None) -> dict[str, Any]:
    """Re-enqueue verifications whose task was lost (e.g. with Redis); ``reconcile``
    refuses a grace below its floor."""
    settings = _settings()
    summary = reconcile(
        _driver(),
        CeleryTaskQueue(app),
        settings,
        grace=settings.reconcile_grace if grace is None else grace,
    )
    if summary.requeued:
        log.warning("reconcile re-enqueued %d verification(s)", len(summary.requeued))
    return summary.to_dict()


@app.task(base=CheckedTask, name=TASK_PURGE, acks_late=True)
def purge_abandoned_uploads(
    older_than: float | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Remove abandoned uploads; one runner at a time across the cluster."""
    settings = _settings()
    # Checked before the lock (purge_uploads checks again): below the floor, nothing runs.
    age = check_purge_age(settings.purge_age if older_than is None else older_than)
    check_flag("dry_run", dry_run)
    with exclusive(
        settings.redis_url,
        "purge",
        ttl=max(600.0, settings.purge_interval),
        tls=settings.redis_ssl_options(),
    ):
        summary = purge_uploads(_driver(), older_than=age, dry_run=dry_run)
    log.info("purge removed %d upload(s), %d bytes", len(summary.removed), summary.bytes_freed)
    return summary.to_dict()


#: Seconds the fsck lock lives without renewal; a share renews it every FSCK_LOCK_TTL / 5.
FSCK_LOCK_TTL = 300.0
#: Most blobs one share may plan (they are listed in memory before hashing).
FSCK_MAX_BLOBS = 1_000_000


def _fsck_args(
    settings: Settings, repair: object, budget: object, budget_blobs: object
) -> tuple[bool, int, int]:
    """The share's arguments from the broker: JSON types and ranges, else ArgumentInvalid."""
    flag = settings.fsck_repair if repair is None else check_flag("repair", repair)
    # The hard time limit covers the larger of these (Settings.fsck_time_limit).
    max_budget = max(settings.fsck_budget, settings.max_blob_size)
    checked = []
    for name, value, default, top in (
        ("budget", budget, settings.fsck_budget, max_budget),
        ("budget_blobs", budget_blobs, settings.fsck_budget_blobs, FSCK_MAX_BLOBS),
    ):
        if value is None:
            checked.append(default)
            continue
        shown = repr(value)[:80]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentInvalid(
                f"{name} must be an integer or null",
                {"argument": name, "reason": "type", "value": shown},
            )
        if not 1 <= value <= top:
            raise ArgumentInvalid(
                f"{name} must be between 1 and {top}",
                {"argument": name, "reason": "range", "value": shown, "maximum": top},
            )
        checked.append(value)
    return flag, checked[0], checked[1]


def _log_finding(finding: Finding) -> None:
    log.error(
        "fsck: %s at %s: expected %s, computed %s (%s)",
        finding.kind,
        finding.path,
        finding.expected,
        finding.computed,
        finding.action,
        extra={"fsck": finding.to_dict()},
    )


# Acked on receipt: a lost share is only a delayed one (the cursor is in storage).
@app.task(
    name=TASK_FSCK,
    acks_late=False,
    max_retries=0,
    time_limit=_settings().fsck_time_limit(),
    soft_time_limit=_settings().fsck_time_limit() - 30,
)
def fsck_share(
    repair: bool | None = None, budget: int | None = None, budget_blobs: int | None = None
) -> dict[str, Any]:
    """Re-hash the next bounded share of the stored blobs (see :mod:`ingest.fsck`)."""
    settings = _settings()
    repair, budget, budget_blobs = _fsck_args(settings, repair, budget, budget_blobs)
    try:
        with exclusive(
            settings.redis_url, "fsck", ttl=FSCK_LOCK_TTL, tls=settings.redis_ssl_options()
        ) as renew:
            share = run_share(
                _driver(),
                budget_bytes=budget,
                budget_blobs=budget_blobs,
                repair=repair,
                limits=settings.verifier_limits(),
                chunk_size=settings.verify_chunk,
                heartbeat=throttled(renew, FSCK_LOCK_TTL / 5),
                on_finding=_log_finding,
            )
    except TooManyRequests as exc:
        log.info("fsck share skipped: %s", exc.message)
        return {"status": "skipped", "reason": exc.message}
    except SoftTimeLimitExceeded:
        log.error("fsck share stopped by its time limit; the next share resumes")
        return {"status": "interrupted"}
    if share.skipped_in_progress is not None:
        log.warning(
            "fsck: the last share died while hashing %s; skipped it in this pass "
            "(check it with `ingest fsck`)",
            share.skipped_in_progress["blob"],
            extra={"fsck_skipped": share.skipped_in_progress},
        )
    report = share.report
    log.info(
        "fsck share: %d blob(s), %d bytes, %d link(s), %d alias(es), %d problem(s)%s",
        report.blobs_checked,
        report.bytes_hashed,
        report.links_checked,
        report.aliases_checked,
        len(report.findings),
        "; pass complete" if share.pass_completed else "",
    )
    return {
        "status": "done",
        **report.to_dict(),
        "pass_completed": share.pass_completed,
        "state": share.state.to_dict(),
    }
