"""A cluster-wide "one runner at a time" lock on Redis (adapter layer).

Used so that only one purge (or fsck) runs across every worker, beat and CLI. Key
names live here, under the ``ingest:v1:`` prefix. The lock expires on its own
(``ttl``), so a crashed holder cannot block the job forever; a job that may outlast
the ttl calls the ``renew`` function the block receives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ingest.config import redis_tls_options
from ingest.errors import StorageUnavailable, TooManyRequests

__all__ = ["KEY_PREFIX", "exclusive"]

KEY_PREFIX = "ingest:v1:"


@contextlib.contextmanager
def exclusive(
    redis_url: str, name: str, *, ttl: float, tls: Mapping[str, Any] | None = None
) -> Iterator[Callable[[], None]]:
    """Hold ``ingest:v1:lock:<name>`` for the block, or raise TooManyRequests if held.

    The block receives ``renew()``: it resets the expiry to ``ttl`` from now, and
    raises TooManyRequests if the lock expired meanwhile (another runner may hold it)
    or StorageUnavailable if Redis cannot be reached."""
    import redis
    from redis.exceptions import LockError, RedisError

    # ``tls``: Settings.redis_ssl_options(), used for a rediss:// URL.
    options = dict(tls or redis_tls_options()) if redis_url.startswith("rediss://") else {}
    client = redis.Redis.from_url(redis_url, **options)
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
