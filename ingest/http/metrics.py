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
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

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


async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
