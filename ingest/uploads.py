"""The staging area: upload sessions that live in storage.

An upload is a directory under ``/uploads/<uuid>/`` (see :mod:`ingest.paths`).
Everything about it -- repository, start time, staged bytes, lifecycle state,
committed result -- is in storage, so any process or host sharing the storage
can resume it, and losing Redis loses no upload.

Lifecycle (``state.json``)::

    open ──finish──▶ finishing ──verify ok──▶ verified ──move+link──▶ committed
      ▲                 │                                            (result.json)
      └──── (re-)finish ┴──verify failed──▶ failed ──retry──▶ finishing

``cancel`` removes the directory; afterwards the id is BLOB_UPLOAD_UNKNOWN.
``result.json`` is written once, after the links, and is authoritative: an
upload with a result is committed whatever ``state.json`` says.

**Freezing.** ``finish`` seals the staged data (:meth:`Staging.seal`, the storage
driver's ``seal``) *before* it records ``finishing``, and the verification seals it
again before it reads a byte. Writes check the seal under the driver's lock, not
the state file, so a request that is still streaming when ``finish`` runs -- or a
handle opened long before -- cannot add a byte after the freeze, wherever the bytes
are moved later. Sealed data never takes writes again, so an upload never goes
back to ``open``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, BinaryIO

from ingest import paths
from ingest.digests import Digest, parse_digest
from ingest.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    RangeInvalid,
    TooLarge,
    UploadClosed,
)
from ingest.names import validate_name
from ingest.storage.base import (
    FileWriter,
    InvalidOffset,
    ObjectSealed,
    PathNotFound,
    StorageDriver,
)

__all__ = [
    "Staging",
    "UploadInfo",
    "UploadRecord",
    "UploadState",
    "UploadWriter",
    "Verification",
]

#: Size of the slices ``read_from`` copies; large enough that per-call overhead vanishes.
COPY_CHUNK = 1 << 20


class UploadState(StrEnum):
    OPEN = "open"
    FINISHING = "finishing"
    VERIFIED = "verified"
    FAILED = "failed"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """The immutable facts of a session."""

    id: str
    repository: str
    started_at: float


@dataclass(frozen=True, slots=True)
class Verification:
    """What one pass over the staged bytes established.

    ``computed`` is the digest of the claimed kind (same algorithm or TarSum label)
    as computed from the bytes; it equals the claim only if the bytes match it.
    ``canonical`` is their sha256, the blob's content address.
    """

    canonical: Digest
    computed: Digest
    size: int

    def to_dict(self) -> dict[str, Any]:
        # On disk the computed digest is stored as "claimed": only a verification
        # that matched its claim is ever recorded.
        return {"canonical": str(self.canonical), "claimed": str(self.computed), "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verification:
        return cls(parse_digest(d["canonical"]), parse_digest(d["claimed"]), int(d["size"]))


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """The mutable lifecycle record (``state.json``)."""

    state: UploadState
    updated_at: float
    claimed_digest: str | None = None
    expected_size: int | None = None
    size: int | None = None  # staged size when finish() froze it
    task_id: str | None = None
    attempt: int = 0
    error: dict[str, Any] | None = None
    verified: Verification | None = None  # once the bytes matched the claim
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The finishing request (``ingest.notify.Origin.to_dict``), kept only when
    #: notifications are on: the worker's push event names who pushed.
    origin: dict[str, str] | None = None

    def to_json(self) -> bytes:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["state"] = self.state.value
        d["verified"] = None if self.verified is None else self.verified.to_dict()
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UploadRecord:
        d = json.loads(raw)
        d["state"] = UploadState(d["state"])
        if d.get("verified") is not None:
            d["verified"] = Verification.from_dict(d["verified"])
        return cls(**d)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


class Staging:
    """Upload sessions on a storage driver. Stateless: safe to share and to recreate."""

    def __init__(self, driver: StorageDriver, *, clock: Callable[[], float] = time.time) -> None:
        self.driver = driver
        self._clock = clock

    # -- sessions -------------------------------------------------------------------

    def create(self, repository: str) -> UploadInfo:
        """A new, empty, open session. Creation is not fsync'd: a session lost to a
        machine crash is simply unknown afterwards and the client starts again, as
        with any registry; what must survive is a *commit*, and that is fsync'd."""
        validate_name(repository)
        info = UploadInfo(str(uuid.uuid4()), repository, self._clock())
        uid = info.id
        self.driver.put_content(paths.upload_info_path(uid), _json(asdict(info)), durable=False)
        self.driver.writer(paths.upload_data_path(uid)).close()
        # No state.json yet: a session without one is open (see state()).
        return info

    def info(self, upload_id: str, repository: str | None = None) -> UploadInfo:
        """The session's facts; BlobUploadUnknown if it does not exist, or belongs to
        another repository than ``repository`` (when given)."""
        try:
            raw = self.driver.get_content(paths.upload_info_path(upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(detail={"upload_id": upload_id}) from None
        try:
            info = UploadInfo(**json.loads(raw))
        except (ValueError, TypeError):
            # A torn or foreign record (crash mid-create): not a usable session.
            raise BlobUploadUnknown("upload record unreadable", {"upload_id": upload_id}) from None
        if repository is not None and info.repository != repository:
            raise BlobUploadUnknown(detail={"upload_id": upload_id})
        return info

    def state(self, upload_id: str) -> UploadRecord:
        try:
            return UploadRecord.from_json(
                self.driver.get_content(paths.upload_state_path(upload_id))
            )
        except PathNotFound:
            pass
        # Sessions start without a state file: then they are open.
        info = self.info(upload_id)
        return UploadRecord(UploadState.OPEN, info.started_at)

    def write_state(self, upload_id: str, record: UploadRecord, *, durable: bool = True) -> None:
        self.driver.put_content(
            paths.upload_state_path(upload_id), record.to_json(), durable=durable
        )

    def transition(
        self,
        upload_id: str,
        record: UploadRecord,
        state: UploadState,
        *,
        durable: bool = True,
        **changes: Any,
    ) -> UploadRecord:
        """Write ``record`` moved to ``state`` with ``changes``; keeps a short history.
        ``durable=False`` skips the fsyncs for states a rerun can re-derive."""
        now = self._clock()
        history = [*record.history, {"state": state.value, "at": now}][-20:]
        new = replace(record, state=state, updated_at=now, history=history, **changes)
        self.write_state(upload_id, new, durable=durable)
        return new

    def result(self, upload_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.driver.get_content(paths.upload_result_path(upload_id))))
        except PathNotFound:
            return None

    def write_result(self, upload_id: str, result: dict[str, Any]) -> None:
        # Not fsync'd: the blob and its links are durable before this is written,
        # and a rerun of the (idempotent) commit rebuilds a result lost in a crash.
        self.driver.put_content(paths.upload_result_path(upload_id), _json(result), durable=False)

    def size(self, upload_id: str) -> int:
        """Bytes staged so far (the next write offset)."""
        try:
            return self.driver.stat(paths.upload_data_path(upload_id)).size
        except PathNotFound:
            # Data is gone: cancelled, or moved into the blob store by a commit.
            record = self.state(upload_id)
            if record.size is not None:
                return record.size
            raise BlobUploadUnknown(detail={"upload_id": upload_id}) from None

    def seal(self, upload_id: str) -> int:
        """Freeze the staged data and return its final size: no write can change it
        afterwards (see the module docstring). Idempotent. BlobUploadUnknown if the
        data is gone (cancelled, or already moved into the blob store)."""
        try:
            return self.driver.seal(paths.upload_data_path(upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(detail={"upload_id": upload_id}) from None

    def last_activity(self, upload_id: str) -> float:
        """The latest of the last staged write and the last state change."""
        times = [self.state(upload_id).updated_at]
        with contextlib.suppress(PathNotFound):
            times.append(self.driver.stat(paths.upload_data_path(upload_id)).mod_time)
        return max(times)

    def cancel(self, upload_id: str) -> None:
        """Remove the session. A committed upload's record is removed too; the blob stays."""
        self.info(upload_id)
        try:
            self.driver.delete(paths.upload_dir(upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(detail={"upload_id": upload_id}) from None

    def remove_husk(self, upload_id: str) -> None:
        """Remove what a worker's late lease write recreated under a cancelled upload
        (no ``info.json``), so it is not left for the purge."""
        try:
            self.driver.stat(paths.upload_info_path(upload_id))
        except PathNotFound:
            with contextlib.suppress(PathNotFound):
                self.driver.delete(paths.upload_dir(upload_id))

    def list_ids(self) -> list[str]:
        try:
            children = self.driver.list(paths.uploads_root())
        except PathNotFound:
            return []
        return [paths.entry_name(c) for c in children]


class UploadWriter:
    """Sequential writes to one open upload (the seed design's WriteSeeker + ReaderFrom).

    Writes are strictly sequential: ``write_at`` must start at the current size.
    The handle checks that the upload is ``open`` when it first writes; after that
    the storage seal is the guard: once any process has called ``finish``, every
    write through this handle fails with BlobUploadInvalid and adds nothing.
    """

    def __init__(
        self,
        staging: Staging,
        info: UploadInfo,
        *,
        max_size: int | None = None,
        sync_on_close: bool = False,
    ) -> None:
        self._staging = staging
        self.info = info
        self.max_size = max_size
        self.sync_on_close = sync_on_close
        #: The lifecycle record as last read (or known) by this handle. A caller that
        #: read it a moment ago may set it, to save the first write a state read.
        self.known_record: UploadRecord | None = None
        self._writer: FileWriter | None = None
        self._closed = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def repository(self) -> str:
        return self.info.repository

    @property
    def started_at(self) -> float:
        return self.info.started_at

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def offset(self) -> int:
        """The current size of the staged blob: where the next write must start."""
        self._check_open_handle()
        if self._writer is not None:
            return self._writer.size
        return self._staging.size(self.id)

    def _check_open_handle(self) -> None:
        if self._closed:
            raise UploadClosed(detail={"upload_id": self.id})

    def _refused(self, state: str) -> BlobUploadInvalid:
        return BlobUploadInvalid(
            f"upload is {state}; it takes no more data", {"upload_id": self.id, "state": state}
        )

    def _writable(self) -> FileWriter:
        self._check_open_handle()
        if self._writer is None:
            # The state gives a precise refusal early; the seal is what enforces it.
            record = self.known_record or self._staging.state(self.id)
            self.known_record = record
            if record.state is not UploadState.OPEN:
                raise self._refused(record.state.value)
            try:
                self._writer = self._staging.driver.writer(
                    paths.upload_data_path(self.id), append=True
                )
            except PathNotFound:
                raise self._gone() from None
            except ObjectSealed:
                raise self._refused("finishing") from None
        return self._writer

    def _gone(self) -> BlobUploadInvalid | BlobUploadUnknown:
        """The error for staged data that disappeared: committed (moved into the
        blob store) is BlobUploadInvalid; cancelled is BlobUploadUnknown."""
        try:
            state = UploadState.COMMITTED if self._staging.result(self.id) else None
            state = state or self._staging.state(self.id).state
        except BlobUploadUnknown as exc:
            return exc
        if state is UploadState.OPEN:
            return BlobUploadUnknown("staged data is missing", {"upload_id": self.id})
        return self._refused(state.value)

    def _append(self, w: FileWriter, data: bytes | bytearray | memoryview) -> None:
        """One append, with the driver's refusals translated."""
        before = w.size
        self._check_limit(before, len(data))
        try:
            w.write(data)
        except ObjectSealed:
            raise self._refused("finishing") from None
        except PathNotFound:
            raise self._gone() from None
        except InvalidOffset:
            # Another writer appended meanwhile: this one's offset is stale.
            current = self._staging.size(self.id)
            raise RangeInvalid(
                "the upload grew through another request",
                {"offset": current, "requested": before, "upload_id": self.id},
            ) from None
        self._grew(before, w.size)

    def _check_limit(self, current: int, adding: int) -> None:
        if self.max_size is not None and current + adding > self.max_size:
            raise TooLarge(
                f"blob exceeds the maximum size of {self.max_size} bytes",
                {"limit": self.max_size, "upload_id": self.id},
            )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` at the current end."""
        self._append(self._writable(), data)
        return len(data)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``, which must be the current size (RangeInvalid
        with ``detail["offset"]`` = the current size otherwise)."""
        w = self._writable()
        current = w.size
        if offset != current:
            raise RangeInvalid(
                f"write at offset {offset}, but the upload has {current} bytes",
                {"offset": current, "requested": offset, "upload_id": self.id},
            )
        self._append(w, data)
        return len(data)

    def read_from(self, stream: BinaryIO, *, limit: int | None = None) -> int:
        """Append everything ``stream`` yields (or ``limit`` bytes); return the count.
        Copies in slices of the driver's ``write_size`` through one reused buffer:
        constant memory."""
        w = self._writable()
        chunk = max(COPY_CHUNK, self._staging.driver.write_size)
        buf = bytearray(chunk)
        view = memoryview(buf)
        total = 0
        while limit is None or total < limit:
            want = chunk if limit is None else min(chunk, limit - total)
            # Fill the slice before writing: a pipe or socket hands over less per read,
            # and on S3 each write is a request.
            n = 0
            while n < want:
                got = stream.readinto(view[n:want])  # type: ignore[attr-defined]
                if not got:
                    break
                n += got
            if not n:
                break
            self._append(w, view[:n])
            total += n
            if n < want:
                break  # end of stream
        return total

    def _grew(self, before: int, after: int) -> None:
        """Called after each write took the staged size from ``before`` to ``after``."""

    def flush(self) -> None:
        """Make every byte written so far durable."""
        if self._writer is not None:
            self._writer.commit()

    def close(self) -> None:
        """Release the handle (data written stays staged). Idempotent. Fsyncs first
        only with ``sync_on_close``: the commit fsyncs the blob before it becomes
        visible, so per-request fsyncs buy only faster recovery after a machine crash."""
        self._closed = True
        if self._writer is not None:
            w, self._writer = self._writer, None
            try:
                if self.sync_on_close:
                    w.commit()
            finally:
                w.close()

    def __enter__(self) -> UploadWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
