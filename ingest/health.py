"""Deep health checks: can this process take a push through to a commit right now?

Three checks, each timed, run side by side (the slowest bounds the whole):

* ``broker`` -- the task broker answers (a Redis ``PING`` through the queue seam,
  :meth:`~ingest.queue.TaskQueue.ping_broker`): without it no verification is sent.
* ``storage`` -- the storage is writable and readable: a small probe object under
  :func:`ingest.paths.health_probe_path` is written, read back, compared and deleted.
* ``workers`` -- at least one worker answers a control ping within ``worker_timeout``
  (:meth:`~ingest.queue.TaskQueue.ping_workers`): without one, finishing PUTs wait
  and end in 202s.

A check that does not return in time counts as failed (its thread is left to end on
its own: a hung NFS mount must not hang the health endpoint too). The HTTP rendering
is the debug listener's (:mod:`ingest.http.debug`); this module knows no HTTP.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest.paths import health_probe_path
from ingest.queue import TaskQueue
from ingest.storage.base import StorageDriver

__all__ = [
    "BROKER_TIMEOUT",
    "WORKER_TIMEOUT",
    "Check",
    "HealthReport",
    "check_broker",
    "check_storage",
    "check_workers",
    "run_checks",
]

#: Seconds the broker has to answer a PING (connect included).
BROKER_TIMEOUT = 2.0
#: Seconds workers have to answer a control ping; the check returns at the first answer.
WORKER_TIMEOUT = 1.0
#: Grace on top of the longest timeout before a check that has not returned is failed.
_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: whether it passed, how long it took, and why not."""

    name: str
    ok: bool
    seconds: float
    error: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok" if self.ok else "fail",
            "latency_ms": round(self.seconds * 1000, 3),
        }
        if self.error is not None:
            out["error"] = self.error
        out.update(self.detail)
        return out


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every check's outcome; healthy only when all passed."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "checks": {c.name: c.to_dict() for c in self.checks},
        }


#: ``scheme://user:password@`` in an error message: the password is masked.
_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def _describe(exc: BaseException) -> str:
    """``CODE: message (cause)`` for an IngestError, ``Type: message`` otherwise; a
    password inside a URL in it is masked (the listener answers without credentials)."""
    message = getattr(exc, "message", None) or str(exc)
    code = getattr(exc, "code", None)
    detail = getattr(exc, "detail", None)
    cause = detail.get("error") if isinstance(detail, dict) else None
    text = f"{code}: {message}" if isinstance(code, str) else f"{type(exc).__name__}: {message}"
    text = f"{text} ({cause})" if cause else text
    return _CREDENTIALS.sub(r"\1***@", text)


def _timed(name: str, probe: Callable[[], Mapping[str, Any] | None]) -> Check:
    start = time.perf_counter()
    try:
        detail = probe() or {}
    except Exception as exc:  # noqa: BLE001 - any failure is this check failing
        return Check(name, False, time.perf_counter() - start, _describe(exc)[:500])
    return Check(name, True, time.perf_counter() - start, None, detail)


def check_storage(driver: StorageDriver) -> Check:
    """Write, read back and delete a small probe object under ``/health``."""

    def probe() -> None:
        probe_id = str(uuid.uuid4())
        path = health_probe_path(probe_id)
        payload = f"verified-ingest health probe {probe_id}\n".encode()
        try:
            # Not durable: a probe proves the storage takes writes, and fsyncs on a
            # busy disk would make every health check as slow as the slowest commit.
            driver.put_content(path, payload, durable=False)
            if driver.get_content(path) != payload:
                raise RuntimeError("the probe read back differs from what was written")
        finally:
            with contextlib.suppress(Exception):  # the write failed: nothing to delete
                driver.delete(path)

    return _timed("storage", probe)


def check_broker(queue: TaskQueue, timeout: float = BROKER_TIMEOUT) -> Check:
    """The broker answers within ``timeout`` seconds."""

    def probe() -> None:
        queue.ping_broker(timeout)

    return _timed("broker", probe)


def check_workers(queue: TaskQueue, timeout: float = WORKER_TIMEOUT) -> Check:
    """At least one worker answers a control ping within ``timeout`` seconds."""

    def probe() -> dict[str, Any]:
        names = queue.ping_workers(timeout, limit=1)
        if not names:
            raise RuntimeError(f"no worker answered a ping within {timeout:g} s")
        return {"workers": names}

    return _timed("workers", probe)


def run_checks(
    driver: StorageDriver,
    queue: TaskQueue,
    *,
    broker_timeout: float = BROKER_TIMEOUT,
    worker_timeout: float = WORKER_TIMEOUT,
) -> HealthReport:
    """Run every check at once; one that has not returned by the longest timeout
    (plus a second) fails as ``no answer``."""
    probes: dict[str, Callable[[], Check]] = {
        "broker": lambda: check_broker(queue, broker_timeout),
        "storage": lambda: check_storage(driver),
        "workers": lambda: check_workers(queue, worker_timeout),
    }
    results: dict[str, Check] = {}
    threads: dict[str, threading.Thread] = {}

    def run(name: str, probe: Callable[[], Check]) -> None:
        results[name] = probe()

    start = time.perf_counter()
    for name, probe in probes.items():
        # Daemon threads: a check stuck in a kernel call must not keep a process alive.
        t = threading.Thread(target=run, args=(name, probe), name=f"health-{name}", daemon=True)
        t.start()
        threads[name] = t
    deadline = start + max(broker_timeout, worker_timeout) + _GRACE
    for t in threads.values():
        t.join(max(0.0, deadline - time.perf_counter()))
    checks = []
    for name in probes:
        got = results.get(name)
        if got is None:
            elapsed = time.perf_counter() - start
            got = Check(name, False, elapsed, f"no answer within {elapsed:.1f} s")
        checks.append(got)
    return HealthReport(tuple(checks))
