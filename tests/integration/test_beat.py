"""Two real ``celery beat`` processes on a real Redis: one schedules, the other stands
by and takes over when the first dies; every scheduled message expires.

No worker runs, so what beat sends stays in the ``maintenance`` list, where the test
reads it (kombu's Redis transport keeps a queue as a list of that name).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from devtools.devstack import Service
from ingest.queue import QUEUE_MAINTENANCE, TASK_RECONCILE
from tests.integration.conftest import Stack
from workers.app import MIN_EXPIRES

pytestmark = pytest.mark.integration

SENDING = "Sending due task"


def beat(stack: Stack, name: str, env: dict[str, str]) -> Service:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(stack.root / f"{name}-schedule"),
    ]
    return Service(args, {**stack.env, **env}, stack.root / f"{name}.log").start()


def log_of(service: Service) -> str:
    return service.logfile.read_text(errors="replace") if service.logfile.exists() else ""


def poll(what: str, check: Callable[[], bool], timeout: float, *logs: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    shown = "\n".join(f"--- {s.logfile.name}\n{log_of(s)[-3000:]}" for s in logs)
    pytest.fail(f"timed out waiting for: {what}\n{shown}")


def messages(r: redis.Redis[bytes]) -> list[dict[str, Any]]:
    """The headers of every message waiting in the maintenance queue."""
    out = []
    for raw in r.lrange(QUEUE_MAINTENANCE, 0, -1):
        out.append(json.loads(raw)["headers"])
    return out


def reconciles(r: redis.Redis[bytes]) -> int:
    return sum(h["task"] == TASK_RECONCILE for h in messages(r))


def test_two_beats_schedule_once_and_the_standby_takes_over(stack: Stack) -> None:
    env = {
        "INGEST_RECONCILE_INTERVAL": "1s",
        "INGEST_BEAT_LOCK_TTL": "3s",
        "INGEST_FSCK_INTERVAL": "0",
    }
    r = redis.Redis.from_url(stack.redis_url)
    first = beat(stack, "beat-a", env)
    try:
        poll("beat a leads", lambda: "taken" in log_of(first), 30, first)
        second = beat(stack, "beat-b", env)
        try:
            poll("beat b stands by", lambda: "standing by" in log_of(second), 30, second)
            start = reconciles(r)
            time.sleep(5)
            sent = reconciles(r) - start
            # One a second from one beat; two beats without the lock would send ~10.
            assert 3 <= sent <= 6, (sent, log_of(first)[-2000:], log_of(second)[-2000:])
            assert SENDING in log_of(first)
            assert SENDING not in log_of(second)

            # Every message expires when the next one would be due (with a floor).
            now = datetime.now(UTC).timestamp()
            for headers in messages(r):
                assert headers["expires"], headers
                left = datetime.fromisoformat(headers["expires"]).timestamp() - now
                assert 0 < left <= MIN_EXPIRES + 1, headers

            # The leader dies without releasing the lock: the standby takes over once
            # it expires (3 s), and carries on at the same pace.
            first.kill()
            died = time.monotonic()
            poll("beat b takes over", lambda: SENDING in log_of(second), 15, second)
            took = time.monotonic() - died
            assert took < 3 + 1 + 2, took  # the TTL, a renewal period, the next entry
            before = reconciles(r)
            time.sleep(3)
            assert 2 <= reconciles(r) - before <= 4
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_beat_without_the_lock_sends_nothing_while_another_holds_it(stack: Stack) -> None:
    """The lock is the one in Redis, whoever holds it: a beat never sends while it
    is held elsewhere (here by hand, as by a beat on another host)."""
    r = redis.Redis.from_url(stack.redis_url)
    r.set("ingest:v1:lock:beat", "other-host:1:abc", px=60_000)
    env = {"INGEST_RECONCILE_INTERVAL": "1s", "INGEST_FSCK_INTERVAL": "0"}
    b = beat(stack, "beat-c", env)
    try:
        poll("beat c stands by", lambda: "other-host:1:abc" in log_of(b), 30, b)
        time.sleep(3)
        assert reconciles(r) == 0
        assert SENDING not in log_of(b)
        r.delete("ingest:v1:lock:beat")  # the other host stopped cleanly
        poll("beat c takes over", lambda: reconciles(r) > 0, 30, b)
    finally:
        b.stop()
