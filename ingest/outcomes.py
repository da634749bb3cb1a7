"""Verification outcomes, counted where they happen: in the worker, once per attempt
(adapter layer: Redis, like :mod:`ingest.locks`).

Why in the worker: the frontend sees an outcome only when a finishing PUT waits for
it. A finish answered 202 (``Prefer: respond-async``, the CLI's path, or one that
outlived ``INGEST_FINISH_WAIT``), a retry, a reconcile's re-send and a Python caller
that never waits all end in a worker and nowhere else.

Why counters in Redis rather than a ``/metrics`` port on every worker: a redelivered
task (acks late, the visibility timeout, a reconcile re-send under the same task id)
must not count twice, so a record shared by all workers is needed anyway; with the
increment in the same atomic script as that record, "exactly once per attempt" holds
by construction. The totals are then cluster-wide, survive worker restarts and are
read by the frontend's debug listener (:mod:`ingest.http.metrics`), the one scrape
target a deployment already has (workers have no port, and a prefork pool would need
a multiprocess directory per host). Every frontend serves the same totals: aggregate
them with ``max``, not ``sum`` (docs/operations.md, "Metrics and logs").

Keys (under :data:`ingest.locks.KEY_PREFIX`):

* ``outcomes`` -- hash, field ``<outcome>|<code>`` → count: ``committed|`` and
  ``rejected|<CODE>``. Never expires; a Redis flush looks to Prometheus like a
  counter reset, which ``rate()`` handles.
* ``outcome:<task id>`` -- the marker of an attempt already counted; it lives longer
  than any redelivery or re-send of that attempt can come (``marker_ttl``).

An attempt is one task id: ``finish`` and ``retry`` make a new one, redeliveries and
reconcile keep it. So an upload rejected and then retried into a commit counts one
rejection and one commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest.config import redis_tls_options
from ingest.errors import ArgumentInvalid, BlobUploadInvalid, IngestError, StorageUnavailable
from ingest.locks import KEY_PREFIX

__all__ = ["COMMITTED", "REJECTED", "Outcome", "OutcomeCounter", "committed", "rejected"]

COMMITTED = "committed"
REJECTED = "rejected"

TOTALS_KEY = f"{KEY_PREFIX}outcomes"
MARKER_PREFIX = f"{KEY_PREFIX}outcome:"

#: Count each outcome whose attempt has no marker yet, and mark it.
#: KEYS[1] the totals hash, KEYS[2..n] the attempts' markers;
#: ARGV[1] the markers' lifetime in seconds, ARGV[i] the field (``<outcome>|<code>``)
#: of KEYS[i]. Returns how many were counted now.
_COUNT_ONCE = """
local counted = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i], 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
    counted = counted + 1
  end
end
return counted
"""

#: ``BlobUploadInvalid`` reasons that judge a message, not an upload: a late duplicate
#: of an attempt a newer one replaced, or a task naming an upload nobody finished.
_NOT_A_VERDICT = frozenset({"superseded", "not-finished"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one verification attempt (``task_id``) ended: ``committed``, or ``rejected``
    with the error's stable ``code``."""

    task_id: str
    outcome: str
    code: str = ""

    @property
    def field(self) -> str:
        return f"{self.outcome}|{self.code}"


def committed(task_id: str) -> Outcome:
    return Outcome(task_id, COMMITTED)


def rejected(task_id: str, error: BaseException) -> Outcome | None:
    """The outcome of an attempt that failed with ``error``; None when the failure is
    no verdict on the upload (a refused message, a superseded or unfinished attempt),
    or when there is no task id to count it once under."""
    if not task_id or isinstance(error, ArgumentInvalid):
        return None
    if isinstance(error, BlobUploadInvalid) and error.detail.get("reason") in _NOT_A_VERDICT:
        return None
    code = error.code if isinstance(error, IngestError) else "UNKNOWN"
    return Outcome(task_id, REJECTED, code)


class OutcomeCounter:
    """Counts outcomes in Redis, each attempt once, and reads the totals back.

    ``client``: a redis-py client to use (tests pass fakeredis); otherwise one is made
    from ``redis_url`` on first use, with ``timeout`` on connects and reads so that
    neither a task nor a scrape hangs on a Redis that does not answer."""

    def __init__(
        self,
        redis_url: str,
        *,
        marker_ttl: int,
        tls: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
        client: Any = None,
    ) -> None:
        self._url = redis_url
        self._tls = dict(tls) if tls is not None else None
        self._timeout = timeout
        self._client = client
        self._script: Any = None
        self.marker_ttl = max(1, int(marker_ttl))

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            options: dict[str, Any] = {}
            if self._url.startswith("rediss://"):
                options = dict(self._tls if self._tls is not None else redis_tls_options())
            self._client = redis.Redis.from_url(
                self._url,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
                **options,
            )
        if self._script is None:
            self._script = self._client.register_script(_COUNT_ONCE)
        return self._client

    def record(self, *found: Outcome | None) -> int:
        """Count each outcome whose attempt was not counted yet (one round trip for
        all; None, "not an outcome", is skipped); how many were new.
        StorageUnavailable if Redis cannot be reached."""
        outcomes = [o for o in found if o is not None]
        if not outcomes:
            return 0
        from redis.exceptions import RedisError

        try:
            self._redis()
            # One script call for all: one round trip, and atomic per attempt.
            return int(
                self._script(
                    keys=[TOTALS_KEY, *(MARKER_PREFIX + o.task_id for o in outcomes)],
                    args=[self.marker_ttl, *(o.field for o in outcomes)],
                )
            )
        except RedisError as exc:
            raise StorageUnavailable(
                "outcome counters unreachable", {"error": str(exc)[:200]}
            ) from exc

    def totals(self) -> dict[tuple[str, str], int]:
        """(outcome, code) → count, over every worker since the counters began.
        StorageUnavailable if Redis cannot be reached."""
        from redis.exceptions import RedisError

        try:
            raw = self._redis().hgetall(TOTALS_KEY)
        except RedisError as exc:
            raise StorageUnavailable(
                "outcome counters unreachable", {"error": str(exc)[:200]}
            ) from exc
        out: dict[tuple[str, str], int] = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            outcome, sep, code = name.partition("|")
            if sep and outcome in (COMMITTED, REJECTED):
                out[(outcome, code)] = int(value)
        return out
