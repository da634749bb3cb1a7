"""The one seam between the library/frontends and Celery.

Frontends enqueue work by task *name* (``send_task``), so they never import the
worker code, and read outcomes back through :class:`TaskQueue`. This module is
the only place in ``ingest`` that touches Celery, and it imports Celery lazily,
so ``import ingest`` stays free of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ingest.batching import Batcher
from ingest.config import redis_tls_options
from ingest.digests import Digest
from ingest.errors import IngestError, StorageUnavailable, Unknown, VerificationTimeout, from_dict

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "QUEUE_MAINTENANCE",
    "QUEUE_PREHASH",
    "QUEUE_VERIFY",
    "TASK_FSCK",
    "TASK_GC",
    "TASK_NOTIFY",
    "TASK_NOTIFY_SWEEP",
    "TASK_PREHASH",
    "TASK_PURGE",
    "TASK_RECONCILE",
    "TASK_VERIFY",
    "TASK_VERIFY_BATCH",
    "WORKER_QUEUES",
    "CeleryTaskQueue",
    "TaskInfo",
    "TaskQueue",
    "client_config",
]

TASK_VERIFY = "ingest.verify_upload"
#: Several small uploads' verifications in one task (see :mod:`ingest.batching`).
TASK_VERIFY_BATCH = "ingest.verify_batch"
TASK_PREHASH = "ingest.prehash_upload"
TASK_RECONCILE = "ingest.reconcile"
TASK_PURGE = "ingest.purge_uploads"
#: Re-hash a bounded share of the stored blobs (see :mod:`ingest.fsck`).
TASK_FSCK = "ingest.fsck"
#: Garbage collection: mark and sweep unreferenced blobs (see :mod:`ingest.gc`).
TASK_GC = "ingest.gc"
#: Deliver one endpoint's waiting events, in order (see :mod:`ingest.notify`).
TASK_NOTIFY = "ingest.notify_deliver"
#: Kick the delivery of every endpoint with events and no live run (beat).
TASK_NOTIFY_SWEEP = "ingest.notify_sweep"
QUEUE_VERIFY = "verify"
#: Its own queue, so prehashes (which hold a worker slot while an upload streams)
#: can get dedicated workers, and never sit in line behind verifications.
QUEUE_PREHASH = "prehash"
#: Housekeeping runs on its own queue so it never waits behind large verifications.
QUEUE_MAINTENANCE = "maintenance"
#: What a general-purpose worker consumes (``celery worker -Q``).
WORKER_QUEUES = ",".join((QUEUE_VERIFY, QUEUE_PREHASH, QUEUE_MAINTENANCE))
#: Custom task state reported while a verification streams the staged bytes.
STATE_PROGRESS = "PROGRESS"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What the result backend knows of a task. ``state`` is Celery's state name
    (PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE)."""

    task_id: str
    state: str
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TaskQueue(Protocol):
    """Enqueue verifications and observe their outcome."""

    def enqueue_verify(
        self,
        upload_id: str,
        digest: Digest,
        size: int | None,
        *,
        task_id: str,
        staged_size: int,
        repository: str | None = None,
    ) -> None:
        """Send ``ingest.verify_upload(upload_id, digest, size)`` under ``task_id``.

        ``size`` is the size the client claimed (None if it did not); ``staged_size``
        the size ``finish`` froze, from which the worker sets the task's time limit;
        ``repository`` is informational (logs, Flower). The upload's own record is
        authoritative for all three. Raises StorageUnavailable if the broker cannot
        be reached."""

    def enqueue_prehash(self, upload_id: str) -> None:
        """Send ``ingest.prehash_upload(upload_id)``: hash the upload while it grows
        (see :mod:`ingest.prehash`). Best effort; raises StorageUnavailable if the
        broker cannot be reached."""

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """The committed result; raise the recorded IngestError on failure, or
        VerificationTimeout if ``timeout`` seconds pass first."""

    def info(self, task_id: str) -> TaskInfo:
        """The task's current state, progress and outcome, without waiting."""

    async def wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        """:meth:`wait` for event loops: must not block the loop or hold a thread."""

    def ping_broker(self, timeout: float) -> None:
        """Connect to the broker and have it answer (a Redis ``PING``) within about
        ``timeout`` seconds; raise StorageUnavailable if it does not. Blocks."""

    def ping_workers(self, timeout: float, limit: int | None = None) -> list[str]:
        """The names of the workers that answered a control ping within ``timeout``
        seconds (returning early once ``limit`` answered); may be empty. Raises
        StorageUnavailable if the broker cannot be reached. Blocks."""


def client_config(
    broker_url: str,
    result_backend: str,
    visibility_timeout: int,
    redis_ssl: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Celery settings a *sender* needs; the worker's full set extends these.

    ``redis_ssl``: the TLS options (:meth:`Settings.redis_ssl_options
    <ingest.config.Settings.redis_ssl_options>`) of ``rediss://`` URLs; without them a
    ``rediss://`` connection still verifies the server against the system's CAs.
    """
    tls = dict(redis_tls_options() if redis_ssl is None else redis_ssl)
    conf = {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": QUEUE_VERIFY,
        "task_routes": {
            TASK_VERIFY: {"queue": QUEUE_VERIFY},
            TASK_VERIFY_BATCH: {"queue": QUEUE_VERIFY},
            TASK_PREHASH: {"queue": QUEUE_PREHASH},
            TASK_RECONCILE: {"queue": QUEUE_MAINTENANCE},
            TASK_PURGE: {"queue": QUEUE_MAINTENANCE},
            TASK_FSCK: {"queue": QUEUE_MAINTENANCE},
            TASK_GC: {"queue": QUEUE_MAINTENANCE},
        },
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # Look for messages of dead workers every 10 s (kombu's default scans
            # every 100 s), so recovery takes visibility_timeout + 10 s at most.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_send_sent_event": True,
        "result_extended": True,
    }
    # Celery's Redis backend refuses rediss:// without these; kombu and Flower need them.
    if broker_url.startswith("rediss://"):
        conf["broker_use_ssl"] = tls
    if result_backend.startswith("rediss://"):
        conf["redis_backend_use_ssl"] = tls
    return conf


#: How a *sender* (frontend, CLI) retries a broker or result backend that does not
#: answer: a few quick tries, then UNAVAILABLE (503, exit 4). Celery's own default
#: (20 reconnections a second apart, in ``send_task``'s result subscription) held a
#: request for about 20 s and then raised a bare RuntimeError (a 500).
SENDER_RETRY_POLICY: dict[str, float] = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
#: Seconds a sender waits for a TCP connection to the broker or result backend
#: (Celery and kombu wait for the operating system's, about two minutes).
SENDER_CONNECT_TIMEOUT = 5.0


def _sender_bounds(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Settings that make a sender-only app fail fast when Redis is down. Not for
    workers: a worker storing a result rides out a Redis restart instead."""
    broker_options = dict(conf.get("broker_transport_options") or {})
    backend_options = dict(conf.get("result_backend_transport_options") or {})
    broker_options.setdefault("socket_connect_timeout", SENDER_CONNECT_TIMEOUT)
    backend_options["retry_policy"] = dict(SENDER_RETRY_POLICY)
    return {
        "broker_transport_options": broker_options,
        "result_backend_transport_options": backend_options,
        "broker_connection_timeout": SENDER_CONNECT_TIMEOUT,
        "redis_socket_connect_timeout": SENDER_CONNECT_TIMEOUT,
    }


@functools.cache
def _connection_faults() -> tuple[type[BaseException], ...]:
    """What a send raises when the broker or result backend cannot be reached."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (OperationalError, RedisConnectionError, RedisTimeoutError, OSError)


@contextlib.contextmanager
def _broker_faults(message: str = "the task broker is unreachable") -> Iterator[None]:
    """Turn a send's or a wait's connection failure into StorageUnavailable (503,
    exit 4). Celery's result consumer gives up reconnecting with a bare RuntimeError
    whose cause is the connection error: that one is mapped too, nothing else."""
    faults = _connection_faults()
    try:
        yield
    except faults as exc:
        raise StorageUnavailable(message, {"error": str(exc)[:300]}) from exc
    except RuntimeError as exc:
        if not isinstance(exc.__cause__, faults):
            raise
        raise StorageUnavailable(message, {"error": str(exc.__cause__)[:300]}) from exc


def _error_from_result(value: object, task_id: str) -> IngestError:
    if isinstance(value, IngestError):
        return value
    if isinstance(value, dict) and "code" in value:
        return from_dict(value)
    return Unknown(
        "verification failed unexpectedly",
        {"task_id": task_id, "error": type(value).__name__, "message": str(value)[:500]},
    )


_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class _RedisResultWaiter:
    """Waits for many task results on one Redis pub/sub connection per event loop.

    Celery's Redis backend SETs ``celery-task-meta-<id>`` and PUBLISHes the same
    JSON on a channel of that name. A waiter subscribes, then GETs the key (the
    result may predate the subscription), then awaits the message: no polling,
    no thread per waiting request.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self._url = url
        self._options = dict(options or {})  # TLS keyword arguments, for rediss://
        self._redis: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        async with self._lock:
            if self._reader is not None and not self._reader.done():
                return
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self._url, **self._options)
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            # get_message refuses to run with no subscription at all.
            await self._pubsub.subscribe("ingest:v1:results-keepalive")
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._pubsub.get_message(timeout=30.0)
                if msg is None or msg.get("type") != "message":
                    continue
                channel = msg["channel"].decode()
                try:
                    meta = json.loads(msg["data"])
                except ValueError:
                    continue
                if meta.get("status") in _READY:
                    for fut in self._waiters.get(channel, ()):
                        if not fut.done():
                            fut.set_result(meta)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - wake every waiter; the next wait reconnects
            err = StorageUnavailable("result backend connection lost", {"error": str(exc)[:200]})
            for futs in self._waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(err)

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        key = f"celery-task-meta-{task_id}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        first = key not in self._waiters
        self._waiters.setdefault(key, set()).add(fut)
        try:
            await self._ensure()
            if first:
                await self._pubsub.subscribe(key)
            raw = await self._redis.get(key)
            if raw is not None:
                meta = json.loads(raw)
                if meta.get("status") in _READY:
                    return dict(meta)
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]
                    if self._pubsub is not None:
                        with contextlib.suppress(Exception):
                            await self._pubsub.unsubscribe(key)


class _DirectPublisher:
    """Puts verification messages straight onto the broker's Redis list.

    ``send_task`` spends most of a small verification's frontend CPU on kombu's
    generic publish path (a producer from the pool, a binding lookup round trip, a
    pipeline object per message) and on a ``task-sent`` event; measured here it was
    about 5x the cost of the message itself (``docs/benchmarks.md``). This builds the
    same message -- Celery's own protocol-2 headers, properties and body from
    ``app.amqp.as_task_v2``, in the envelope kombu's Redis transport uses -- and
    sends it with one LPUSH to the queue's list, which is where that transport puts
    a message routed by queue name through the default exchange (how send_task
    routes ours). ``tests/integration/test_direct_publish.py`` checks the
    two messages against each other on a real Redis.

    What is lost: the ``task-sent`` event (Flower shows a verification from the
    worker's ``task-received`` on, with the same name, arguments and outcome).
    Used only for a ``redis://``/``rediss://`` broker without a key prefix;
    anything else goes through ``send_task``.
    """

    #: Redis errors retried at once: as send_task's retry policy (3 tries).
    ATTEMPTS = 3

    def __init__(self, app: Celery, url: str, options: Mapping[str, Any]) -> None:
        import redis

        self._app = app
        # Bounded: a broker that does not answer fails the finish with 503, fast.
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=10, **options
        )

    @classmethod
    def for_app(cls, app: Celery) -> _DirectPublisher | None:
        url = app.conf.broker_url
        transport = app.conf.broker_transport_options or {}
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
            return None
        if transport.get("global_keyprefix") or ";" in url:  # prefixed keys, failover lists
            return None
        options: dict[str, Any] = {}
        if url.startswith("rediss://"):
            options = dict(app.conf.broker_use_ssl or {})
        return cls(app, url, options)

    def publish(
        self,
        queue: str,
        name: str,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        argsrepr: str,
        kwargsrepr: str,
    ) -> None:
        import base64
        import time
        import uuid

        from kombu.serialization import dumps
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        message = self._app.amqp.as_task_v2(
            task_id,
            name,
            args=args,
            kwargs=kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            reply_to=self._app.thread_oid,
            ignore_result=None,  # type: ignore[arg-type]  # what send_task sends
        )
        content_type, encoding, body = dumps(message.body, serializer="json")
        raw = body.encode(encoding) if isinstance(body, str) else body
        envelope = {
            "body": base64.b64encode(raw).decode("ascii"),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": {
                **message.properties,
                # send_task's publish options also land here (kombu passes them on).
                "argsrepr": argsrepr,
                "kwargsrepr": kwargsrepr,
                "delivery_mode": 2,
                # Routed by queue name through the default exchange, as send_task does.
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        data = json.dumps(envelope)
        for attempt in range(self.ATTEMPTS):
            try:
                self._client.lpush(queue, data)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt == self.ATTEMPTS - 1:
                    raise StorageUnavailable(
                        "the task broker is unreachable", {"error": str(exc)[:300]}
                    ) from exc
                time.sleep(0.1 + 0.5 * attempt)


class CeleryTaskQueue:
    """:class:`TaskQueue` over a Celery app (its own, or one passed in)."""

    def __init__(
        self,
        app: Celery,
        *,
        batch_window: float = 0.0,
        batch_max: int = 1,
        batch_max_size: int = 0,
    ) -> None:
        """``batch_*``: verifications of uploads up to ``batch_max_size`` bytes that
        finish within ``batch_window`` seconds of each other go out together, at most
        ``batch_max`` per task (:mod:`ingest.batching`); the defaults send each alone."""
        self.app = app
        self._waiters: dict[int, _RedisResultWaiter] = {}
        self._direct = _DirectPublisher.for_app(app)
        self._batch_max_size = batch_max_size
        # Outcomes being waited for right now: other finishes under way.
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._batcher: Batcher[dict[str, Any]] = Batcher(
            self._send_verify,
            self._send_batch,
            window=batch_window,
            max_entries=batch_max,
            company=lambda: self._waiting > 0,
        )

    @contextlib.contextmanager
    def _awaited(self) -> Iterator[None]:
        with self._waiting_lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    @classmethod
    def from_urls(
        cls,
        broker_url: str,
        result_backend: str,
        visibility_timeout: int = 3600,
        redis_ssl: Mapping[str, Any] | None = None,
        **batching: Any,
    ) -> CeleryTaskQueue:
        from celery import Celery

        app = Celery("ingest-client", set_as_current=False)
        app.conf.update(client_config(broker_url, result_backend, visibility_timeout, redis_ssl))
        app.conf.update(_sender_bounds(app.conf))
        return cls(app, **batching)

    def enqueue_verify(
        self,
        upload_id: str,
        digest: Digest,
        size: int | None,
        *,
        task_id: str,
        staged_size: int,
        repository: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "upload_id": upload_id,
            "digest": str(digest),
            "size": size,
            "staged_size": staged_size,
            "task_id": task_id,
            "repository": repository,
        }
        if staged_size > self._batch_max_size:
            self._send_verify(entry)  # large: a task of its own, with progress
        else:
            self._batcher.submit(entry)

    def _send_verify(self, entry: dict[str, Any]) -> None:
        upload_id, digest, size = entry["upload_id"], entry["digest"], entry["size"]
        kwargs: dict[str, Any] = {"staged_size": entry["staged_size"]}
        if entry["repository"]:
            kwargs["repository"] = entry["repository"]
        self._send(
            TASK_VERIFY,
            args=(upload_id, digest, size),
            kwargs=kwargs,
            task_id=entry["task_id"],
            # What Flower and `celery inspect` show instead of a raw tuple.
            argsrepr=f"upload={upload_id} digest={digest} size={size}",
            kwargsrepr=f"staged_size={entry['staged_size']} repository={entry['repository']}",
        )

    def _send_batch(self, entries: Sequence[dict[str, Any]]) -> None:
        import uuid

        self._send(
            TASK_VERIFY_BATCH,
            args=(list(entries),),
            kwargs={},
            # The batch's own id: each upload's outcome is stored under its entry's.
            task_id=f"batch-{uuid.uuid4()}",
            argsrepr="; ".join(f"upload={e['upload_id']} digest={e['digest']}" for e in entries),
            kwargsrepr="",
        )

    def _send(self, name: str, **options: Any) -> None:
        if self._direct is not None:
            self._direct.publish(
                QUEUE_VERIFY,
                name,
                options["task_id"],
                tuple(options["args"]),
                options["kwargs"],
                options["argsrepr"],
                options["kwargsrepr"],
            )
            return
        with _broker_faults():
            self.app.send_task(
                name,
                queue=QUEUE_VERIFY,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
                **options,
            )

    def enqueue_prehash(self, upload_id: str) -> None:
        with _broker_faults():
            self.app.send_task(
                TASK_PREHASH,
                args=(upload_id,),
                argsrepr=f"upload={upload_id}",
                queue=QUEUE_PREHASH,
                retry=False,
            )

    def enqueue_notify(self, endpoint: str) -> None:
        """Send ``ingest.notify_deliver(endpoint)`` (:mod:`ingest.notify`): a kick,
        never retried here (the beat sweep kicks again). StorageUnavailable if the
        broker cannot be reached."""
        with _broker_faults():
            self.app.send_task(
                TASK_NOTIFY,
                args=(endpoint,),
                argsrepr=f"endpoint={endpoint}",
                queue=QUEUE_MAINTENANCE,
                retry=False,
            )

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        with self._awaited():
            return self._wait(task_id, timeout)

    async def wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        with self._awaited():
            return await self._wait_async(task_id, timeout)

    def _wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        from celery.exceptions import TimeoutError as CeleryTimeout

        res = self.app.AsyncResult(task_id)
        try:
            with _broker_faults("result backend unreachable"):
                # The Redis backend waits on pub/sub: no polling loop per waiter.
                value = res.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise VerificationTimeout(
                f"verification not finished after {timeout:g} s",
                {"task_id": task_id, "state": res.state},
            ) from None
        if res.state == "SUCCESS" and isinstance(value, dict):
            return value
        raise _error_from_result(value, task_id)

    async def _wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        backend_url = str(self.app.conf.result_backend or "")
        if not backend_url.startswith(("redis://", "rediss://", "unix://")):
            # Other backends have no push channel: block a worker thread instead.
            return await asyncio.to_thread(self._wait, task_id, timeout)
        loop_id = id(asyncio.get_running_loop())
        waiter = self._waiters.get(loop_id)
        if waiter is None:
            tls = (
                (self.app.conf.get("redis_backend_use_ssl") or redis_tls_options())
                if backend_url.startswith("rediss://")
                else None
            )
            waiter = self._waiters[loop_id] = _RedisResultWaiter(backend_url, tls)
        from redis.exceptions import RedisError

        try:
            meta = await waiter.wait(task_id, timeout)
        except TimeoutError:
            raise VerificationTimeout(
                f"verification not finished after {timeout:g} s", {"task_id": task_id}
            ) from None
        except (OSError, RedisError) as exc:
            raise StorageUnavailable(
                "result backend unreachable", {"error": str(exc)[:300]}
            ) from exc
        if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
            return dict(meta["result"])
        value: object = meta.get("result")
        if isinstance(value, dict) and "exc_type" in value:
            value = self.app.backend.exception_to_python(value)
        raise _error_from_result(value, task_id)

    # -- health (the debug listener's /health) ---------------------------------------

    def _probe_connection(self, timeout: float) -> Any:
        """A fresh broker connection (not the pool's) whose connect and reads give up
        after ``timeout``: a health check must answer even when the broker does not."""
        url = str(self.app.conf.broker_url or "")
        options = dict(self.app.conf.broker_transport_options or {})
        if url.startswith(("redis://", "rediss://", "unix://")):
            options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        return self.app.connection_for_write(connect_timeout=timeout, transport_options=options)

    def ping_broker(self, timeout: float) -> None:
        try:
            with self._probe_connection(timeout) as conn:
                # One attempt, no retry loop: the caller measures and reports.
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
                client = getattr(conn.default_channel, "client", None)
                if client is not None and hasattr(client, "ping"):
                    client.ping()  # Redis: a PING round trip (AMQP: the handshake was it)
        except Exception as exc:  # kombu, redis-py, socket errors: all mean "down"
            raise StorageUnavailable(
                "the task broker does not answer",
                {"error": f"{type(exc).__name__}: {str(exc)[:300]}"},
            ) from exc

    def ping_workers(self, timeout: float, limit: int | None = None) -> list[str]:
        try:
            with self._probe_connection(timeout) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
                replies = self.app.control.ping(timeout=timeout, limit=limit, connection=conn)
        except Exception as exc:  # any failure to reach the broker
            raise StorageUnavailable(
                "the task broker does not answer",
                {"error": f"{type(exc).__name__}: {str(exc)[:300]}"},
            ) from exc
        names: list[str] = []
        for reply in replies or ():
            if isinstance(reply, dict):
                names += [str(name) for name, answer in reply.items() if answer]
        return sorted(names)

    def info(self, task_id: str) -> TaskInfo:
        res = self.app.AsyncResult(task_id)
        state = res.state
        meta = res.info
        if state == STATE_PROGRESS and isinstance(meta, dict):
            return TaskInfo(task_id, state, progress=meta)
        if state == "SUCCESS" and isinstance(meta, dict):
            return TaskInfo(task_id, state, result=meta)
        if state == "FAILURE":
            return TaskInfo(task_id, state, error=_error_from_result(meta, task_id).to_dict())
        return TaskInfo(task_id, state)
