"""Is a verification attempt still alive? The evidence, in the order it is trusted.

An upload in ``finishing`` or ``verified`` belongs to one attempt (its record's
``task_id``). Storage says nothing more until the attempt records an outcome, so
three sources decide whether it is still going:

1. The attempt's lease (:mod:`ingest.leases`): renewed while a worker runs it.
   Stale means its worker died or hangs -- provably not making progress.
2. The result backend: a final state (FAILURE, SUCCESS, REVOKED) means the task
   ended, so if storage still says ``finishing`` its outcome never reached storage
   (a full disk, say).
3. Neither: the task is queued, retrying after a backoff, or lost with the broker.
   Only time tells these apart (``reconcile``'s grace).

Everything acting on a dead attempt (``reconcile``, ``retry``, a repeated
``finish``) is safe even when the verdict is wrong: the staged data is sealed and
the commit is idempotent, so the worst case is a duplicate verification.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from ingest import paths
from ingest.leases import Lease, read_lease
from ingest.queue import TaskQueue
from ingest.storage.base import StorageDriver
from ingest.uploads import UploadRecord

__all__ = ["Liveness", "attempt_lease", "liveness"]

log = logging.getLogger(__name__)

_ENDED = frozenset({"FAILURE", "SUCCESS", "REVOKED"})


class Liveness(StrEnum):
    RUNNING = "running"  # its lease is being renewed
    REQUEUED = "requeued"  # a reconcile re-sent it after its worker died
    LEASE_EXPIRED = "lease-expired"  # its worker stopped renewing the lease
    ENDED = "ended"  # the result backend holds its final state
    UNKNOWN = "unknown"  # queued, retrying, or lost: no evidence either way


def attempt_lease(driver: StorageDriver, upload_id: str, record: UploadRecord) -> Lease | None:
    """The verification lease of the upload's current attempt, if there is one."""
    lease = read_lease(driver, paths.upload_verify_lease_path(upload_id))
    if lease is None or record.task_id is None or lease.task_id != record.task_id:
        return None  # none, or an earlier attempt's
    return lease


def liveness(
    driver: StorageDriver, queue: TaskQueue, upload_id: str, record: UploadRecord, now: float
) -> Liveness:
    """What is known of the current attempt of a ``finishing``/``verified`` upload."""
    lease = attempt_lease(driver, upload_id, record)
    if lease is not None and not lease.requeued:
        return Liveness.LEASE_EXPIRED if lease.stale(now) else Liveness.RUNNING
    if record.task_id:
        try:
            state = queue.info(record.task_id).state
        except Exception:  # an unreachable backend is no evidence
            log.debug("result backend unreachable", exc_info=True)
            state = None
        if state in _ENDED:
            return Liveness.ENDED
    return Liveness.REQUEUED if lease is not None else Liveness.UNKNOWN
