"""Gathering concurrent finishes into one verification task.

Each Celery task costs a fixed few milliseconds of CPU (the message, its events,
the result-backend writes, the worker's bookkeeping) whatever the blob: more than a
64 KiB blob costs to hash and commit. When many small uploads finish at once, the
:class:`Batcher` sends them as one task, and the worker verifies and commits each
in turn, recording each upload's own outcome under its own task id (see
``workers.tasks.verify_batch``).

How a batch forms (leader and followers, no thread of its own):

* A finish is sent at once, alone, unless the process is busy: another finish in
  the last ``window`` seconds *and* (when the caller can tell) other finishes still
  waiting for their outcome. So an idle or a sequential client -- whose previous
  finish has already committed -- pays no added latency; only concurrent load,
  where a short wait is repaid many times over in CPU, is batched.
* Otherwise it opens a batch and, as its *leader*, waits up to ``window`` for
  others to join (or until ``max_entries`` have); followers block until the
  leader has sent the batch. Every caller then learns whether *its* send
  succeeded: the call returns only once the message is with the broker, as an
  unbatched send does.
* A batch of one is sent as a plain single task.

Framework-free: the caller supplies the two send functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


@dataclass(slots=True)
class _Batch(Generic[T]):
    entries: list[T] = field(default_factory=list)
    open: bool = True
    sent: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Batcher(Generic[T]):
    """Sends entries alone or in batches (see the module docstring). Thread-safe."""

    def __init__(
        self,
        send_one: Callable[[T], None],
        send_many: Callable[[Sequence[T]], None],
        *,
        window: float,
        max_entries: int,
        company: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``company``: whether other finishes are under way (their outcomes awaited),
        i.e. whether more are likely to arrive within the window."""
        self._send_one = send_one
        self._send_many = send_many
        self.window = window
        self.max_entries = max(1, max_entries)
        self._company = company
        self._clock = clock
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._current: _Batch[T] | None = None
        self._last_submit = float("-inf")

    def submit(self, entry: T) -> None:
        """Send ``entry`` (alone or with others); returns once it is sent, or raises
        what sending its batch raised."""
        if self.window <= 0 or self.max_entries == 1:
            self._send_one(entry)
            return
        with self._lock:
            now = self._clock()
            quiet = now - self._last_submit > self.window or (
                self._company is not None and not self._company()
            )
            self._last_submit = now
            batch = self._current
            if batch is not None and batch.open and len(batch.entries) < self.max_entries:
                batch.entries.append(entry)
                if len(batch.entries) >= self.max_entries:
                    self._joined.notify_all()
                leader = False
            elif quiet:
                batch, leader = None, True
            else:
                batch = self._current = _Batch([entry])
                leader = True
            if leader and batch is not None:
                # Wait for followers; the lock is released while waiting.
                self._joined.wait_for(
                    lambda: len(batch.entries) >= self.max_entries, timeout=self.window
                )
                batch.open = False
                if self._current is batch:
                    self._current = None
        if batch is None:
            self._send_one(entry)  # nobody around: no reason to wait
            return
        if leader:
            self._flush(batch)
        else:
            batch.sent.wait()
        if batch.error is not None:
            raise batch.error

    def _flush(self, batch: _Batch[T]) -> None:
        try:
            if len(batch.entries) == 1:
                self._send_one(batch.entries[0])
            else:
                self._send_many(list(batch.entries))
        except BaseException as exc:  # noqa: BLE001 - every member of the batch learns it
            batch.error = exc
        finally:
            batch.sent.set()
