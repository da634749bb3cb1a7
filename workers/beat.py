"""Celery beat that schedules only while it leads: any number of beats may run, one
sends (``beat_scheduler`` in :mod:`workers.celeryconfig`).

Beat is a singleton by nature: two beats send every periodic task twice. Rather
than trusting every deployment to start exactly one, each beat asks for the
``beat`` :class:`~ingest.locks.Leadership` before every scheduling step. The leader
renews it every third of ``INGEST_BEAT_LOCK_TTL``; the others stand by, asking as
often, and one takes over within that TTL of the leader's death, or at once when it
stops cleanly (it releases the lock on shutdown). While Redis does not answer, the
leader goes on only as long as its last renewal guarantees, then stops sending.

A new leader continues the old leader's schedule rather than its own: each send's
time is recorded in Redis (``ingest:v1:beat:last-run``, entry → time) and read on
takeover, so an entry the old leader sent a moment ago is not sent again at once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from ingest.config import Settings
from ingest.errors import StorageUnavailable
from ingest.locks import KEY_PREFIX, Leadership

__all__ = ["LAST_RUN_KEY", "LockedScheduler"]

log = logging.getLogger(__name__)

#: Hash: schedule entry name → when the leader last sent it (Unix time).
LAST_RUN_KEY = f"{KEY_PREFIX}beat:last-run"


def _timestamp(when: datetime) -> float:
    # Celery's naive datetimes are UTC (enable_utc, workers.celeryconfig).
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


class LockedScheduler(PersistentScheduler):
    """A :class:`~celery.beat.PersistentScheduler` whose ``tick`` sends nothing unless
    this beat holds the beat lock. ``leadership``: for tests; by default the lock
    in ``REDIS_URL`` with ``INGEST_BEAT_LOCK_TTL``."""

    def __init__(self, *args: Any, leadership: Leadership | None = None, **kwargs: Any) -> None:
        self._leadership = leadership
        self._next_hold = 0.0
        self._leading = False
        self._announced: str | None = None
        super().__init__(*args, **kwargs)

    @property
    def leadership(self) -> Leadership:
        if self._leadership is None:
            settings = self.app.conf.ingest_settings
            assert isinstance(settings, Settings)
            self._leadership = Leadership(
                settings.redis_url,
                "beat",
                ttl=settings.beat_lock_ttl,
                tls=settings.redis_ssl_options(),
            )
        return self._leadership

    @property
    def renew_every(self) -> float:
        return self.leadership.ttl / 3

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = time.monotonic()
        if now >= self._next_hold:
            self._hold(now)
        if not self.leadership.is_leader():
            # Standing by (or unsure): ask again when the next hold is due.
            return max(0.1, self._next_hold - time.monotonic())
        interval = float(super().tick(*args, **kwargs))
        # Wake up in time to renew, however far the next entry is.
        return min(interval, max(0.0, self._next_hold - time.monotonic()))

    def _hold(self, now: float) -> None:
        lead = self.leadership
        try:
            held = lead.hold()
        except StorageUnavailable as exc:
            self._next_hold = now + min(1.0, self.renew_every)
            if lead.is_leader():
                log.warning("beat lock: Redis does not answer (%s); still leading", exc.detail)
            elif self._leading:
                self._leading = False
                log.error("beat lock: Redis does not answer (%s); stopped scheduling", exc.detail)
            return
        self._next_hold = now + self.renew_every
        if held and not self._leading:
            self._leading = True
            self._announced = None
            self._continue_schedule()
            log.info("beat lock %s taken (%s): scheduling", lead.key, lead.token)
        elif not held:
            holder = lead.holder() or "another beat"
            if self._leading:
                log.warning("beat lock %s lost to %s: standing by", lead.key, holder)
            elif holder != self._announced:
                log.info("beat lock %s held by %s: standing by", lead.key, holder)
            self._leading = False
            self._announced = holder

    def _continue_schedule(self) -> None:
        """Start every entry from when the previous leader last sent it, if later
        than this beat's own record."""
        try:
            raw = self.leadership.client().hgetall(LAST_RUN_KEY)
        except Exception as exc:  # noqa: BLE001 - then this beat's own schedule file
            log.warning("beat: could not read the previous leader's schedule: %r", exc)
            return
        changed = False
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            entry = self.schedule.get(name)
            try:
                sent = float(value)
            except (TypeError, ValueError):
                continue
            if not isinstance(entry, ScheduleEntry) or entry.last_run_at is None:
                continue
            if sent > _timestamp(entry.last_run_at):
                fields: dict[str, Any] = dict(iter(entry))  # type: ignore[arg-type]
                fields["last_run_at"] = datetime.fromtimestamp(sent, tz=UTC)
                self.schedule[name] = entry.__class__(**fields)
                changed = True
        if changed:
            self._heap = None  # rebuilt from the updated entries at the next tick

    def reserve(self, entry: Any) -> Any:
        new_entry: Any = super().reserve(entry)
        try:
            self.leadership.client().hset(
                LAST_RUN_KEY, entry.name, repr(_timestamp(new_entry.last_run_at))
            )
        except Exception as exc:  # noqa: BLE001 - a takeover may then send it early once
            log.warning("beat: could not record when %s was sent: %r", entry.name, exc)
        return new_entry

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._leadership is not None:
                if self._leading:
                    log.info("beat lock %s released", self._leadership.key)
                self._leadership.release()
                self._leadership.close()
