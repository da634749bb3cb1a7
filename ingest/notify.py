"""Registry events for webhooks: what happened, kept in order per endpoint, delivered later.

An event says that a blob was committed (``push``, emitted by the worker that
committed it), a manifest was stored (``push``), something was read (``pull``, only
with ``INGEST_NOTIFY_PULLS``), deleted (``delete``: manifests, tags, blob links) or
mounted from another repository (``mount``). Its JSON is distribution's event
(``id``, ``timestamp``, ``action``, ``target``, ``request``, ``actor``, ``source``),
and endpoints receive envelopes ``{"events": [...]}`` of type :data:`MEDIA_TYPE`.

**Where events wait.** Each endpoint has an *outbox* in storage
(``/notifications/<endpoint>/outbox/<key>``, :mod:`ingest.paths`): emitting an event
is one small write per endpoint that wants it, from whichever process saw it happen.
Keys start with the time in nanoseconds, so a listing is oldest first. Nothing is
sent on the request path: the emitter asks for a delivery run (a "kick", one task
message) only when no worker is delivering to that endpoint already.

**How they leave.** One delivery run per endpoint at a time (the caller holds a
cluster-wide lock, see ``workers/notify.py``) takes the oldest events in batches,
POSTs each batch, and deletes it once the endpoint answered 2xx. The first failure
stops the run: the events stay where they are, the run records the failure and is
scheduled again after an exponential backoff (:meth:`Endpoint.delay`). So a receiver
sees events in order, and an endpoint that is down gets everything once it is back.
Delivery is at least once: a crash between the answer and the delete resends a batch.
After ``max_attempts`` failed attempts in a row the run gives the oldest batch up
(counted as ``expired``); an outbox over ``max_events`` loses its oldest events
(counted as ``dropped``), so a dead endpoint cannot fill the storage.

Ordering across hosts relies on their clocks agreeing within a few milliseconds (NTP),
as the leases already do: events that happen in sequence (a blob's commit, then the
manifest that names it) are seconds or at least a round trip apart.

This module is the core: no HTTP client, no Celery. The sender is a callable given
to :func:`drain`, the kick a callable given to :class:`Notifier`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ingest import paths
from ingest.config import ConfigError
from ingest.leases import read_lease
from ingest.storage.base import PathNotFound, StorageDriver
from ingest.units import parse_duration

__all__ = [
    "ACTIONS",
    "BLOB_MEDIA_TYPE",
    "MEDIA_TYPE",
    "DeliveryFailed",
    "DeliveryState",
    "DrainResult",
    "Endpoint",
    "EndpointStats",
    "Notifier",
    "Origin",
    "Outbox",
    "Sender",
    "delivery_live",
    "drain",
    "envelope",
    "load_endpoints",
    "new_event",
    "parse_endpoints",
    "stats",
]

log = logging.getLogger(__name__)

#: The envelope's media type (distribution 2.x; receivers of distribution accept it).
MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
ACTIONS = ("push", "pull", "delete", "mount")
#: What distribution reports as a plain blob's media type.
BLOB_MEDIA_TYPE = "application/octet-stream"
#: Longest text taken from a request header into an event.
_MAX_FIELD = 512
#: Largest endpoints file read.
_MAX_CONFIG = 1 << 20

# -- endpoints ------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Visible ASCII, space and tab: no CR, LF or NUL (header injection), nothing to re-encode.
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e]*")
#: Headers the sender sets itself.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection"}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver of events and how to deliver to it.

    ``delay(n)``: after ``n`` failed attempts in a row, the next comes ``backoff``
    seconds later while ``n <= threshold``, then doubling each time up to
    ``max_backoff``. ``max_attempts`` is the retry budget of the oldest batch.
    """

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    threshold: int = 1
    backoff: float = 1.0
    max_backoff: float = 300.0
    max_attempts: int = 30
    max_events: int = 10_000
    batch: int = 10
    ignore_media_types: frozenset[str] = frozenset()
    ignore_actions: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        # Header values are credentials: never in a log line, a traceback or Flower.
        shown = ", ".join(f"{k}: ***" for k, _ in self.headers)
        return f"Endpoint(name={self.name!r}, url={self.url!r}, headers=[{shown}])"

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones in a row."""
        doublings = max(0, failures - self.threshold)
        if doublings > 60:  # 2**60 * any backoff is past any cap
            return self.max_backoff
        return float(min(self.max_backoff, self.backoff * 2**doublings))

    def wants(self, action: str, media_type: str | None) -> bool:
        """Whether an event of ``action`` on a target of ``media_type`` goes here."""
        if action in self.ignore_actions:
            return False
        return not (media_type and media_type in self.ignore_media_types)


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"INGEST_NOTIFY_ENDPOINTS: {where}: {message}", "notify_endpoints")


def _duration(where: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise _fail(where, "must be a duration (seconds, or text such as '500ms')")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
        else:
            raise ValueError
    except ValueError:
        raise _fail(where, "must be a duration (seconds, or text such as '500ms')") from None
    if not (math.isfinite(seconds) and low < seconds <= high):
        raise _fail(where, f"must be more than {low:g} s and at most {high:g} s")
    return seconds


def _count(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"must be an integer from {low} to {high}")
    return value


def _strings(where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, "must be a list of non-empty strings")
    return list(value)


def _url(where: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise _fail(where, "must be an http(s) URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(where, "must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(where, "must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _fail(where, "must not carry credentials: put them in `headers`")
    if parts.fragment or any(c in value for c in "\r\n\t "):
        raise _fail(where, "must have no fragment and no whitespace")
    return value


def _headers(where: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _fail(where, "must be an object of header names to a value or list of values")
    out: list[tuple[str, str]] = []
    for name, values in value.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name) or len(name) > 256:
            raise _fail(where, f"invalid header name {str(name)[:40]!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise _fail(where, f"{name} is set by the sender")
        listed = values if isinstance(values, list) else [values]
        for v in listed:
            # The value is a secret: the message names the header, never the value.
            if not isinstance(v, str) or not _HEADER_VALUE_RE.fullmatch(v) or len(v) > 8192:
                raise _fail(where, f"header {name}: values must be printable ASCII text")
            out.append((name, v))
    return tuple(out)


_KEYS = frozenset(
    {
        "name",
        "url",
        "headers",
        "timeout",
        "threshold",
        "backoff",
        "max_backoff",
        "max_attempts",
        "max_events",
        "batch",
        "ignore",
        "disabled",
    }
)


def _endpoint(where: str, raw: object) -> Endpoint | None:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(map(str, unknown))[:200]}")
    name = raw.get("name")
    try:
        paths.validate_endpoint_name(name)  # type: ignore[arg-type]
    except ValueError:
        raise _fail(f"{where}.name", "must match [a-z0-9][a-z0-9_-]{0,63}") from None
    assert isinstance(name, str)
    where = f"endpoint {name!r}"
    if "url" not in raw:
        raise _fail(where, "url is required")
    disabled = raw.get("disabled", False)
    if not isinstance(disabled, bool):
        raise _fail(f"{where}.disabled", "must be true or false")
    d = Endpoint(name, "")
    kw: dict[str, Any] = {"url": _url(f"{where}.url", raw["url"])}
    if "headers" in raw:
        kw["headers"] = _headers(f"{where}.headers", raw["headers"])
    for key, low, high in (("timeout", 0.0, 60.0), ("backoff", 0.0, 3600.0)):
        if key in raw:
            kw[key] = _duration(f"{where}.{key}", raw[key], low, high)
    if "max_backoff" in raw:
        # Below the broker's visibility timeout: a delayed retry held longer is redelivered.
        kw["max_backoff"] = _duration(f"{where}.max_backoff", raw["max_backoff"], 0.0, 3600.0)
    for key, lo, hi in (
        ("threshold", 1, 1000),
        ("max_attempts", 1, 100_000),
        ("max_events", 1, 1_000_000),
        ("batch", 1, 100),
    ):
        if key in raw:
            kw[key] = _count(f"{where}.{key}", raw[key], lo, hi)
    ignore = raw.get("ignore", {})
    if not isinstance(ignore, dict) or set(ignore) - {"mediatypes", "actions"}:
        raise _fail(f"{where}.ignore", "must be an object with `mediatypes` and/or `actions`")
    if "mediatypes" in ignore:
        kw["ignore_media_types"] = frozenset(
            _strings(f"{where}.ignore.mediatypes", ignore["mediatypes"])
        )
    if "actions" in ignore:
        actions = _strings(f"{where}.ignore.actions", ignore["actions"])
        bad = sorted(set(actions) - set(ACTIONS))
        if bad:
            raise _fail(f"{where}.ignore.actions", f"unknown action(s) {', '.join(bad)[:80]}")
        kw["ignore_actions"] = frozenset(actions)
    endpoint = replace(d, **kw)
    if endpoint.max_backoff < endpoint.backoff:
        raise _fail(f"{where}.max_backoff", "must not be below backoff")
    return None if disabled else endpoint


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """The endpoints of a JSON document: a list of endpoint objects, or
    ``{"endpoints": [...]}``. Strict: unknown fields, wrong types, values out of range,
    unsafe URLs or headers and duplicate names are a ConfigError naming the field
    (never a header's value). Disabled endpoints are left out."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail("document", f"not valid JSON ({str(exc)[:120]})") from None
    if isinstance(doc, dict):
        if set(doc) != {"endpoints"}:
            raise _fail("document", "an object must have exactly one field, `endpoints`")
        doc = doc["endpoints"]
    if not isinstance(doc, list):
        raise _fail("document", 'must be a list of endpoints or {"endpoints": [...]}')
    out: list[Endpoint] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in seen:
            raise _fail(f"endpoints[{i}].name", f"duplicate name {name!r}")
        endpoint = _endpoint(f"endpoints[{i}]", raw)
        if isinstance(name, str):
            seen.add(name)
        if endpoint is not None:
            out.append(endpoint)
    return tuple(out)


def load_endpoints(value: str) -> tuple[Endpoint, ...]:
    """``INGEST_NOTIFY_ENDPOINTS``: empty (none), inline JSON, or a JSON file's path."""
    if not value.strip():
        return ()
    if value.lstrip()[:1] in "[{":
        return parse_endpoints(value)
    try:
        with open(value, encoding="utf-8") as f:
            text = f.read(_MAX_CONFIG + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(value, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(text) > _MAX_CONFIG:
        raise _fail(value, f"larger than {_MAX_CONFIG} bytes")
    return parse_endpoints(text)


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Who caused an event, through which request (distribution's ``request`` and
    ``actor`` records). ``base_url``: the registry as the client reached it, for
    ``target.url`` when ``INGEST_NOTIFY_BASE_URL`` is unset."""

    request_id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    useragent: str = ""
    actor: str = ""
    base_url: str = ""

    def request(self) -> dict[str, str]:
        return {
            "id": self.request_id,
            "addr": self.addr[:_MAX_FIELD],
            "host": self.host[:_MAX_FIELD],
            "method": self.method,
            "useragent": self.useragent[:_MAX_FIELD],
        }

    def actor_record(self) -> dict[str, str]:
        return {"name": self.actor[:_MAX_FIELD]} if self.actor else {}

    def to_dict(self) -> dict[str, str]:
        """JSON-safe, for an upload's record: a blob's push event is emitted by the
        worker that commits it, long after the finishing request."""
        return {f.name: str(getattr(self, f.name))[:_MAX_FIELD] for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Origin:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        return cls(**{f.name: str(d[f.name]) for f in fields(cls) if f.name in d})


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_event(
    action: str,
    target: Mapping[str, Any],
    *,
    origin: Origin | None = None,
    source: Mapping[str, str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One event as distribution shapes it (a fresh ``id``; ``timestamp`` in RFC 3339)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    o = origin or Origin()
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(time.time() if now is None else now),
        "action": action,
        "target": dict(target),
        "request": o.request(),
        "actor": o.actor_record(),
        "source": dict(source or {}),
    }


def envelope(events: Iterable[bytes]) -> bytes:
    """The request body for events already serialised (each a JSON object)."""
    return b'{"events":[' + b",".join(events) + b"]}"


# -- the outbox -------------------------------------------------------------------------


class _Keys:
    """Outbox keys: nanoseconds since the epoch, strictly increasing in one process
    (two events in the same nanosecond keep their order), then 8 random hex digits
    so processes never collide."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self, now_ns: int | None = None) -> str:
        with self._lock:
            ns = max(time.time_ns() if now_ns is None else now_ns, self._last + 1)
            self._last = ns
        return f"{ns:020d}-{secrets.token_hex(4)}"


_keys = _Keys()


class Outbox:
    """The events waiting for one endpoint, in storage."""

    def __init__(self, driver: StorageDriver, endpoint: str) -> None:
        self.driver = driver
        self.endpoint = paths.validate_endpoint_name(endpoint)
        self.dir = paths.notify_outbox_dir(endpoint)

    def append(self, event: bytes, key: str | None = None) -> str:
        """Store one serialised event; its key. Not fsync'd (see docs/operations.md):
        a process crash loses nothing, a machine crash at most the last seconds'."""
        key = paths.validate_event_key(key) if key is not None else _keys.next()
        self.driver.put_content(paths.notify_event_path(self.endpoint, key), event, durable=False)
        return key

    def waiting(self) -> list[str]:
        """Every waiting event's key, oldest first."""
        try:
            listed = self.driver.list(self.dir)
        except PathNotFound:
            return []
        return sorted(k for p in listed if (k := paths.parse_notify_event(p)) is not None)

    def read(self, key: str) -> bytes | None:
        """The event stored under ``key``; None if it is gone or not a JSON object."""
        try:
            raw = self.driver.get_content(paths.notify_event_path(self.endpoint, key))
            ok = isinstance(json.loads(raw), dict)
        except (PathNotFound, ValueError):
            return None
        return raw if ok else None

    def remove(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(PathNotFound):
                self.driver.delete(paths.notify_event_path(self.endpoint, key))

    def trim(self, max_events: int, keys: list[str] | None = None) -> list[str]:
        """Remove the oldest events beyond ``max_events``; the keys left, oldest first."""
        keys = self.waiting() if keys is None else keys
        excess = len(keys) - max_events
        if excess <= 0:
            return keys
        self.remove(keys[:excess])
        return keys[excess:]


@dataclass(slots=True)
class DeliveryState:
    """Per endpoint, in ``state.json``; written only by the delivery run holding the
    endpoint's lock, so its counters are exact (they are the ``/metrics`` counters)."""

    failures: int = 0  # failed attempts in a row
    next_at: float = 0.0  # no attempt before this (wall clock), unless scheduled
    delivered: int = 0
    failed_attempts: int = 0
    dropped: int = 0  # the outbox was over max_events
    expired: int = 0  # the retry budget ran out
    last_error: str = ""
    last_error_at: float = 0.0
    last_success_at: float = 0.0

    @classmethod
    def read(cls, driver: StorageDriver, endpoint: str) -> DeliveryState:
        try:
            raw = json.loads(driver.get_content(paths.notify_state_path(endpoint)))
        except (PathNotFound, ValueError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        state = cls()
        for f in fields(cls):
            value = raw.get(f.name)
            if isinstance(value, type(getattr(state, f.name))) and not isinstance(value, bool):
                setattr(state, f.name, value)
            elif isinstance(value, int) and f.type == "float" and not isinstance(value, bool):
                setattr(state, f.name, float(value))
        return state

    def write(self, driver: StorageDriver, endpoint: str) -> None:
        driver.put_content(
            paths.notify_state_path(endpoint), json.dumps(asdict(self)).encode(), durable=False
        )


# -- delivery -----------------------------------------------------------------------


class DeliveryFailed(Exception):
    """A delivery attempt failed; ``str()`` is the reason (never a header value).
    Raised by a :data:`Sender`; the delivery task raises it too, naming the endpoint,
    so Flower shows who failed and why."""


#: ``sender(endpoint, body)``: POST ``body`` (an envelope) to the endpoint; return on
#: a 2xx answer, raise DeliveryFailed with a short reason otherwise.
Sender = Callable[[Endpoint, bytes], None]


@dataclass(slots=True)
class DrainResult:
    """What one delivery run did (the delivery task's result, as shown in Flower)."""

    endpoint: str
    delivered: int = 0
    dropped: int = 0
    expired: int = 0
    failures: int = 0
    reason: str | None = None
    #: Seconds until the next attempt: after a failure, or while backing off.
    retry_in: float | None = None
    waiting: bool = False  # backing off: nothing attempted
    more: bool = False  # stopped by its time budget with events left

    @property
    def failed(self) -> bool:
        return self.reason is not None and not self.waiting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drain(
    driver: StorageDriver,
    endpoint: Endpoint,
    send: Sender,
    *,
    scheduled: bool = False,
    budget: float = 20.0,
    renew: Callable[[], None] = lambda: None,
    now: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
) -> DrainResult:
    """Deliver ``endpoint``'s outbox, oldest first, until it is empty, a delivery
    fails, or ``budget`` seconds have passed. The caller holds the endpoint's lock.

    While the endpoint is backing off (its next attempt is in the future) nothing is
    sent unless ``scheduled`` (the run the backoff scheduled). ``renew`` is called
    after each batch (the caller's lock)."""
    name = endpoint.name
    outbox = Outbox(driver, name)
    state = DeliveryState.read(driver, name)
    result = DrainResult(name, failures=state.failures)
    started = clock()
    try:
        before = outbox.waiting()
        keys = outbox.trim(endpoint.max_events, before)
        if (dropped := len(before) - len(keys)) > 0:
            state.dropped += dropped
            result.dropped += dropped
            log.warning(
                "notifications to %s: outbox full, dropped %d oldest event(s)", name, dropped
            )
        if not scheduled and state.next_at > now():
            result.waiting = True
            result.retry_in = state.next_at - now()
            result.reason = state.last_error or None
            return result
        while True:
            if not keys:
                keys = outbox.waiting()
                if not keys:
                    break
            head, keys = keys[: endpoint.batch], keys[endpoint.batch :]
            bodies: list[bytes] = []
            for key in head:
                raw = outbox.read(key)
                if raw is None:  # vanished or unreadable: nothing to send
                    state.dropped += 1
                    result.dropped += 1
                else:
                    bodies.append(raw)
            if bodies:
                try:
                    send(endpoint, envelope(bodies))
                except DeliveryFailed as exc:
                    _failed(state, result, endpoint, outbox, head, str(exc)[:300], now())
                    return result
            outbox.remove(head)
            state.delivered += len(bodies)
            result.delivered += len(bodies)
            state.failures = result.failures = 0
            state.next_at = 0.0
            state.last_success_at = now()
            renew()
            if clock() - started >= budget:
                result.more = bool(keys) or bool(outbox.waiting())
                break
        return result
    finally:
        state.write(driver, name)


def _failed(
    state: DeliveryState,
    result: DrainResult,
    endpoint: Endpoint,
    outbox: Outbox,
    head: Sequence[str],
    reason: str,
    now: float,
) -> None:
    state.failures += 1
    state.failed_attempts += 1
    state.last_error, state.last_error_at = reason, now
    result.reason = reason
    if state.failures >= endpoint.max_attempts:
        # The retry budget is spent: give the oldest batch up, so one event the
        # endpoint keeps refusing cannot hold back every later one forever.
        outbox.remove(head)
        state.expired += len(head)
        result.expired += len(head)
        log.error(
            "notifications to %s: gave up on %d event(s) after %d attempt(s): %s",
            endpoint.name,
            len(head),
            state.failures,
            reason,
        )
        state.failures = 0
        delay = endpoint.delay(1)
    else:
        delay = endpoint.delay(state.failures)
    result.failures = state.failures
    state.next_at = now + delay
    result.retry_in = delay


# -- emitting -----------------------------------------------------------------------


def _source() -> dict[str, str]:
    return {"addr": socket.gethostname(), "instanceID": str(uuid.uuid4())}


#: ``kick(endpoint_name)``: ask for a delivery run (send the delivery task).
Kick = Callable[[str], None]


class Notifier:
    """Turns what happened into events in the outboxes of the endpoints that want them.

    Never raises and never waits on an endpoint: emitting is a write per endpoint and,
    when no delivery run is live for it, one kick. Does nothing without endpoints.
    """

    def __init__(
        self,
        driver: StorageDriver,
        endpoints: Sequence[Endpoint] = (),
        *,
        kick: Kick | None = None,
        pulls: bool = False,
        base_url: str = "",
        source: Mapping[str, str] | None = None,
    ) -> None:
        self.driver = driver
        self.endpoints = tuple(endpoints)
        self.kick = kick
        self.pulls = pulls
        self.base_url = base_url.rstrip("/")
        self.source = dict(source) if source is not None else _source()
        #: Events that could not be stored (this process, since it started).
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    # -- what happened -------------------------------------------------------------

    def blob_committed(self, result: Mapping[str, Any], origin: Origin | None = None) -> None:
        """A verification committed a blob (``result``: the committed result;
        ``origin``: the request that finished the upload, if it was recorded)."""
        if not self.endpoints:
            return
        try:
            repository, digest, size = result["repository"], result["digest"], result["size"]
            # request.id names the verification that committed (its task id: what
            # Flower and the upload's result show); the rest is the finishing request.
            request = replace(origin or Origin(), request_id=str(result.get("task_id") or ""))
            self.emit("push", self._blob(repository, digest, size, request), request)
        except (KeyError, TypeError):
            log.warning("no push event: the committed result lacks a field", exc_info=True)

    def blob_pulled(self, repository: str, digest: str, size: int, origin: Origin) -> None:
        if self.endpoints and self.pulls:
            self.emit("pull", self._blob(repository, digest, size, origin), origin)

    def blob_mounted(
        self, repository: str, source: str, digest: str, size: int, origin: Origin | None
    ) -> None:
        if self.endpoints:
            target = self._blob(repository, digest, size, origin)
            target["fromRepository"] = source
            self.emit("mount", target, origin)

    def blob_deleted(self, repository: str, digest: str, origin: Origin | None) -> None:
        if self.endpoints:
            self.emit("delete", {"digest": digest, "repository": repository}, origin)

    def manifest_pushed(
        self,
        repository: str,
        reference: str,
        digest: str,
        media_type: str,
        size: int,
        origin: Origin | None,
    ) -> None:
        if self.endpoints:
            target = self._manifest(repository, reference, digest, media_type, size, origin)
            self.emit("push", target, origin)

    def manifest_pulled(
        self,
        repository: str,
        reference: str,
        digest: str,
        media_type: str,
        size: int,
        origin: Origin,
    ) -> None:
        if self.endpoints and self.pulls:
            target = self._manifest(repository, reference, digest, media_type, size, origin)
            self.emit("pull", target, origin)

    def manifest_deleted(
        self, repository: str, reference: str, digest: str | None, origin: Origin | None
    ) -> None:
        """A manifest deleted by digest, or a tag (``reference``) deleted; ``digest``:
        the revision it named, when known."""
        if not self.endpoints:
            return
        target: dict[str, Any] = {"repository": repository}
        if digest:
            target["digest"] = digest
        if ":" not in reference:
            target["tag"] = reference
        self.emit("delete", target, origin)

    # -- targets -------------------------------------------------------------------

    def _url(self, origin: Origin | None, path: str) -> str | None:
        base = self.base_url or (origin.base_url.rstrip("/") if origin else "")
        return base + path if base else None

    def _blob(
        self, repository: str, digest: str, size: int, origin: Origin | None
    ) -> dict[str, Any]:
        return self._target(BLOB_MEDIA_TYPE, repository, "blobs", digest, size, origin)

    def _manifest(
        self,
        repository: str,
        reference: str,
        digest: str,
        media_type: str,
        size: int,
        origin: Origin | None,
    ) -> dict[str, Any]:
        target = self._target(media_type, repository, "manifests", digest, size, origin)
        if ":" not in reference:
            target["tag"] = reference
        return target

    def _target(
        self,
        media_type: str,
        repository: str,
        kind: str,
        digest: str,
        size: int,
        origin: Origin | None,
    ) -> dict[str, Any]:
        """Distribution's ``target`` record (``length`` repeats ``size``, as it does)."""
        target: dict[str, Any] = {
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "length": size,
            "repository": repository,
        }
        url = self._url(origin, f"/v2/{repository}/{kind}/{digest}")
        if url:
            target["url"] = url
        return target

    # -- storing and kicking ------------------------------------------------------

    def emit(self, action: str, target: Mapping[str, Any], origin: Origin | None) -> None:
        """Store one event for every endpoint that wants it, then kick the idle ones.
        Failures are logged and counted, never raised: an event is not worth a
        failed push."""
        wanting = [e for e in self.endpoints if e.wants(action, target.get("mediaType"))]
        if not wanting:
            return
        try:
            event = new_event(action, target, origin=origin, source=self.source)
            body = json.dumps(event, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            self.errors += 1
            log.warning("could not build a %s event", action, exc_info=True)
            return
        key = _keys.next()  # one key for every endpoint: the same order everywhere
        for endpoint in wanting:
            try:
                Outbox(self.driver, endpoint.name).append(body, key)
            except Exception:  # storage trouble must not fail the operation
                self.errors += 1
                log.warning(
                    "could not store a %s event for %s", action, endpoint.name, exc_info=True
                )
                continue
            self._kick_if_idle(endpoint.name)

    def _kick_if_idle(self, name: str) -> None:
        if self.kick is None:
            return
        try:
            if delivery_live(self.driver, name, time.time()):
                return  # the live run lists the outbox again before it ends
            self.kick(name)
        except Exception:  # the sweep kicks it later
            log.warning("could not ask for a delivery to %s", name, exc_info=True)


def delivery_live(driver: StorageDriver, endpoint: str, now: float) -> bool:
    """Whether a delivery run holds ``endpoint`` (its lease is fresh) or one is
    scheduled (backing off until a time still to come): then no kick is needed."""
    lease = read_lease(driver, paths.notify_lease_path(endpoint))
    if lease is None:
        return False
    until = lease.detail.get("until")
    return not lease.stale(now) or (isinstance(until, int | float) and until > now)


# -- observing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint's counters (from its :class:`DeliveryState`) and outbox size."""

    endpoint: str
    waiting: int
    state: DeliveryState = field(default_factory=DeliveryState)


def stats(driver: StorageDriver, endpoints: Sequence[Endpoint]) -> list[EndpointStats]:
    """Every endpoint's counters, for ``/metrics``: a listing and a read each."""
    return [
        EndpointStats(
            e.name, len(Outbox(driver, e.name).waiting()), DeliveryState.read(driver, e.name)
        )
        for e in endpoints
    ]
