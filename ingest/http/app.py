"""The HTTP frontend: OCI distribution API v1.1 plus the ingest JSON API.

``create_app`` is the one place the frontend reads configuration; handlers get
the :class:`~ingest.api.Ingest` facade from ``app.state`` (:mod:`ingest.http.common`)
and reach the core through it alone.
Blob uploads are finished through the Celery verification task (via the queue
seam); waiting for its result is a pub/sub wait on the event loop.

Every route passes :func:`ingest.http.access.authorize` before its handler runs:
who is asking (the configured :class:`~ingest.auth.Authenticator`), whether they may
(the route's scope), and the read-only and delete switches.
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

from ingest import backends, logs
from ingest.api import Ingest
from ingest.auth import Authenticator
from ingest.config import Settings
from ingest.errors import IngestError
from ingest.http import blobs, catalog, ingest_api, manifests, metrics, uploads
from ingest.http.access import Audit, Policy, Resource, audit_var, authorize
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


def _by_method(path: str, resource: Resource, handlers: dict[str, Handler]) -> Route:
    """One route per path, dispatching on the method, so a 405 lists every
    method the path supports in its Allow header. The request is authorised
    (:func:`~ingest.http.access.authorize`) before its handler reads anything."""

    async def dispatch(request: Request) -> Response:
        method = request.method
        handler = handlers.get(method) or (handlers.get("GET") if method == "HEAD" else None)
        assert handler is not None  # Route already answered 405 otherwise
        refusal = await authorize(request, resource, handlers)
        if refusal is not None:
            return refusal
        return await handler(request)

    return Route(path, dispatch, methods=list(handlers))


def routes() -> list[Route]:
    n = "/v2/{name:path}"
    return [
        _by_method("/v2/", Resource.BASE, {"GET": version_check}),
        _by_method("/v2/_catalog", Resource.CATALOG, {"GET": catalog.list_repositories}),
        _by_method(f"{n}/blobs/uploads/", Resource.UPLOADS, {"POST": uploads.start_upload}),
        _by_method(
            f"{n}/blobs/uploads/{{upload_id}}",
            Resource.UPLOAD,
            {
                "PATCH": uploads.patch_upload,
                "PUT": uploads.put_upload,
                "GET": uploads.get_upload,
                "DELETE": uploads.delete_upload,
            },
        ),
        _by_method(
            f"{n}/blobs/{{digest}}",
            Resource.BLOB,
            {"HEAD": blobs.head_blob, "GET": blobs.get_blob, "DELETE": blobs.delete_blob},
        ),
        _by_method(
            f"{n}/manifests/{{reference}}",
            Resource.MANIFEST,
            {
                "PUT": manifests.put_manifest,
                "GET": manifests.get_manifest,
                "HEAD": manifests.get_manifest,
                "DELETE": manifests.delete_manifest,
            },
        ),
        _by_method(f"{n}/tags/list", Resource.TAGS, {"GET": manifests.list_tags}),
        _by_method(
            f"{n}/referrers/{{digest}}", Resource.REFERRERS, {"GET": manifests.list_referrers}
        ),
        _by_method(
            "/ingest/v1/uploads/{upload_id}",
            Resource.UPLOAD_STATUS,
            {"GET": ingest_api.upload_status},
        ),
        _by_method(
            "/ingest/v1/uploads/{upload_id}/retry",
            Resource.UPLOAD_RETRY,
            {"POST": ingest_api.retry_upload},
        ),
        _by_method(
            "/ingest/v1/failed-uploads/retry",
            Resource.RETRY_FAILED,
            {"POST": ingest_api.retry_failed},
        ),
        _by_method("/ingest/v1/openapi.json", Resource.PUBLIC, {"GET": ingest_api.openapi}),
    ]


class _AccessLog:
    """One structured log line per request: the audit trail. Who (``subject``, ``""``
    when anonymous; ``auth_error`` when credentials did not authenticate), from where
    (``client``), what (``method``, ``path``, ``repository``, ``action``: login,
    catalog, pull, push, delete, public), the outcome (``status``), the body bytes
    received and sent (``bytes_in``, ``bytes_out``), ``duration_ms``, and the upload
    and task ids it touched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": 500, "in": 0, "out": 0}
        audit = Audit()
        token = audit_var.set(audit)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting, counted)
        finally:
            audit_var.reset(token)
            client = scope.get("client")
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                seen["status"],
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1") or None,
                    "status": seen["status"],
                    "subject": audit.subject,
                    "auth_error": audit.auth_error,
                    "client": client[0] if client else None,
                    "repository": audit.repository,
                    "action": audit.action,
                    "bytes_in": seen["in"],
                    "bytes_out": seen["out"],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )


def create_app(
    settings: Settings | None = None,
    *,
    ingest: Ingest | None = None,
    auth: Authenticator | None = None,
) -> Starlette:
    """Build the ASGI app. Without arguments, configuration comes from the environment;
    ``settings`` default to those of ``ingest`` when it is given. ``auth``: who is
    asking; by default the authenticator ``settings.auth`` names, which refuses to be
    built (ConfigError) when INGEST_AUTH is unset."""
    if settings is None:
        settings = ingest.settings if ingest is not None else Settings.from_env(os.environ)
    if ingest is None:
        ingest = Ingest.from_settings(settings)
    if auth is None:
        auth = backends.authenticator(settings)
    app = Starlette(
        routes=routes(),  # /metrics is on the debug listener (ingest/http/debug.py)
        # HTTPMetrics outermost: it times everything the others add.
        middleware=[
            Middleware(metrics.HTTPMetrics),
            Middleware(_AccessLog),
            Middleware(_VersionHeader),
        ],
        exception_handlers={
            IngestError: ingest_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )
    app.state.ingest = ingest
    app.state.policy = Policy(auth, settings.delete_enabled, settings.read_only)
    app.state.metrics_registry = metrics.registry(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return app


def app_factory() -> Starlette:
    """For ``uvicorn --factory ingest.http.app:app_factory``: reads the environment."""
    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)
