"""The Python API: stage bytes, finish with a digest, wait for the verified commit.

::

    ing = Ingest.from_env()
    up = ing.start_upload("library/ubuntu")
    up.write(chunk)
    ticket = up.finish("sha256:…")
    result = ticket.wait(timeout=30)          # dict, or raises the recorded IngestError
    with ing.open("library/ubuntu", "sha256:…") as blob: ...

The facade wires a storage driver and a :class:`~ingest.queue.TaskQueue`
together; it holds no per-upload state, so any number of processes can serve
the same uploads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ingest import backends, catalog, health, maintenance, notify, paths
from ingest.attempts import Liveness, liveness
from ingest.blobs import BlobInfo, BlobReader, BlobStore
from ingest.config import Settings
from ingest.digests import Digest, VerifierLimits, check_supported, parse_digest
from ingest.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    IngestError,
    SizeInvalid,
    StorageUnavailable,
)
from ingest.fsck import FsckReport, Heartbeat, run_fsck
from ingest.gc import GcReport, collect_garbage, retain_blob
from ingest.manifests import Manifest, ManifestStore, is_digest_reference
from ingest.names import validate_name
from ingest.notify import Notifier, Origin
from ingest.queue import TaskQueue
from ingest.storage.base import PathNotFound, StorageDriver
from ingest.uploads import Staging, UploadInfo, UploadRecord, UploadState, UploadWriter

__all__ = ["BulkRetry", "Ingest", "Ticket", "Upload", "UploadStatus", "as_digest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A handle on one verification attempt. ``committed`` is set when the upload
    was already committed when the ticket was issued (nothing to wait for)."""

    upload_id: str
    task_id: str
    _queue: TaskQueue
    committed: dict[str, Any] | None = None

    def wait(self, timeout: float = 30.0) -> dict[str, Any]:
        """The committed result dict; raises the recorded IngestError (e.g. DigestInvalid),
        or VerificationTimeout when ``timeout`` seconds pass first."""
        if self.committed is not None:
            return self.committed
        return self._queue.wait(self.task_id, timeout)

    async def wait_async(self, timeout: float = 30.0) -> dict[str, Any]:
        """:meth:`wait` for an event loop (no thread held while waiting)."""
        if self.committed is not None:
            return self.committed
        return await self._queue.wait_async(self.task_id, timeout)


@dataclass(frozen=True, slots=True)
class UploadStatus:
    """Everything known about an upload: staged size, lifecycle, live progress, outcome."""

    upload_id: str
    repository: str
    started_at: float
    last_activity: float
    state: str
    offset: int
    claimed_digest: str | None
    task_id: str | None
    attempt: int
    task_state: str | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class BulkRetry:
    """What :meth:`Ingest.retry_failed` did: ``queued`` (``upload_id``, ``task_id``)
    and ``errors`` (``upload_id``, ``error``: the error's dict), per upload."""

    queued: list[dict[str, str]]
    errors: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "errors": self.errors}


def as_digest(digest: Digest | str) -> Digest:
    """``digest`` parsed if it is text (the Python API's edge), and checked to be a
    kind this build verifies."""
    return check_supported(digest if isinstance(digest, Digest) else parse_digest(digest))


class Upload(UploadWriter):
    """An open upload session (the seed design's LayerUpload)."""

    def __init__(self, ingest: Ingest, info: UploadInfo, *, immediate: bool = False) -> None:
        super().__init__(
            ingest.staging,
            info,
            max_size=ingest.settings.max_blob_size,
            sync_on_close=ingest.settings.staging_fsync,
        )
        self._ingest = ingest
        self._immediate = immediate

    def _grew(self, before: int, after: int) -> None:
        # Writes are sequential, so exactly one write crosses the threshold.
        threshold = self._ingest.settings.prehash_min_size
        if threshold and before < threshold <= after:
            self._ingest._start_prehash(self.id)

    def finish(
        self, digest: Digest | str, size: int | None = None, *, origin: Origin | None = None
    ) -> Ticket:
        """Freeze the upload and enqueue its verification; returns at once.

        Malformed or unsupported digests and a wrong ``size`` are rejected here,
        before any work is queued. The handle is closed afterwards. ``origin``: the
        request finishing it, named in the blob's push event.
        """
        self._check_open_handle()
        claimed = as_digest(digest)
        # A handle used for one request may trust the record it read when it opened.
        known = self.known_record if self._immediate else None
        self.close()
        return self._ingest._finish(self.info, claimed, size, known=known, origin=origin)

    def cancel(self) -> None:
        """Discard the upload and its staged bytes."""
        self._check_open_handle()
        self.close()
        self._ingest.staging.cancel(self.id)


class Ingest:
    """Entry point of the library."""

    def __init__(
        self,
        driver: StorageDriver,
        queue: TaskQueue,
        settings: Settings | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.driver = driver
        self.queue = queue
        self.settings = settings or Settings()
        self.verifier_limits = VerifierLimits(
            self.settings.tarsum_max_bytes, self.settings.tarsum_max_ratio
        )
        self.staging = Staging(driver)
        self.blobs = BlobStore(driver)
        #: Manifests are small and verified inline, on the request path.
        self.manifests = ManifestStore(driver, max_size=self.settings.max_manifest_size)
        #: Registry events (:mod:`ingest.notify`); without endpoints it does nothing.
        self.notifier = notifier if notifier is not None else Notifier(driver)

    @property
    def write_size(self) -> int:
        """Bytes per write for a frontend staging a stream (the driver's preference)."""
        return self.driver.write_size

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ingest:
        """The storage and task queue configured in the environment."""
        settings = Settings.from_env(os.environ if environ is None else environ)
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Ingest:
        """The storage driver, task queue and notifier ``settings`` name
        (:mod:`ingest.backends`)."""
        driver = backends.storage_driver(settings)
        queue = backends.task_queue(settings)
        return cls(driver, queue, settings, backends.notifier(settings, driver, queue))

    # -- uploads ----------------------------------------------------------------------

    def start_upload(self, repository: str) -> Upload:
        return Upload(self, self.staging.create(repository))

    def resume(self, repository: str, upload_id: str, *, immediate: bool = False) -> Upload:
        """Reopen an upload created by any process sharing the storage.

        ``immediate``: the handle is used at once and briefly (one request), so its
        first write may trust the state read here instead of reading it again. A
        long-lived handle must not: another process may finish the upload meanwhile.
        """
        info = self.staging.info(upload_id, repository)
        record = self.staging.state(upload_id)
        if record.state is not UploadState.OPEN:
            raise BlobUploadInvalid(
                f"upload is {record.state.value}",
                {"upload_id": upload_id, "state": record.state.value},
            )
        up = Upload(self, info, immediate=immediate)
        if immediate:
            up.known_record = record
        return up

    def finish(
        self,
        repository: str,
        upload_id: str,
        digest: Digest | str,
        size: int | None = None,
        *,
        origin: Origin | None = None,
    ) -> Ticket:
        """Finish an upload by id (as a frontend does per request): like
        ``Upload.finish``, and also allowed again after a failed verification."""
        claimed = as_digest(digest)
        info = self.staging.info(upload_id, repository)
        return self._finish(info, claimed, size, origin=origin)

    def offset(self, repository: str, upload_id: str) -> int:
        """Bytes staged so far in an upload of ``repository`` that is not committed
        (BlobUploadUnknown otherwise: a committed upload is no longer a session)."""
        self.staging.info(upload_id, repository)
        if self.staging.result(upload_id) is not None:
            raise BlobUploadUnknown("upload already committed", {"upload_id": upload_id})
        return self.staging.size(upload_id)

    def _finish(
        self,
        info: UploadInfo,
        claimed: Digest,
        size: int | None,
        *,
        known: UploadRecord | None = None,
        origin: Origin | None = None,
    ) -> Ticket:
        """``known``: the record the caller's handle just saw open, which saves
        re-reading it (an open upload has no result yet)."""
        upload_id = info.id
        if size is not None and size < 0:
            raise SizeInvalid("size must not be negative", {"size": size})
        if known is not None and known.state is UploadState.OPEN:
            return self._finish_open(info, known, claimed, size, origin)
        done = self.staging.result(upload_id)
        if done is not None:
            if done.get("digest") != str(claimed):
                raise BlobUploadInvalid(
                    "upload already committed with another digest",
                    {"upload_id": upload_id, "digest": done.get("digest")},
                )
            return Ticket(upload_id, str(done.get("task_id") or ""), self.queue, done)
        record = self.staging.state(upload_id)
        if record.state in (UploadState.FINISHING, UploadState.VERIFIED) and not self._is_over(
            upload_id, record
        ):
            if record.claimed_digest == str(claimed) and record.task_id:
                return Ticket(upload_id, record.task_id, self.queue)  # finish is idempotent
            raise BlobUploadInvalid(
                "upload is already being verified",
                {"upload_id": upload_id, "state": record.state.value},
            )
        # Open, failed, or an attempt that is over without an outcome: a new attempt.
        return self._finish_open(info, record, claimed, size, origin)

    def _is_over(self, upload_id: str, record: UploadRecord) -> bool:
        """Whether the current attempt provably ended without recording an outcome:
        its worker's lease expired, or its task's final state never reached storage
        (see :mod:`ingest.attempts`)."""
        return liveness(self.driver, self.queue, upload_id, record, time.time()) in (
            Liveness.LEASE_EXPIRED,
            Liveness.ENDED,
        )

    def _finish_open(
        self,
        info: UploadInfo,
        record: UploadRecord,
        claimed: Digest,
        size: int | None,
        origin: Origin | None = None,
    ) -> Ticket:
        upload_id = info.id
        if size is not None and size != (staged := self.staging.size(upload_id)):
            # Refused while the upload is still open: the client may append the rest.
            raise SizeInvalid(
                f"upload has {staged} bytes, {size} were claimed",
                {"claimed": size, "computed": staged},
            )
        # Freeze first, record second: from here no byte can be added, and the size
        # recorded is the size the verification will hash and the commit will move.
        staged = self._freeze(upload_id, record)
        if size is not None and size != staged:
            # A write finished between the check above and the seal.
            error = SizeInvalid(
                f"upload has {staged} bytes, {size} were claimed",
                {"claimed": size, "computed": staged, "upload_id": upload_id},
            )
            self.staging.transition(
                upload_id, record, UploadState.FAILED, size=staged, error=error.to_dict()
            )
            raise error
        if staged > self.settings.max_blob_size:
            raise SizeInvalid(
                "blob exceeds the maximum size", {"limit": self.settings.max_blob_size}
            )
        return self._enqueue(info, record, claimed, size, staged, origin)

    def _freeze(self, upload_id: str, record: UploadRecord) -> int:
        """Seal the staged data; its size. Data an earlier attempt already moved into
        the blob store (it failed after the move, say on a full disk) was sealed
        then: its frozen size is on record."""
        try:
            return self.staging.seal(upload_id)
        except BlobUploadUnknown:
            if record.state is UploadState.OPEN or record.size is None:
                raise
            return record.size

    def _enqueue(
        self,
        info: UploadInfo,
        record: UploadRecord,
        claimed: Digest,
        size: int | None,
        staged: int,
        origin: Origin | None = None,
    ) -> Ticket:
        upload_id = info.id
        task_id = str(uuid.uuid4())
        # Record the attempt before sending, so a task can never run against a
        # state that does not know it; if sending fails, reopen the upload. Not
        # fsync'd: if a crash loses it, the upload is open again and the client's
        # retried PUT finishes it; the commit itself is what must be durable.
        new = self.staging.transition(
            upload_id,
            record,
            UploadState.FINISHING,
            durable=False,
            claimed_digest=str(claimed),
            expected_size=size,
            size=staged,
            task_id=task_id,
            attempt=record.attempt + 1,
            error=None,
            # A verification of this very claim stays valid: the bytes are sealed, and
            # an earlier attempt may have moved them into the blob store already.
            verified=record.verified if record.claimed_digest == str(claimed) else None,
            origin=origin.to_dict() if origin is not None and self.notifier.enabled else None,
        )
        try:
            self.queue.enqueue_verify(
                upload_id,
                claimed,
                size,
                task_id=task_id,
                staged_size=staged,
                repository=info.repository,
            )
        except StorageUnavailable as exc:
            # The data is sealed, so the upload cannot reopen: leave it failed with
            # the fault, where a repeated finish or a retry picks it up.
            if record.state is UploadState.FAILED:
                self.staging.write_state(upload_id, record)
            else:
                self.staging.transition(upload_id, new, UploadState.FAILED, error=exc.to_dict())
            raise
        return Ticket(upload_id, task_id, self.queue)

    def _start_prehash(self, upload_id: str) -> None:
        """Have a worker hash the upload while it arrives (an optimisation: the
        upload goes on, and is verified in full at finish, if this fails)."""
        try:
            self.queue.enqueue_prehash(upload_id)
        except StorageUnavailable as exc:  # an outage, not a bug: no traceback
            log.warning("could not enqueue the prehash of upload %s: %s", upload_id, exc)
        except Exception:  # never fail a client's write over it
            log.warning("could not enqueue the prehash of upload %s", upload_id, exc_info=True)

    def retry(self, upload_id: str, digest: Digest | str | None = None) -> Ticket:
        """Re-enqueue a failed verification as a new attempt (optionally with a
        corrected digest). Committed uploads are refused with BlobUploadInvalid,
        cancelled or unknown ones with BlobUploadUnknown."""
        info = self.staging.info(upload_id)
        if self.staging.result(upload_id) is not None:
            raise BlobUploadInvalid("upload is already committed", {"upload_id": upload_id})
        record = self.staging.state(upload_id)
        if record.state is not UploadState.FAILED and not (
            record.state in (UploadState.FINISHING, UploadState.VERIFIED)
            and self._is_over(upload_id, record)
        ):
            raise BlobUploadInvalid(
                "only failed or dead verifications can be retried; "
                f"this upload is {record.state.value}",
                {"upload_id": upload_id, "state": record.state.value},
            )
        claim = digest if digest is not None else record.claimed_digest
        if claim is None:
            raise BlobUploadInvalid("no digest to verify against", {"upload_id": upload_id})
        return self._enqueue(
            info,
            record,
            as_digest(claim),
            record.expected_size,
            self._freeze(upload_id, record),
        )

    def status(self, upload_id: str) -> UploadStatus:
        info = self.staging.info(upload_id)
        record = self.staging.state(upload_id)
        result = self.staging.result(upload_id)
        task_state = progress = None
        error = record.error
        if (
            result is None
            and record.task_id
            and record.state
            in (
                UploadState.FINISHING,
                UploadState.VERIFIED,
            )
        ):
            try:
                ti = self.queue.info(record.task_id)
            except Exception:  # noqa: BLE001 - status must not fail on a backend hiccup
                ti = None
            if ti is not None:
                task_state, progress = ti.state, ti.progress
                error = error or ti.error
        state = UploadState.COMMITTED.value if result is not None else record.state.value
        offset = result["size"] if result is not None else self.staging.size(upload_id)
        return UploadStatus(
            upload_id,
            info.repository,
            info.started_at,
            self.staging.last_activity(upload_id),
            state,
            offset,
            record.claimed_digest,
            record.task_id,
            record.attempt,
            task_state,
            progress,
            result,
            error,
        )

    def upload_repository(self, upload_id: str) -> str:
        """The repository an upload belongs to (BlobUploadUnknown if there is no such
        upload): what a frontend checks a caller's access against before it touches it."""
        return self.staging.info(upload_id).repository

    def cancel(self, upload_id: str, repository: str | None = None) -> None:
        """Discard the upload and its staged bytes; BlobUploadUnknown if it does not
        exist, or (with ``repository``) belongs to another repository."""
        if repository is not None:
            self.staging.info(upload_id, repository)
        self.staging.cancel(upload_id)

    # -- blobs ------------------------------------------------------------------------

    def open(
        self, repository: str, digest: Digest | str, *, origin: Origin | None = None
    ) -> BlobReader:
        """A seekable reader of a blob linked in ``repository`` (BlobUnknown otherwise).
        With ``origin`` (a client's GET) it is a pull: an event if pulls are notified."""
        reader = self.blobs.open(repository, digest)
        if origin is not None:
            info = reader.info
            self.notifier.blob_pulled(repository, info.digest, info.size, origin)
        return reader

    def stat(self, repository: str, digest: Digest | str) -> BlobInfo:
        return self.blobs.stat(repository, digest)

    def mount(
        self, repository: str, source: str, digest: Digest, *, origin: Origin | None = None
    ) -> bool:
        """Link a blob that ``source`` holds into ``repository`` without uploading it
        (cross-repository mount); False if ``source`` does not hold it."""
        validate_name(source)
        try:
            canonical = self.blobs.resolve(source, digest)
            info = self.blobs.stat(source, digest)
        except BlobUnknown:
            return False
        self.blobs.link(repository, canonical, canonical)
        if digest != canonical:
            self.blobs.link(repository, digest, canonical)
        # The links are this mount's reference: keep the blob from a garbage collection
        # deciding about it, or learn that it was just collected (ingest.gc).
        retain_blob(self.driver, canonical)
        if self.blobs.exists(canonical) is None:
            for d in {canonical, digest}:
                with contextlib.suppress(PathNotFound):
                    self.driver.delete(paths.layer_link_dir(repository, d))
            return False
        self.notifier.blob_mounted(repository, source, str(digest), info.size, origin)
        return True

    # -- manifests --------------------------------------------------------------------

    def put_manifest(
        self,
        repository: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        *,
        origin: Origin | None = None,
    ) -> Manifest:
        """Verify and store a manifest under a tag or digest (:meth:`ManifestStore.put`);
        a push event once it is stored."""
        m = self.manifests.put(repository, reference, body, content_type)
        self.notifier.manifest_pushed(repository, reference, m.digest, m.media_type, m.size, origin)
        return m

    def get_manifest(
        self, repository: str, reference: str, *, origin: Origin | None = None
    ) -> Manifest:
        """A manifest by tag or digest; with ``origin`` (a client's GET) it is a pull."""
        m = self.manifests.get(repository, reference)
        if origin is not None:
            self.notifier.manifest_pulled(
                repository, reference, m.digest, m.media_type, m.size, origin
            )
        return m

    def delete_manifest(
        self, repository: str, reference: str, *, origin: Origin | None = None
    ) -> None:
        """Delete a tag, or a manifest revision by digest with the tags naming it; a
        delete event."""
        digest: str | None = reference if is_digest_reference(reference) else None
        if digest is None and self.notifier.enabled:
            try:  # the revision the tag named, for the event
                digest = str(self.manifests.resolve(repository, reference))
            except IngestError:
                digest = None
        self.manifests.delete(repository, reference)
        self.notifier.manifest_deleted(repository, reference, digest, origin)

    def notification_stats(self) -> list[notify.EndpointStats]:
        """Each notification endpoint's delivery counters and waiting events (read from
        storage: what every worker delivered, not only this process)."""
        return notify.stats(self.driver, self.notifier.endpoints)

    # -- catalog ----------------------------------------------------------------------

    def repositories(self, n: int, last: str | None = None) -> list[str]:
        """Up to ``n`` repository names after ``last``, in lexical order: one page of
        the catalog (:mod:`ingest.catalog`)."""
        return catalog.repositories(self.driver, n, last)

    # -- housekeeping (the CLI's; workers run the same core functions on a schedule) --

    def failed_uploads(
        self, *, since: float | None = None, code: str | None = None
    ) -> list[tuple[str, UploadRecord]]:
        """Failed uploads, optionally only those failed in the last ``since`` seconds
        with error ``code``: the input of a bulk retry after an outage."""
        return maintenance.failed_uploads(self.driver, since=since, code=code)

    def retry_failed(
        self,
        *,
        since: float | None = None,
        code: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> BulkRetry:
        """Re-enqueue every failed upload (of those :meth:`failed_uploads` selects) in a
        repository ``allowed`` accepts (default: all). An upload that cannot be retried
        (committed or cancelled meanwhile) is reported in ``errors``; an unreachable
        broker stops the run with StorageUnavailable, whose ``detail.queued`` counts
        what was already re-enqueued (a second run picks up the rest)."""
        queued: list[dict[str, str]] = []
        errors: list[dict[str, Any]] = []
        for upload_id, _record in self.failed_uploads(since=since, code=code):
            try:
                if allowed is not None and not allowed(self.upload_repository(upload_id)):
                    continue
                queued.append({"upload_id": upload_id, "task_id": self.retry(upload_id).task_id})
            except StorageUnavailable as exc:
                raise StorageUnavailable(
                    exc.message, {**exc.detail, "queued": len(queued)}
                ) from exc
            except IngestError as exc:
                errors.append({"upload_id": upload_id, "error": exc.to_dict()})
        return BulkRetry(queued, errors)

    def purge(self, *, older_than: float, dry_run: bool = False) -> maintenance.PurgeSummary:
        """Remove uploads idle longer than ``older_than`` seconds (never finishing ones).
        The caller keeps other purges out (a cluster-wide lock)."""
        return maintenance.purge_uploads(self.driver, older_than=older_than, dry_run=dry_run)

    def reconcile(self, *, grace: float, dry_run: bool = False) -> maintenance.ReconcileSummary:
        """Re-send verifications whose task was lost, or whose worker died."""
        return maintenance.reconcile(
            self.driver, self.queue, self.settings, grace=grace, dry_run=dry_run
        )

    def fsck(self, *, repair: bool = False, heartbeat: Heartbeat | None = None) -> FsckReport:
        """Re-hash every stored blob and alias link against its address (see
        :mod:`ingest.fsck`); ``heartbeat`` is called while it runs."""
        return run_fsck(
            self.driver,
            repair=repair,
            limits=self.verifier_limits,
            chunk_size=self.settings.verify_chunk,
            heartbeat=heartbeat,
        )

    def gc(
        self,
        *,
        grace: float,
        dry_run: bool = False,
        delete_untagged: bool = False,
        heartbeat: Heartbeat | None = None,
    ) -> GcReport:
        """Free the blobs no manifest references that are older than ``grace`` seconds,
        while pushes go on (:mod:`ingest.gc`). The caller keeps other collections out
        (the cluster-wide ``gc`` lock)."""
        return collect_garbage(
            self.driver,
            grace=grace,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            heartbeat=heartbeat,
        )

    def health(
        self,
        *,
        broker_timeout: float = health.BROKER_TIMEOUT,
        worker_timeout: float = health.WORKER_TIMEOUT,
    ) -> health.HealthReport:
        """Whether a push could go through now: the broker answers, the storage takes a
        write and gives it back, a worker answers a ping (:mod:`ingest.health`). Blocks
        for at most the longer timeout plus a second."""
        return health.run_checks(
            self.driver, self.queue, broker_timeout=broker_timeout, worker_timeout=worker_timeout
        )

    def unlink(self, repository: str, digest: Digest, *, origin: Origin | None = None) -> None:
        """Remove ``digest``'s link from ``repository`` only; the blob stays for others
        (BlobUnknown if it was not linked there). A delete event."""
        self.blobs.unlink(repository, digest)
        self.notifier.blob_deleted(repository, str(digest), origin)
