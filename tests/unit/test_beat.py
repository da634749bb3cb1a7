"""The beat singleton: the leadership lock (ingest.locks.Leadership) on fakeredis with
Lua, and LockedScheduler (workers.beat) ticking two beats side by side. Two real
``celery beat`` processes on a real Redis: tests/integration/test_beat.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery

from ingest.locks import Leadership
from workers.app import MIN_EXPIRES, app
from workers.beat import LAST_RUN_KEY, LockedScheduler


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def candidate(server: fakeredis.FakeServer, ttl: float = 3.0) -> Leadership:
    return Leadership("redis://unused", "beat", ttl=ttl, client=fakeredis.FakeRedis(server=server))


def test_one_candidate_leads_and_the_other_waits(server: fakeredis.FakeServer) -> None:
    a, b = candidate(server), candidate(server)
    assert a.hold() is True
    assert b.hold() is False
    assert a.is_leader()
    assert not b.is_leader()
    assert b.holder() == a.token
    # The leader renews; the follower keeps asking and keeps waiting.
    for _ in range(3):
        assert a.hold() is True
        assert b.hold() is False


def test_a_released_lock_passes_at_once(server: fakeredis.FakeServer) -> None:
    a, b = candidate(server), candidate(server)
    assert a.hold()
    a.release()
    assert not a.is_leader()
    assert b.hold() is True
    assert a.hold() is False


def test_a_leader_that_stops_renewing_loses_the_lock_after_its_ttl(
    server: fakeredis.FakeServer,
) -> None:
    a, b = candidate(server, ttl=0.3), candidate(server, ttl=0.3)
    assert a.hold()
    assert not b.hold()
    time.sleep(0.35)  # a died: nobody renewed
    assert not a.is_leader()  # and a, were it alive, would know it no longer leads
    assert b.hold() is True


def test_a_leader_cut_off_from_redis_stops_before_its_lock_can_pass_on(
    server: fakeredis.FakeServer,
) -> None:
    from ingest.errors import StorageUnavailable

    a = candidate(server, ttl=0.4)
    assert a.hold()
    server.connected = False
    with pytest.raises(StorageUnavailable):
        a.hold()
    assert a.is_leader()  # the last hold still guarantees the lock
    time.sleep(0.4)
    assert not a.is_leader()  # never beyond the lock's own life in Redis


def test_a_release_by_a_non_holder_leaves_the_lock_alone(server: fakeredis.FakeServer) -> None:
    a, b = candidate(server), candidate(server)
    assert a.hold()
    b.release()
    assert b.hold() is False
    assert a.hold() is True


# -- two schedulers ------------------------------------------------------------------

EVERY = 0.2


@pytest.fixture
def beat_app() -> Celery:
    test_app = Celery("beat-test", set_as_current=False)
    test_app.conf.beat_schedule = {"tick": {"task": "test.tick", "schedule": EVERY}}
    return test_app


class Recording(LockedScheduler):
    """Records what it would send instead of publishing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[float] = []
        super().__init__(*args, **kwargs)
        self.__dict__["producer"] = None  # never a broker connection

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        self.sent.append(time.monotonic())


@pytest.fixture
def schedulers(
    beat_app: Celery, server: fakeredis.FakeServer, tmp_path: Path
) -> Iterator[list[Recording]]:
    made = [
        Recording(
            app=beat_app,
            schedule_filename=str(tmp_path / f"schedule-{i}"),
            leadership=candidate(server, ttl=0.6),
        )
        for i in range(2)
    ]
    yield made
    for s in made:
        s.close()


def run(beats: list[Recording], seconds: float) -> None:
    """Tick every beat as celery beat's loop does, for ``seconds``."""
    wake = [0.0] * len(beats)
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        for i, beat in enumerate(beats):
            if now >= wake[i]:
                wake[i] = now + beat.tick()
        time.sleep(0.01)


def test_two_beats_send_each_periodic_task_once(schedulers: list[Recording]) -> None:
    a, b = schedulers
    run([a, b], 1.5)
    sent = sorted(a.sent + b.sent)
    assert 5 <= len(sent) <= 9, sent  # about 1.5 / EVERY, not twice that
    assert not (a.sent and b.sent), (a.sent, b.sent)  # one beat sent them all
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert min(gaps) > EVERY * 0.7, gaps


def test_the_standby_takes_over_and_continues_the_schedule(
    schedulers: list[Recording], server: fakeredis.FakeServer
) -> None:
    a, b = schedulers
    run([a, b], 0.7)
    leader, standby = (a, b) if a.sent else (b, a)
    assert leader.sent
    assert not standby.sent
    assert fakeredis.FakeRedis(server=server).hget(LAST_RUN_KEY, "tick") is not None
    leader.close()  # a clean stop releases the lock
    last = leader.sent[-1]
    run([standby], 1.0)
    assert standby.sent, "the standby never took over"
    # Not at once on taking over: the old leader's last send counts.
    assert standby.sent[0] - last > EVERY * 0.7, standby.sent[0] - last


def test_every_scheduled_message_expires_when_the_next_is_due() -> None:
    schedule = app.conf.beat_schedule
    assert schedule
    for name, entry in schedule.items():
        every = float(entry["schedule"])
        assert entry["options"]["expires"] == max(every, MIN_EXPIRES), name


def test_the_worker_app_uses_the_locked_scheduler() -> None:
    assert app.conf.beat_scheduler == "workers.beat:LockedScheduler"
