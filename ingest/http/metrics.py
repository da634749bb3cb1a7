"""Prometheus metrics of the frontend, served at ``/metrics`` of the debug listener
(:mod:`ingest.http.debug`, ``INGEST_DEBUG_ADDR``), never on the registry's port.

With several frontend processes (``ingest serve --workers N``) each writes its values
to prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, which
``ingest serve`` sets up) and the one process serving the debug listener aggregates
them all. Worker-side metrics (task counts, runtimes, queue) come from Flower's own
``/metrics``.
"""

from __future__ import annotations

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

from ingest.api import Ingest

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
OUTCOMES = Counter(
    "ingest_verification_outcomes",
    "Verification outcomes seen by the frontend: 'committed', 'pending' or an error code",
    ["code"],
)
CONNECTIONS_CLOSED = Counter(
    "ingest_connections_closed",
    "Connections closed on a slow or idle client, or refused over INGEST_MAX_CONNECTIONS "
    "(reason: header_timeout, body_idle_timeout, send_stall, max_connections)",
    ["reason"],
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


def _exposition(registry: CollectorRegistry, ingest: Ingest | None) -> bytes:
    body = generate_latest(registry)
    if ingest is not None and ingest.notifier.enabled:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(NotificationCollector(ingest))
        body += generate_latest(extra)
    return body


async def metrics(request: Request) -> Response:
    state = request.app.state
    ing = getattr(state, "ingest", None)
    body = await run_in_threadpool(
        _exposition, state.metrics_registry, ing if isinstance(ing, Ingest) else None
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
