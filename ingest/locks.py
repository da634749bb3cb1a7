"""Cluster-wide locks on Redis (adapter layer).

* :func:`exclusive` -- "one runner at a time": only one purge (or fsck, gc) runs
  across every worker, beat and CLI; a second is refused.
* :class:`Leadership` -- one leader among standing processes: the beat that may
  schedule (``workers.beat``); the others wait and take over when it goes.

Key names live here, under the ``ingest:v1:`` prefix. Every lock expires on its own
(``ttl``), so a crashed holder cannot block the job forever; a holder that may
outlast the ttl renews it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ingest.config import redis_tls_options
from ingest.errors import StorageUnavailable, TooManyRequests

__all__ = ["KEY_PREFIX", "Leadership", "exclusive"]

KEY_PREFIX = "ingest:v1:"


def _client(redis_url: str, tls: Mapping[str, Any] | None, **options: Any) -> Any:
    import redis

    # ``tls``: Settings.redis_ssl_options(), used for a rediss:// URL.
    if redis_url.startswith("rediss://"):
        options.update(tls or redis_tls_options())
    return redis.Redis.from_url(redis_url, **options)


@contextlib.contextmanager
def exclusive(
    redis_url: str, name: str, *, ttl: float, tls: Mapping[str, Any] | None = None
) -> Iterator[Callable[[], None]]:
    """Hold ``ingest:v1:lock:<name>`` for the block, or raise TooManyRequests if held.

    The block receives ``renew()``: it resets the expiry to ``ttl`` from now, and
    raises TooManyRequests if the lock expired meanwhile (another runner may hold it)
    or StorageUnavailable if Redis cannot be reached."""
    from redis.exceptions import LockError, RedisError

    client = _client(redis_url, tls)
    lock = client.lock(f"{KEY_PREFIX}lock:{name}", timeout=ttl, blocking=False)
    try:
        acquired = lock.acquire()
    except RedisError as exc:
        client.close()
        raise StorageUnavailable("lock store unreachable", {"error": str(exc)[:200]}) from exc
    if not acquired:
        client.close()
        raise TooManyRequests(f"another {name} is running", {"lock": name})

    def renew() -> None:
        try:
            lock.reacquire()
        except LockError as exc:  # LockNotOwnedError: it expired, maybe re-taken
            raise TooManyRequests(f"the {name} lock was lost", {"lock": name}) from exc
        except RedisError as exc:
            raise StorageUnavailable("lock store unreachable", {"error": str(exc)[:200]}) from exc

    try:
        yield renew
    finally:
        with contextlib.suppress(LockError, RedisError):
            lock.release()
        client.close()


#: Take the lock if it is free, or extend it if this holder has it.
#: KEYS[1] the lock; ARGV[1] the holder's token, ARGV[2] the lifetime in ms.
#: Returns 1 if the holder holds it now, 0 if another does.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: Delete the lock if this holder has it. KEYS[1] the lock; ARGV[1] the token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leadership:
    """Leadership of ``ingest:v1:lock:<name>`` among processes that each could lead.

    Every candidate calls :meth:`hold` regularly (every third of ``ttl``): it takes
    the lock if free and extends it if already this candidate's; the others get
    False and keep waiting. A leader that dies stops extending, and the lock passes
    on within ``ttl``; :meth:`release` hands it over at once.

    :meth:`is_leader` is what a leader acts on: true only until ``ttl`` (less a
    margin) after the *start* of its last successful :meth:`hold`. Redis set the
    expiry after that moment, so the lock is still this leader's whenever it says
    so, even when Redis stops answering: two leaders never act at once. Only
    durations on each host's monotonic clock are compared, never wall clocks.

    ``client``: a redis-py client to use (tests pass fakeredis); otherwise one is
    made from ``redis_url`` with ``timeout`` on connects and reads.
    """

    def __init__(
        self,
        redis_url: str,
        name: str,
        *,
        ttl: float,
        tls: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
        client: Any = None,
    ) -> None:
        self.key = f"{KEY_PREFIX}lock:{name}"
        self.ttl = ttl
        # Who holds it, readable in Redis (and in the followers' logs).
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._url = redis_url
        self._tls = tls
        self._timeout = timeout
        self._redis = client
        self._scripts: tuple[Any, Any] | None = None
        self._valid_until = -float("inf")

    def _connect(self) -> tuple[Any, Any, Any]:
        if self._redis is None:
            self._redis = _client(
                self._url,
                self._tls,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
            )
        if self._scripts is None:
            self._scripts = (
                self._redis.register_script(_HOLD),
                self._redis.register_script(_RELEASE),
            )
        return self._redis, *self._scripts

    def client(self) -> Any:
        """The Redis client of the lock, for state that goes with the leadership."""
        return self._connect()[0]

    def hold(self) -> bool:
        """Take or extend the lock: True if this candidate leads now. Raises
        StorageUnavailable if Redis cannot be reached (:meth:`is_leader` then stays
        true only as long as the last hold guarantees)."""
        from redis.exceptions import RedisError

        started = time.monotonic()
        try:
            _, hold, _ = self._connect()
            held = bool(hold(keys=[self.key], args=[self.token, max(1, int(self.ttl * 1000))]))
        except RedisError as exc:
            raise StorageUnavailable("lock store unreachable", {"error": str(exc)[:200]}) from exc
        # A margin for the request's own time on the wire and clock rate differences.
        self._valid_until = started + self.ttl * 0.9 if held else -float("inf")
        return held

    def is_leader(self) -> bool:
        """Whether this candidate may act as the leader right now."""
        return time.monotonic() < self._valid_until

    def holder(self) -> str | None:
        """Who holds the lock (its token: host, pid and a random part), if anyone;
        None also when Redis cannot be reached."""
        from redis.exceptions import RedisError

        try:
            redis_client, _, _ = self._connect()
            value = redis_client.get(self.key)
        except RedisError:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def release(self) -> None:
        """Give the lock up if this candidate holds it (best effort)."""
        from redis.exceptions import RedisError

        self._valid_until = -float("inf")
        with contextlib.suppress(RedisError):
            _, _, release = self._connect()
            release(keys=[self.key], args=[self.token])

    def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
