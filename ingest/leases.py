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


class _Renewer:
    """One daemon thread per process renews every lease held in it, so holding a
    lease costs two small writes, not a thread (a 64 KiB verification takes ~3 ms)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._next = 0
        self._pid = -1  # the thread does not survive a fork: start one per process
        #: When the thread wakes next (monotonic); it is woken early only for a lease
        #: due before that: a small verification's lease is due long after it ends,
        #: and waking the thread for each one cost ~5 % of a worker's busy time.
        self._wake = 0.0

    def add(self, held: _Held) -> int:
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._wake = 0.0
                threading.Thread(target=self._run, name="ingest-leases", daemon=True).start()
            self._next += 1
            self._held[self._next] = held
            if held.due < self._wake:
                self._cond.notify()
            return self._next

    def remove(self, token: int) -> None:
        with self._cond:
            held = self._held.pop(token)
        with held.writing:  # a renewal in flight ends first, so none lands after this
            held.done = True

    def _run(self) -> None:
        while True:
            with self._cond:
                mono = time.monotonic()
                due = [h for h in self._held.values() if h.due <= mono]
                if not due:
                    wait = max(
                        min((h.due for h in self._held.values()), default=mono + 60) - mono,
                        0.001,
                    )
                    self._wake = mono + wait
                    self._cond.wait(wait)
                    self._wake = 0.0  # awake: its next pass sees whatever was added meanwhile
                    continue
            for held in due:
                with held.writing:
                    if not held.done:
                        held.write()
                        held.due = time.monotonic() + held.every


@dataclass
class _Held:
    driver: StorageDriver
    path: str
    lease: Lease
    every: float
    now: Callable[[], float]
    due: float
    done: bool = False
    written: bool = False
    writing: threading.Lock = field(default_factory=threading.Lock)

    def write(self) -> None:
        self.written = True
        with contextlib.suppress(Exception):  # best effort: see hold_lease
            write_lease(self.driver, self.path, replace(self.lease, renewed_at=self.now()))


_renewer = _Renewer()


@contextlib.contextmanager
def hold_lease(
    driver: StorageDriver,
    path: str,
    task_id: str | None,
    *,
    renew_every: float = LEASE_RENEW,
    first_after: float = 0.0,
    now: Callable[[], float] = time.time,
) -> Iterator[None]:
    """Hold a lease at ``path`` for the block: written on entry (or, with
    ``first_after``, only once the block has run that long), renewed every
    ``renew_every`` seconds by the process's renewal thread, removed on exit.

    ``first_after`` saves short work the two file operations (on a busy disk,
    creating a file costs more than verifying a small blob), at the price that work
    dying before then leaves no lease: it is recovered like a lost task, after the
    reconcile's grace.

    Best effort throughout: the work never fails over its lease (on a full disk, say);
    a lease that cannot be written just looks dead sooner, which costs at most a
    duplicate run. On exit the lease is removed even if a duplicate run of the same
    task wrote its own meanwhile: that run rewrites it at its next renewal."""
    held = _Held(driver, path, Lease(task_id, now()), renew_every, now, 0.0)
    if first_after <= 0:
        held.write()
    held.due = time.monotonic() + (first_after if first_after > 0 else renew_every)
    token = _renewer.add(held)
    try:
        yield
    finally:
        _renewer.remove(token)
        if held.written:
            with contextlib.suppress(Exception):
                driver.delete(path)
