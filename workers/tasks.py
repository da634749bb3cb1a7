"""Celery tasks: thin shells around the core, with every policy in their base classes.

A task body checks its arguments and calls one core function. How a task is
acknowledged, retried, time-limited and recorded when it fails is declared once,
on its base class:

* :class:`CheckedTask` (every task): refuses a message whose arguments do not fit
  (ArgumentInvalid), gives the body ``settings``, ``driver`` and ``task_queue`` (built
  by :mod:`ingest.backends` from the worker's settings), and sets each message's
  time limits in the worker (:class:`PolicyRequest`), whatever the sender asked.
* :class:`VerifyTask`: acknowledged late and redelivered if its worker dies;
  transient failures (:class:`~ingest.errors.StorageUnavailable`: I/O errors,
  ENOSPC, a storage hiccup) retry with exponential backoff and full jitter, at most
  ``INGEST_TASK_MAX_RETRIES`` times; verdicts on the content (every
  :class:`~ingest.errors.ClientError`) never retry. Its time limit scales with the
  staged size. When it finally fails, for any reason, the upload's state records
  the error before Celery publishes it, so ``Ingest.retry`` and ``status`` see it
  even after Redis forgets. Every verification's end (a commit, or a rejection with
  its code; in a batch, each upload's) is counted once per attempt for
  ``/metrics`` (:mod:`ingest.outcomes`).
* :class:`PrehashTask`: an optimisation: acknowledged on receipt, never retried.
* :class:`MaintenanceTask` / :class:`FsckTask`: housekeeping on its own queue.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from functools import cache
from typing import Any

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.worker.request import Request

from ingest import backends, logs, outcomes
from ingest.arguments import (
    BatchEntry,
    check_batch,
    check_flag,
    check_gc_grace,
    check_purge_age,
    check_size,
    check_upload_id,
    check_verify_arguments,
)
from ingest.commit import Progress, commit_upload, mark_failed
from ingest.config import Settings
from ingest.digests import Digest, VerifierLimits
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
from ingest.gc import collect_garbage
from ingest.locks import exclusive
from ingest.maintenance import purge_uploads, reconcile
from ingest.outcomes import Outcome, OutcomeCounter
from ingest.prehash import prehash_upload
from ingest.queue import (
    STATE_PROGRESS,
    TASK_FSCK,
    TASK_GC,
    TASK_PREHASH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_VERIFY,
    TASK_VERIFY_BATCH,
    TaskQueue,
)
from ingest.storage.base import StorageDriver
from ingest.uploads import Staging
from workers import events
from workers.app import app

log = logging.getLogger(__name__)

#: The driver of the settings it was built for: a test that swaps the worker's
#: settings gets a driver on the new root without clearing anything.
_built: dict[str, tuple[Settings, StorageDriver]] = {}


#: The outcome counters of the settings they were built for (as ``_built``).
_counters: dict[str, tuple[Settings, OutcomeCounter]] = {}
#: When counting outcomes last failed (monotonic): warn at most once a minute.
_count_failed = {"at": -float("inf")}


def outcome_counter(settings: Settings) -> OutcomeCounter:
    built = _counters.get("outcomes")
    if built is None or built[0] is not settings:
        built = _counters["outcomes"] = (settings, backends.outcome_counter(settings))
    return built[1]


def count_outcomes(settings: Settings, *found: Outcome | None) -> None:
    """Count verification outcomes, each attempt once (:mod:`ingest.outcomes`). A
    metric never fails a task: if Redis does not answer, the outcome goes uncounted."""
    if not any(o is not None for o in found):
        return
    try:
        outcome_counter(settings).record(*found)
    except Exception as exc:  # noqa: BLE001 - see above
        now = time.monotonic()
        if now - _count_failed["at"] >= 60:
            _count_failed["at"] = now
            log.warning("could not count verification outcomes: %r", exc)


def soft_limit(time_limit: int) -> int:
    """The soft limit leaves a task time to record its timeout cleanly."""
    return max(1, time_limit - min(10, max(1, time_limit // 10)))


@cache
def _signature(run: Any) -> inspect.Signature:
    return inspect.signature(run)


class PolicyRequest(Request):
    """A received message whose time limits its task's policy sets, in the worker.

    Celery takes a message's limits from its headers; whoever publishes could set
    any. Here the task class decides (:meth:`CheckedTask.time_limits`), from the
    message's arguments and the worker's own settings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        task = self.task
        if isinstance(task, CheckedTask):
            margs: Sequence[Any] = ()
            mkwargs: dict[str, Any] = {}
            # Decoding the body here (the consumer, not the pool) costs a JSON parse
            # per message: only for the tasks whose limits depend on it.
            if task.limits_from_arguments:
                try:
                    if isinstance(self.args, list | tuple):
                        margs = self.args
                    if isinstance(self.kwargs, dict):
                        mkwargs = self.kwargs
                except Exception:  # noqa: BLE001 - a body that does not decode: refused later
                    log.debug("limits of an undecodable message %s: the defaults", self.id)
            hard = task.time_limits(margs, mkwargs)
            self.time_limits = (hard, soft_limit(hard))


class CheckedTask(Task[Any, Any]):
    """Base of every task: argument checking, injected backends, time-limit policy.

    Refuses a message whose arguments do not fit the task (ArgumentInvalid, not a
    TypeError from inside Celery), and logs every refused message: whoever can publish
    to the broker can send anything (docs/operations.md, "The broker is a trust
    boundary"). Each task also checks its arguments' types and ranges at its entry.
    """

    Request = "workers.tasks:PolicyRequest"
    #: Whether :meth:`time_limits` reads the message's arguments.
    limits_from_arguments = False
    throws: tuple[type[Exception], ...] = (ArgumentInvalid,)

    @property
    def settings(self) -> Settings:
        s = self.app.conf.ingest_settings
        assert isinstance(s, Settings)
        return s

    @property
    def driver(self) -> StorageDriver:
        settings = self.settings
        built = _built.get("driver")
        if built is None or built[0] is not settings:
            built = _built["driver"] = (settings, backends.storage_driver(settings))
        return built[1]

    @property
    def task_queue(self) -> TaskQueue:
        # Not ``queue``: Celery reads a task's ``queue`` attribute as its routing.
        return backends.task_queue(self.settings, self.app)

    def time_limits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        """The hard time limit of one message (the soft one follows from it)."""
        return self.settings.max_time_limit()

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


class VerifyTask(CheckedTask):
    """Retry policy, size-scaled time limits and failure bookkeeping of a verification.

    The task's first argument is the upload id; its failures are recorded there.
    """

    autoretry_for = (StorageUnavailable,)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    throws = (ClientError, VerificationTimeout)
    acks_late = True
    reject_on_worker_lost = True
    limits_from_arguments = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return self.settings.task_max_retries

    def time_limits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        try:
            staged = check_size("staged_size", kwargs.get("staged_size"))
        except ArgumentInvalid:
            staged = None  # refused again, with the message named, when it runs
        return self.settings.time_limit(staged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (ArgumentInvalid, Retry):
            raise  # refused untouched, or retrying: nothing to record
        except SoftTimeLimitExceeded:
            timeout = VerificationTimeout(detail={"upload_id": str(args[0])})
            self._record(str(args[0]), timeout)
            raise timeout from None
        except Exception as exc:
            # Reaching here, a StorageUnavailable has used up its retries.
            self._record(str(args[0]), _final_error(exc))
            raise

    def _record(self, upload_id: str, error: IngestError) -> None:
        """Record the outcome in storage *before* Celery publishes the failure, so a
        client that sees FAILURE and retries at once finds the upload failed."""
        try:
            mark_failed(Staging(self.driver), upload_id, error, self.request.id)
        except Exception:
            log.exception("could not record failure of upload %s", upload_id)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        # Counted under the attempt that committed (the result's task id): a late
        # duplicate of another attempt that finds the upload committed returns that
        # same result, and must not count a second commit.
        committer = retval.get("task_id") if isinstance(retval, dict) else None
        count_outcomes(self.settings, outcomes.committed(str(committer or task_id)))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not args or isinstance(exc, ArgumentInvalid):
            return  # a refused message touches no storage, not even to record itself
        # Normally recorded already by __call__; this catches failures outside it.
        error = exc if isinstance(exc, IngestError) else _final_error(exc)
        try:
            mark_failed(Staging(self.driver), str(args[0]), error, task_id)
        except Exception:
            log.exception("could not record failure of upload %s", args[0])
        count_outcomes(self.settings, outcomes.rejected(task_id, error))

    def progress_reporter(self, upload_id: str, digest: Digest) -> Progress:
        """Reports a verification's progress to the result backend (read by
        ``status`` and the ingest API) and as a ``task-progress`` event (Flower)."""

        def progress(done: int, total: int) -> None:
            meta = {"upload_id": upload_id, "digest": str(digest), "done": done, "total": total}
            try:
                self.update_state(state=STATE_PROGRESS, meta=meta)
                if self.request.id and not self.request.is_eager:
                    self.send_event(
                        "task-progress",
                        upload_id=upload_id,
                        digest=str(digest),
                        done=done,
                        total=total,
                    )
            except Exception:
                log.debug("progress report failed", exc_info=True)

        return progress


def _final_error(exc: BaseException) -> IngestError:
    if isinstance(exc, IngestError):
        return exc
    return Unknown("verification failed unexpectedly", {"error": type(exc).__name__})


class VerifyBatchTask(CheckedTask):
    """Several small uploads' verifications in one task (:mod:`ingest.batching`).

    Each upload is verified and committed in turn, and its outcome is stored in the
    result backend under *its own* task id (the one its finish recorded and its
    waiter listens on) and, for a rejection, in its upload record: one bad digest
    never touches its neighbours. The batch itself is not retried: an upload that
    meets a transient fault is handed to a task of its own, under its own id, which
    has the full retry policy. Acknowledged late and redelivered if the worker
    dies; every step is idempotent.
    """

    acks_late = True
    reject_on_worker_lost = True
    max_retries = 0
    limits_from_arguments = True

    def time_limits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        entries = args[0] if args and isinstance(args[0], list) else []
        staged = [e.get("staged_size") if isinstance(e, dict) else None for e in entries]
        total = sum(
            self.settings.time_limit(s if isinstance(s, int) and s >= 0 else None) for s in staged
        )
        return min(max(total, 1), self.settings.max_time_limit())

    def verify(self, entry: BatchEntry, counted: list[Outcome | None]) -> dict[str, Any]:
        """Verify and commit one upload; its outcome in a line of the batch's result,
        and in ``counted`` for the outcome counters."""
        settings = self.settings
        outcome: dict[str, Any] = {"upload_id": entry.upload_id, "task_id": entry.task_id}
        try:
            result = commit_upload(
                self.driver,
                entry.upload_id,
                entry.digest,
                entry.size,
                task_id=entry.task_id,
                chunk_size=settings.verify_chunk,
                limits=VerifierLimits(settings.tarsum_max_bytes, settings.tarsum_max_ratio),
            )
        except StorageUnavailable as exc:
            log.warning("verification of %s hit %r; retrying it alone", entry.upload_id, exc)
            self.resend(entry)
            return {**outcome, "status": "retrying", "code": exc.code}
        except SoftTimeLimitExceeded:
            raise  # the batch's time is up: verify_batch hands the rest on
        except Exception as exc:  # noqa: BLE001 - a verdict, or a fault of this upload alone
            error = _final_error(exc)
            self._record(entry, error)
            counted.append(outcomes.rejected(entry.task_id, error))
            return {**outcome, "status": "failed", "code": error.code}
        events.committed(self.settings, self.driver, self.app, result, entry.task_id)
        self.store_outcome(entry.task_id, result, "SUCCESS")
        counted.append(outcomes.committed(str(result.get("task_id") or entry.task_id)))
        return {**outcome, "status": "committed", "digest": result.get("digest")}

    def _record(self, entry: BatchEntry, error: IngestError) -> None:
        try:
            mark_failed(Staging(self.driver), entry.upload_id, error, entry.task_id)
        except Exception:
            log.exception("could not record failure of upload %s", entry.upload_id)
        self.store_outcome(entry.task_id, error, "FAILURE")

    def store_outcome(self, task_id: str, value: Any, state: str) -> None:
        """Publish one upload's outcome where its waiter listens (its task id)."""
        try:
            if state == "FAILURE":
                self.backend.mark_as_failure(task_id, value)
            else:
                self.backend.store_result(task_id, value, state)
        except Exception:  # the record in storage stands; reconcile finds the rest
            log.exception("could not publish the outcome of task %s", task_id)

    def resend(self, entry: BatchEntry) -> None:
        """Hand one upload to a verification task of its own, under its own id."""
        verify_upload.apply_async(
            args=(entry.upload_id, str(entry.digest), entry.size),
            kwargs={"staged_size": entry.staged_size, "repository": entry.repository},
            task_id=entry.task_id,
            countdown=1,
        )


class PrehashTask(CheckedTask):
    """Acknowledged on receipt and never retried: a prehash is an optimisation, and a
    lost one only means the verification reads the bytes itself (see ingest.prehash)."""

    acks_late = False
    max_retries = 0
    #: Seconds before its time limit at which a prehash stops by itself, cleanly.
    MARGIN = 30.0

    def max_duration(self) -> float:
        return max(1.0, self.settings.max_time_limit() - self.MARGIN)


class MaintenanceTask(CheckedTask):
    """Housekeeping (reconcile, purge): acknowledged late, not retried (the next
    scheduled run is the retry), bounded by the worker's longest time limit."""

    acks_late = True
    max_retries = 0


class FsckTask(CheckedTask):
    """A bounded share of the blob check: acknowledged on receipt (a lost share is
    only a delayed one: the cursor is in storage), never retried."""

    acks_late = False
    max_retries = 0

    def time_limits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        return self.settings.fsck_time_limit()


@app.task(bind=True, base=VerifyTask, name=TASK_VERIFY)
def verify_upload(
    self: VerifyTask,
    upload_id: str,
    digest: str,
    size: int | None = None,
    repository: str | None = None,
    *,
    staged_size: int | None = None,
) -> dict[str, Any]:
    """Verify staged upload ``upload_id`` against ``digest`` and commit it.

    ``repository`` and ``staged_size`` are informational (logs, the time limit): the
    upload's own record is authoritative.
    """
    # Before any storage access; the digest is parsed here, once.
    claimed = check_verify_arguments(upload_id, digest, size, repository, staged_size)
    settings = self.settings
    result = commit_upload(
        self.driver,
        upload_id,
        claimed,
        size,
        progress=self.progress_reporter(upload_id, claimed),
        task_id=self.request.id,
        chunk_size=settings.verify_chunk,
        limits=VerifierLimits(settings.tarsum_max_bytes, settings.tarsum_max_ratio),
    )
    # Before the result is published: a client that sees the commit and pushes the
    # manifest next gets its event stored after this one (workers.events).
    events.committed(settings, self.driver, self.app, result, self.request.id)
    return result


@app.task(bind=True, base=VerifyBatchTask, name=TASK_VERIFY_BATCH)
def verify_batch(self: VerifyBatchTask, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Verify and commit several small uploads, each with its own outcome."""
    checked = check_batch(entries)  # before any storage access
    lines: list[dict[str, Any]] = []
    # Counted together at the end: one round trip to the counters per batch.
    counted: list[Outcome | None] = []
    try:
        for i, entry in enumerate(checked):
            with logs.bind(upload_id=entry.upload_id, task_id=entry.task_id):
                try:
                    lines.append(self.verify(entry, counted))
                except SoftTimeLimitExceeded:
                    timeout = VerificationTimeout(detail={"upload_id": entry.upload_id})
                    self._record(entry, timeout)
                    counted.append(outcomes.rejected(entry.task_id, timeout))
                    lines.append({"upload_id": entry.upload_id, "status": "failed"})
                    for rest in checked[i + 1 :]:
                        self.resend(rest)
                        lines.append({"upload_id": rest.upload_id, "status": "retrying"})
                    break
    finally:
        count_outcomes(self.settings, *counted)
    committed = sum(o["status"] == "committed" for o in lines)
    log.info("batch of %d: %d committed", len(checked), committed)
    return {"uploads": len(checked), "committed": committed, "outcomes": lines}


@app.task(bind=True, base=PrehashTask, name=TASK_PREHASH)
def prehash(self: PrehashTask, upload_id: str) -> dict[str, Any]:
    """Hash upload ``upload_id``'s staged bytes while they arrive."""
    check_upload_id(upload_id)
    settings = self.settings
    try:
        return prehash_upload(
            self.driver,
            upload_id,
            task_id=self.request.id,
            idle_timeout=settings.prehash_idle,
            max_duration=self.max_duration(),
            chunk_size=settings.verify_chunk,
        )
    except SoftTimeLimitExceeded:
        return {"upload_id": upload_id, "status": "abandoned", "reason": "time limit"}


@app.task(bind=True, base=MaintenanceTask, name=TASK_RECONCILE)
def reconcile_uploads(self: MaintenanceTask, grace: float | None = None) -> dict[str, Any]:
    """Re-enqueue verifications whose task was lost (e.g. with Redis); ``reconcile``
    refuses a grace below its floor."""
    settings = self.settings
    summary = reconcile(
        self.driver,
        self.task_queue,
        settings,
        grace=settings.reconcile_grace if grace is None else grace,
    )
    if summary.requeued:
        log.warning("reconcile re-enqueued %d verification(s)", len(summary.requeued))
    return summary.to_dict()


@app.task(bind=True, base=MaintenanceTask, name=TASK_PURGE)
def purge_abandoned_uploads(
    self: MaintenanceTask, older_than: float | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Remove abandoned uploads; one runner at a time across the cluster."""
    settings = self.settings
    # Checked before the lock (purge_uploads checks again): below the floor, nothing runs.
    age = check_purge_age(settings.purge_age if older_than is None else older_than)
    check_flag("dry_run", dry_run)
    with exclusive(
        settings.redis_url,
        "purge",
        ttl=max(600.0, settings.purge_interval),
        tls=settings.redis_ssl_options(),
    ):
        summary = purge_uploads(self.driver, older_than=age, dry_run=dry_run)
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


@app.task(bind=True, base=FsckTask, name=TASK_FSCK)
def fsck_share(
    self: FsckTask,
    repair: bool | None = None,
    budget: int | None = None,
    budget_blobs: int | None = None,
) -> dict[str, Any]:
    """Re-hash the next bounded share of the stored blobs (see :mod:`ingest.fsck`)."""
    settings = self.settings
    repair, budget, budget_blobs = _fsck_args(settings, repair, budget, budget_blobs)
    try:
        with exclusive(
            settings.redis_url, "fsck", ttl=FSCK_LOCK_TTL, tls=settings.redis_ssl_options()
        ) as renew:
            share = run_share(
                self.driver,
                budget_bytes=budget,
                budget_blobs=budget_blobs,
                repair=repair,
                limits=VerifierLimits(settings.tarsum_max_bytes, settings.tarsum_max_ratio),
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


#: Seconds the gc lock lives without renewal; a run renews it every GC_LOCK_TTL / 5.
GC_LOCK_TTL = 300.0


@app.task(bind=True, base=MaintenanceTask, name=TASK_GC)
def collect_garbage_task(
    self: MaintenanceTask,
    grace: float | None = None,
    dry_run: bool = False,
    delete_untagged: bool = False,
) -> dict[str, Any]:
    """Mark and sweep unreferenced blobs while pushes go on (see :mod:`ingest.gc`);
    one run at a time across the cluster. Interrupted at any point, it leaves nothing
    broken, and the next run finishes the job."""
    settings = self.settings
    grace = check_gc_grace(settings.gc_grace if grace is None else grace)
    dry_run = check_flag("dry_run", dry_run)
    delete_untagged = check_flag("delete_untagged", delete_untagged)
    try:
        with exclusive(
            settings.redis_url, "gc", ttl=GC_LOCK_TTL, tls=settings.redis_ssl_options()
        ) as renew:
            report = collect_garbage(
                self.driver,
                grace=grace,
                dry_run=dry_run,
                delete_untagged=delete_untagged,
                heartbeat=throttled(renew, GC_LOCK_TTL / 5),
            )
    except TooManyRequests as exc:
        log.info("gc skipped: %s", exc.message)
        return {"status": "skipped", "reason": exc.message}
    except SoftTimeLimitExceeded:
        log.error("gc stopped by its time limit; the next run finishes the job")
        return {"status": "interrupted"}
    log.info(
        "gc: %s",
        "; ".join(report.summary_lines()),
        extra={"gc": {k: v for k, v in report.to_dict().items() if k != "freed"}},
    )
    return {"status": "done", **report.to_dict()}
