"""The debug listener: ``/metrics`` and ``/health`` on their own address.

Like distribution's debug server (``http.debug.addr``), operational endpoints do not
share the registry's port: the registry may be public and authenticated, while these
answer anyone who can reach them, so they bind to loopback by default
(``INGEST_DEBUG_ADDR=127.0.0.1:5001``) and a deployment chooses who reaches them.

* ``GET /metrics`` -- Prometheus text format. Served by the process that runs the
  listener, for every frontend process: with ``ingest serve --workers N`` the
  processes write to ``PROMETHEUS_MULTIPROC_DIR`` and this aggregates them; plus
  the verification outcomes every worker counted (:mod:`ingest.outcomes`).
* ``GET /health`` -- the deep check of :mod:`ingest.health` (broker, storage, a
  worker), as JSON with each check's status and latency: 200 when every check passed,
  503 otherwise.

``ingest serve`` runs this app in the serving process (the supervisor, with
``--workers N``), so exactly one process binds the port (see
:mod:`ingest.http.server`).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ingest import backends
from ingest.api import Ingest
from ingest.http import common, metrics
from ingest.outcomes import OutcomeCounter

__all__ = ["create_debug_app"]

_NO_STORE = {"Cache-Control": "no-store"}


async def health(request: Request) -> Response:
    report = await run_in_threadpool(common.ingest(request).health)
    return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503, headers=_NO_STORE)


async def index(request: Request) -> Response:
    return PlainTextResponse("verified-ingest debug listener: /metrics /health\n")


def create_debug_app(
    ingest: Ingest,
    *,
    multiprocess_dir: str | None = None,
    outcomes: OutcomeCounter | None = None,
) -> Starlette:
    """The debug app over ``ingest`` (its storage and queue are what ``/health``
    checks); ``multiprocess_dir``: the ``PROMETHEUS_MULTIPROC_DIR`` of the frontend
    processes whose metrics ``/metrics`` aggregates (None: this process's own);
    ``outcomes``: where the workers count verification outcomes (by default the
    counters in ``ingest``'s ``REDIS_URL``)."""
    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/metrics", metrics.metrics, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    app.state.ingest = ingest
    app.state.metrics_registry = metrics.registry(multiprocess_dir)
    app.state.outcomes = (
        outcomes if outcomes is not None else backends.outcome_counter(ingest.settings)
    )
    return app
