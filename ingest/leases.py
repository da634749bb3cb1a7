"""Leases: "a worker is on this, and still alive", kept in storage beside the upload.

A worker doing long work for an upload writes a small lease record and renews it
every :data:`LEASE_RENEW` seconds; the record is removed when the work ends. So a
lease that has not been renewed for :data:`LEASE_STALE` seconds belongs to a
worker that died (``kill -9``, a lost machine) or hangs, and the work can be
handed to another worker at once -- without waiting for the broker to redeliver
the message, which on Redis takes the whole visibility timeout (the longest
verification time limit plus a minute: 16 minutes with the defaults).

Two kinds use it: the verification (``verify.lease``, renewed by a thread for the
whole commit, read by ``reconcile``, ``retry`` and a repeated ``finish``) and the
prehash (``prehash.lease``, renewed inline as it tails the upload).

Leases compare wall-clock times written by one host with the clock of another, so
hosts must keep their clocks within a few seconds of each other (NTP): a skew of
``s`` seconds makes a dead lease look alive ``s`` seconds longer, or a live one
dead ``s`` seconds early. :data:`LEASE_STALE` is several renewals long for that
reason. Judging a live lease dead only costs a duplicate run of an idempotent
task: it can never commit anything that was not verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ingest.storage.base import PathNotFound, StorageDriver

__all__ = [
    "LEASE_RENEW",
    "LEASE_STALE",
    "Lease",
    "hold_lease",
    "read_lease",
    "write_lease",
]

#: Seconds between two renewals of a lease.
LEASE_RENEW = 2.0
#: A lease not renewed for this long belongs to a dead or stuck worker.
LEASE_STALE = 15.0


def _holder() -> str:
    # Unique per lease, so two runs in one process never take each other's lease.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease record. ``requeued`` marks a lease a reconcile took over from a
    dead holder when it re-sent the work (the re-sent task writes its own)."""

    task_id: str | None
    renewed_at: float
    holder: str = field(default_factory=_holder)
    requeued: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float) -> float:
        return now - self.renewed_at

    def stale(self, now: float, stale_after: float = LEASE_STALE) -> bool:
        """True when nobody has renewed it for ``stale_after`` seconds."""
        return self.age(now) > stale_after

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def read_lease(driver: StorageDriver, path: str) -> Lease | None:
    """The lease at ``path``; None if there is none or it is unreadable (a torn or
    foreign record is no evidence of a live worker)."""
    try:
        raw = json.loads(driver.get_content(path))
        return Lease(
            task_id=None if raw.get("task_id") is None else str(raw["task_id"]),
            renewed_at=float(raw["renewed_at"]),
            holder=str(raw.get("holder", "")),
            requeued=bool(raw.get("requeued", False)),
            detail=dict(raw.get("detail") or {}),
        )
    except (PathNotFound, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_lease(driver: StorageDriver, path: str, lease: Lease) -> None:
    # Not fsync'd: after a machine crash a lost lease reads as "no lease", the same
    # as a queued task's, and the reconcile's grace covers that.
    driver.put_content(path, lease.to_json(), durable=False)


@contextlib.contextmanager
def hold_lease(
    driver: StorageDriver,
    path: str,
    task_id: str | None,
    *,
    renew_every: float = LEASE_RENEW,
    now: Callable[[], float] = time.time,
) -> Iterator[None]:
    """Hold a lease at ``path`` for the block: written on entry, renewed by a daemon
    thread, removed on exit. Best effort throughout: the work never fails over its
    lease (on a full disk, say); a lease that cannot be written just looks dead
    sooner, which costs at most a duplicate run."""
    lease = Lease(task_id, now())

    def write() -> None:
        with contextlib.suppress(Exception):
            write_lease(driver, path, replace(lease, renewed_at=now()))

    write()
    done = threading.Event()

    def renew() -> None:
        while not done.wait(renew_every):
            write()

    keeper = threading.Thread(target=renew, name="ingest-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()
        # Remove it only if it is still ours: a duplicate run of the same task may
        # have written its own since (then it removes that one when it ends).
        current = read_lease(driver, path)
        if current is not None and current.holder == lease.holder:
            with contextlib.suppress(Exception):
                driver.delete(path)
