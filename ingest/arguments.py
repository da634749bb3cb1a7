"""Arguments that cross a trust boundary: task messages from the broker, housekeeping calls.

Anyone who can publish to the broker can ask a worker to run a task with arguments
of their choosing, so every task checks its arguments before it touches storage,
and housekeeping refuses values that would turn it against live data:

* ``older_than`` of a purge is at least :data:`MIN_PURGE_AGE` (1 h). An upload is
  judged by its *last activity*, and a client may legitimately pause for minutes
  between two chunks (a slow pipeline, a reconnect, a laptop lid); a purge with a
  cut-off of seconds would delete those sessions. The floor is 24 times shorter
  than the default ``INGEST_PURGE_AGE`` and much longer than any sane pause.
* ``grace`` of a reconcile is at least :data:`MIN_RECONCILE_GRACE` (60 s). A
  verification that is merely queued looks exactly like a lost one (the result
  backend knows neither), so a grace of seconds re-sends queued work; repeated, it
  multiplies the verification backlog.
* ``grace`` of a garbage collection is at least :data:`MIN_GC_GRACE` (60 s). The
  grace is what keeps a blob between its upload and the manifest that names it (a
  client pushes the layers first); its safety against concurrent pushes does not
  depend on it (:mod:`ingest.gc`), but a grace of seconds would fail pushes whose
  manifest comes a little late. Tests call the core with any grace.
* Durations must be finite real numbers (JSON can carry ``NaN``, which compares
  false with everything and would slip past a plain ``<`` check), flags real
  booleans, sizes non-negative integers, ids, digests and repository names must
  follow their grammar (:func:`ingest.paths.validate_upload_id`,
  :func:`ingest.digests.parse_digest`, :func:`ingest.names.validate_name`).

Every refusal is :class:`~ingest.errors.ArgumentInvalid` naming the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

from ingest import paths

# The floors are declared with the settings they bound (INGEST_PURGE_AGE,
# INGEST_RECONCILE_GRACE) in ingest.config, which depends on nothing of ingest.
from ingest.config import MIN_GC_GRACE, MIN_PURGE_AGE, MIN_RECONCILE_GRACE
from ingest.digests import Digest, parse_digest
from ingest.errors import ArgumentInvalid, IngestError
from ingest.names import validate_name

__all__ = [
    "MAX_BATCH",
    "MAX_SIZE",
    "MIN_GC_GRACE",
    "MIN_PURGE_AGE",
    "MIN_RECONCILE_GRACE",
    "BatchEntry",
    "check_batch",
    "check_flag",
    "check_gc_grace",
    "check_purge_age",
    "check_reconcile_grace",
    "check_size",
    "check_upload_id",
    "check_verify_arguments",
]

#: Largest size a task may claim (a signed 64-bit integer, like every size on disk).
MAX_SIZE = (1 << 63) - 1


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(argument: str, reason: str, message: str, value: object, **extra: Any) -> NoReturn:
    detail: dict[str, Any] = {"argument": argument, "reason": reason, "value": _shown(value)}
    detail.update(extra)
    raise ArgumentInvalid(message, detail)


def _duration(argument: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(argument, "type", f"{argument} must be a number of seconds", value)
    seconds = float(value)
    if not math.isfinite(seconds):
        _refuse(argument, "range", f"{argument} must be finite", value)
    if seconds < minimum:
        _refuse(
            argument,
            "range",
            f"{argument} must be at least {minimum:g} s",
            value,
            minimum=minimum,
        )
    return seconds


def check_purge_age(older_than: object) -> float:
    """``older_than`` as seconds, or ArgumentInvalid if below :data:`MIN_PURGE_AGE`."""
    return _duration("older_than", older_than, MIN_PURGE_AGE)


def check_reconcile_grace(grace: object) -> float:
    """``grace`` as seconds, or ArgumentInvalid if below :data:`MIN_RECONCILE_GRACE`."""
    return _duration("grace", grace, MIN_RECONCILE_GRACE)


def check_gc_grace(grace: object) -> float:
    """``grace`` as seconds, or ArgumentInvalid if below :data:`MIN_GC_GRACE`."""
    return _duration("grace", grace, MIN_GC_GRACE)


def check_flag(argument: str, value: object) -> bool:
    """A real boolean: ``"false"`` or ``0`` from a hand-written message is refused."""
    if not isinstance(value, bool):
        _refuse(argument, "type", f"{argument} must be true or false", value)
    return bool(value)


def _grammar(argument: str, exc: IngestError, value: object) -> NoReturn:
    _refuse(argument, "malformed", f"{argument}: {exc.message}", value, code=exc.code)


def check_upload_id(upload_id: object) -> str:
    """A canonical upload id (lower-case UUID4)."""
    try:
        return paths.validate_upload_id(upload_id)  # type: ignore[arg-type]
    except IngestError as exc:
        _grammar("upload_id", exc, upload_id)


def check_size(argument: str, size: object) -> int | None:
    """None, or a size: an integer from 0 to 2**63 - 1."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        _refuse(argument, "type", f"{argument} must be an integer or null", size)
    if not 0 <= size <= MAX_SIZE:
        _refuse(argument, "range", f"{argument} must be between 0 and 2**63 - 1", size)
    return size


def check_verify_arguments(
    upload_id: object,
    digest: object,
    size: object,
    repository: object,
    staged_size: object = None,
) -> Digest:
    """The arguments of ``ingest.verify_upload``: id, digest and repository by their
    grammar, ``size`` and ``staged_size`` None or a size. Returns the parsed digest:
    the message's text is parsed here, once."""
    check_upload_id(upload_id)
    try:
        claimed = parse_digest(digest)  # type: ignore[arg-type]
    except IngestError as exc:
        _grammar("digest", exc, digest)
    check_size("size", size)
    check_size("staged_size", staged_size)
    if repository is not None:
        try:
            validate_name(repository)  # type: ignore[arg-type]
        except IngestError as exc:
            _grammar("repository", exc, repository)
    return claimed


#: Most entries one batched verification may carry (the frontend sends far fewer).
MAX_BATCH = 1000
_BATCH_KEYS = frozenset({"upload_id", "digest", "size", "staged_size", "task_id", "repository"})


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One upload of an ``ingest.verify_batch`` message, checked."""

    upload_id: str
    digest: Digest
    size: int | None
    staged_size: int | None
    task_id: str
    repository: str | None


def check_batch(entries: object) -> list[BatchEntry]:
    """The argument of ``ingest.verify_batch``: a list of 1 to :data:`MAX_BATCH` entries,
    each with exactly the keys a frontend sends, checked as a single verification's
    arguments; ``task_id`` (under which the entry's outcome is stored) is a UUID4.
    One malformed entry refuses the whole message: only a forged one has any."""
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH:
        _refuse("entries", "type", f"entries must be a list of 1 to {MAX_BATCH}", entries)
    checked = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != _BATCH_KEYS:
            _refuse("entries", "malformed", "an entry has the wrong keys", entry)
        digest = check_verify_arguments(
            entry["upload_id"],
            entry["digest"],
            entry["size"],
            entry["repository"],
            entry["staged_size"],
        )
        try:
            task_id = paths.validate_upload_id(entry["task_id"])
        except IngestError as exc:
            _grammar("task_id", exc, entry["task_id"])
        checked.append(
            BatchEntry(
                entry["upload_id"],
                digest,
                entry["size"],
                entry["staged_size"],
                task_id,
                entry["repository"],
            )
        )
    return checked
