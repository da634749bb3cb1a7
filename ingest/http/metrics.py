"""Prometheus metrics of the frontend, served at ``/metrics`` of the debug listener
(:mod:`ingest.http.debug`, ``INGEST_DEBUG_ADDR``), never on the registry's port.
Every metric is named and explained in one table: docs/operations.md, "Metrics and
logs".

With several frontend processes (``ingest serve --workers N``) each writes its values
to prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, which
``ingest serve`` sets up) and the one process serving the debug listener aggregates
them all. Three families are read at scrape time instead: the build, the
verification outcomes the workers counted (:mod:`ingest.outcomes`, in Redis) and the
notification counters (in storage). Worker-side task metrics (runtimes, states) come
from Flower's own ``/metrics``.

The HTTP server metrics (:class:`HTTPMetrics`) are labelled by route *template*
(``/v2/{name}/blobs/uploads/{upload_id}``), never by the raw path, and by a fixed set
of methods, so no client can grow the number of series.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.api import Ingest
from ingest.buildinfo import build_info
from ingest.errors import IngestError
from ingest.outcomes import COMMITTED, OutcomeCounter

log = logging.getLogger(__name__)

UPLOAD_BYTES = Counter("ingest_upload_bytes", "Bytes staged through the HTTP API")
UPLOADS_ACTIVE = Gauge(
    "ingest_uploads_active",
    "Upload requests currently streaming a body into staging",
    multiprocess_mode="livesum",
)
FINISH_SECONDS = Histogram(
    "ingest_finish_seconds",
    "From the finishing PUT to the verification outcome (or the 202)",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONNECTIONS_CLOSED = Counter(
    "ingest_connections_closed",
    "Connections closed on a slow or idle client, or refused over INGEST_MAX_CONNECTIONS "
    "(reason: header_timeout, body_idle_timeout, send_stall, max_connections)",
    ["reason"],
)


# -- HTTP server metrics -----------------------------------------------------------

HTTP_REQUESTS = Counter(
    "ingest_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "ingest_http_request_duration_seconds",
    "From a request's arrival to the end of its response, by method and route template",
    ["method", "route"],
    # Milliseconds (small blobs, manifests) to minutes (large bodies, a finishing PUT
    # that waits up to INGEST_FINISH_WAIT for its verification).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HTTP_REQUEST_BYTES = Counter(
    "ingest_http_request_bytes",
    "Request body bytes received, by method and route template",
    ["method", "route"],
)
HTTP_RESPONSE_BYTES = Counter(
    "ingest_http_response_bytes",
    "Response body bytes sent, by method and route template",
    ["method", "route"],
)
HTTP_IN_FLIGHT = Gauge(
    "ingest_http_requests_in_flight",
    "HTTP requests being served right now",
    multiprocess_mode="livesum",
)

#: Methods that get a label of their own; any other token a client sends is ``OTHER``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route matched (404, or refused before routing).
UNMATCHED = "unmatched"
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


class HTTPMetrics:
    """ASGI middleware: counts each HTTP request by method, route template and status,
    times it, and adds up the body bytes both ways.

    Cheap per request, by design (small blobs are CPU-bound): label children are
    looked up once per label set and kept, the route's label once per route, and the
    only work per ASGI message is a length added to an int."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[str, str] = {}
        self._counts: dict[tuple[str, str, int], Counter] = {}
        self._by_route: dict[tuple[str, str], tuple[Histogram, Counter, Counter]] = {}

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return UNMATCHED
        label = self._routes.get(path)
        if label is None:
            # "/v2/{name:path}/tags/list" → "/v2/{name}/tags/list": the template as
            # the API documents it, not Starlette's converter syntax.
            label = self._routes[path] = _CONVERTER.sub(r"{\1}", path)
        return label

    def _record(
        self, method: str, route: str, status: int, n_in: int, n_out: int, t: float
    ) -> None:
        count = self._counts.get((method, route, status))
        if count is None:
            count = self._counts[(method, route, status)] = HTTP_REQUESTS.labels(
                method, route, str(status)
            )
        per_route = self._by_route.get((method, route))
        if per_route is None:
            per_route = self._by_route[(method, route)] = (
                HTTP_DURATION.labels(method, route),
                HTTP_REQUEST_BYTES.labels(method, route),
                HTTP_RESPONSE_BYTES.labels(method, route),
            )
        count.inc()
        duration, bytes_in, bytes_out = per_route
        duration.observe(t)
        if n_in:
            bytes_in.inc(n_in)
        if n_out:
            bytes_out.inc(n_out)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes before a response started
        n_in = n_out = 0

        async def counting() -> Message:
            nonlocal n_in
            message = await receive()
            if message["type"] == "http.request":
                n_in += len(message.get("body", b""))
            return message

        async def counted(message: Message) -> None:
            nonlocal status, n_out
            kind = message["type"]
            if kind == "http.response.body":
                n_out += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, counting, counted)
        finally:
            HTTP_IN_FLIGHT.dec()
            method = scope["method"]
            self._record(
                method if method in METHODS else "OTHER",
                self._route(scope),
                status,
                n_in,
                n_out,
                time.perf_counter() - start,
            )


def registry(multiprocess_dir: str | None) -> CollectorRegistry:
    """The registry to expose: aggregated across processes when they share a directory."""
    if multiprocess_dir:
        reg = CollectorRegistry()
        _mp.MultiProcessCollector(reg, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return reg
    return REGISTRY


class NotificationCollector(Collector):
    """Notification delivery, read from storage at each scrape (the workers deliver,
    so no frontend process counts it): ``ingest_notify_events_total{endpoint,outcome}``
    (``delivered``; ``dropped``: the outbox was over its bound; ``expired``: the retry
    budget ran out), ``ingest_notify_failed_attempts_total{endpoint}``,
    ``ingest_notify_consecutive_failures{endpoint}`` and
    ``ingest_notify_outbox_events{endpoint}`` (waiting)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def collect(self) -> list[Metric]:
        events = CounterMetricFamily(
            "ingest_notify_events",
            "Registry events by endpoint and outcome (delivered, dropped, expired)",
            labels=["endpoint", "outcome"],
        )
        attempts = CounterMetricFamily(
            "ingest_notify_failed_attempts",
            "Delivery attempts that failed (timeout, refused, non-2xx), by endpoint",
            labels=["endpoint"],
        )
        failing = GaugeMetricFamily(
            "ingest_notify_consecutive_failures",
            "Failed delivery attempts in a row (0: the endpoint is healthy)",
            labels=["endpoint"],
        )
        waiting = GaugeMetricFamily(
            "ingest_notify_outbox_events",
            "Events waiting for delivery, by endpoint",
            labels=["endpoint"],
        )
        for st in self.ingest.notification_stats():
            s = st.state
            for outcome, n in (
                ("delivered", s.delivered),
                ("dropped", s.dropped),
                ("expired", s.expired),
            ):
                events.add_metric([st.endpoint, outcome], n)
            attempts.add_metric([st.endpoint], s.failed_attempts)
            failing.add_metric([st.endpoint], s.failures)
            waiting.add_metric([st.endpoint], st.waiting)
        return [events, attempts, failing, waiting]


class BuildInfoCollector(Collector):
    """``ingest_build_info{version,python,commit} 1``: what this frontend runs."""

    def collect(self) -> list[Metric]:
        info = build_info()
        family = GaugeMetricFamily(
            "ingest_build_info",
            "Always 1; the labels say what is running (commit: empty when unknown)",
            labels=["version", "python", "commit"],
        )
        family.add_metric([info.version, info.python, info.commit], 1)
        return [family]


class OutcomeCollector(Collector):
    """``ingest_verification_outcomes_total{outcome,code}``: every verification
    attempt's end as the workers counted it, once per attempt, read from Redis at
    each scrape (:mod:`ingest.outcomes`). Cluster-wide: every frontend serves the same
    totals. Omitted from a scrape when Redis does not answer."""

    def __init__(self, counter: OutcomeCounter) -> None:
        self.counter = counter

    def collect(self) -> list[Metric]:
        try:
            totals = self.counter.totals()
        except IngestError as exc:
            log.warning("verification outcomes not exported: %s", exc.message)
            return []
        family = CounterMetricFamily(
            "ingest_verification_outcomes",
            "Verification attempts that ended, counted by the workers once per attempt: "
            "outcome committed or rejected, code the error code of a rejection",
            labels=["outcome", "code"],
        )
        # Present from the first scrape, so rate() and alerts have a series to read.
        totals.setdefault((COMMITTED, ""), 0)
        for (outcome, code), n in sorted(totals.items()):
            family.add_metric([outcome, code], n)
        return [family]


def _exposition(registry: CollectorRegistry, extra: Sequence[Collector]) -> bytes:
    body = generate_latest(registry)
    read_now = CollectorRegistry(auto_describe=False)
    for collector in extra:
        read_now.register(collector)
    return body + generate_latest(read_now)


async def metrics(request: Request) -> Response:
    state = request.app.state
    extra: list[Collector] = [BuildInfoCollector()]
    counter = getattr(state, "outcomes", None)
    if isinstance(counter, OutcomeCounter):
        extra.append(OutcomeCollector(counter))
    ing = getattr(state, "ingest", None)
    if isinstance(ing, Ingest) and ing.notifier.enabled:
        extra.append(NotificationCollector(ing))
    body = await run_in_threadpool(_exposition, state.metrics_registry, extra)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
