"""A cluster-wide "one runner at a time" lock on Redis (adapter layer).

Used so that only one purge runs across every worker, beat and CLI. Key names
live here, under the ``ingest:v1:`` prefix. The lock expires on its own
(``ttl``), so a crashed holder cannot block the job forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ingest.errors import StorageUnavailable, TooManyRequests

__all__ = ["KEY_PREFIX", "exclusive"]

KEY_PREFIX = "ingest:v1:"


@contextlib.contextmanager
def exclusive(redis_url: str, name: str, *, ttl: float) -> Iterator[None]:
    """Hold ``ingest:v1:lock:<name>`` for the block, or raise TooManyRequests if held."""
    import redis
    from redis.exceptions import LockError, RedisError

    client = redis.Redis.from_url(redis_url)
    lock = client.lock(f"{KEY_PREFIX}lock:{name}", timeout=ttl, blocking=False)
    try:
        acquired = lock.acquire()
    except RedisError as exc:
        client.close()
        raise StorageUnavailable("lock store unreachable", {"error": str(exc)[:200]}) from exc
    if not acquired:
        client.close()
        raise TooManyRequests(f"another {name} is running", {"lock": name})
    try:
        yield
    finally:
        with contextlib.suppress(LockError, RedisError):
            lock.release()
        client.close()
