"""The HTTP frontend: OCI distribution API v1.1 plus the ingest JSON API.

``create_app`` is the one place the frontend reads configuration; handlers get
the :class:`~ingest.api.Ingest` facade from ``app.state`` (:mod:`ingest.http.common`)
and reach the core through it alone.
Blob uploads are finished through the Celery verification task (via the queue
seam); waiting for its result is a pub/sub wait on the event loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest import logs
from ingest.api import Ingest
from ingest.config import Settings
from ingest.errors import IngestError
from ingest.http import blobs, ingest_api, manifests, metrics, uploads
from ingest.http.errors import http_error, ingest_error, unexpected_error

log = logging.getLogger("ingest.http.access")


async def version_check(request: Request) -> Response:
    return JSONResponse({})


class _VersionHeader:
    """Adds Docker-Distribution-API-Version to every /v2 response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"docker-distribution-api-version", b"registry/2.0"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


Handler = Callable[[Request], Awaitable[Response]]


def _by_method(path: str, handlers: dict[str, Handler]) -> Route:
    """One route per path, dispatching on the method, so a 405 lists every
    method the path supports in its Allow header."""

    async def dispatch(request: Request) -> Response:
        method = request.method
        handler = handlers.get(method) or (handlers.get("GET") if method == "HEAD" else None)
        assert handler is not None  # Route already answered 405 otherwise
        return await handler(request)

    return Route(path, dispatch, methods=list(handlers))


def routes() -> list[Route]:
    n = "/v2/{name:path}"
    return [
        Route("/v2/", version_check, methods=["GET", "HEAD"]),
        _by_method(f"{n}/blobs/uploads/", {"POST": uploads.start_upload}),
        _by_method(
            f"{n}/blobs/uploads/{{upload_id}}",
            {
                "PATCH": uploads.patch_upload,
                "PUT": uploads.put_upload,
                "GET": uploads.get_upload,
                "DELETE": uploads.delete_upload,
            },
        ),
        _by_method(
            f"{n}/blobs/{{digest}}",
            {"HEAD": blobs.head_blob, "GET": blobs.get_blob, "DELETE": blobs.delete_blob},
        ),
        _by_method(
            f"{n}/manifests/{{reference}}",
            {
                "PUT": manifests.put_manifest,
                "GET": manifests.get_manifest,
                "HEAD": manifests.get_manifest,
                "DELETE": manifests.delete_manifest,
            },
        ),
        _by_method(f"{n}/tags/list", {"GET": manifests.list_tags}),
        _by_method(f"{n}/referrers/{{digest}}", {"GET": manifests.list_referrers}),
        _by_method("/ingest/v1/uploads/{upload_id}", {"GET": ingest_api.upload_status}),
        _by_method("/ingest/v1/uploads/{upload_id}/retry", {"POST": ingest_api.retry_upload}),
        _by_method("/ingest/v1/openapi.json", {"GET": ingest_api.openapi}),
    ]


class _AccessLog:
    """One structured log line per request, with the upload and task ids it touched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status["code"],
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1") or None,
                    "status": status["code"],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )


def create_app(settings: Settings | None = None, *, ingest: Ingest | None = None) -> Starlette:
    """Build the ASGI app. Without arguments, configuration comes from the environment."""
    if ingest is None:
        settings = settings or Settings.from_env(os.environ)
        ingest = Ingest.from_settings(settings)
    app = Starlette(
        routes=[*routes(), Route("/metrics", metrics.metrics, methods=["GET"])],
        middleware=[Middleware(_AccessLog), Middleware(_VersionHeader)],
        exception_handlers={
            IngestError: ingest_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )
    app.state.ingest = ingest
    app.state.metrics_registry = metrics.registry(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return app


def app_factory() -> Starlette:
    """For ``uvicorn --factory ingest.http.app:app_factory``: reads the environment."""
    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)
