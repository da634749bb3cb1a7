"""Rendering errors as the OCI error envelope, in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.errors import IngestError, RangeInvalid, Unknown

log = logging.getLogger("ingest.http")

# Client mistakes that Starlette itself detects (unknown route, wrong method):
# both are operations this registry does not support.
_HTTP_CODES = {404: "UNSUPPORTED", 405: "UNSUPPORTED"}


def envelope(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "detail": detail or {}}]}


def _response(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str]
) -> Response:
    if request.method == "HEAD":
        # HEAD carries the status and headers only.
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


async def ingest_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngestError)
    return error_response(request, exc)


def error_response(
    request: Request, exc: IngestError, extra_headers: Mapping[str, str] | None = None
) -> Response:
    """``exc`` as the OCI envelope with its status, plus ``extra_headers`` (the
    ``WWW-Authenticate`` challenge of a 401, the ``Allow`` of a 405)."""
    headers: dict[str, str] = dict(extra_headers or {})
    if isinstance(exc, RangeInvalid) and isinstance(exc.detail.get("offset"), int):
        offset = exc.detail["offset"]
        headers["Range"] = f"0-{max(offset - 1, 0)}"
        if "upload_id" in exc.detail:
            headers["Docker-Upload-UUID"] = str(exc.detail["upload_id"])
    if exc.http_status >= 500:
        log.warning("%s %s -> %s", request.method, request.url.path, exc)
    return _response(request, exc.http_status, envelope(exc.code, exc.message, exc.detail), headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "UNSUPPORTED" if exc.status_code < 500 else "UNKNOWN")
    return _response(
        request, exc.status_code, envelope(code, str(exc.detail)), dict(exc.headers or {})
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # Never a traceback to the client; the log keeps it.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    err = Unknown(detail={"error": type(exc).__name__})
    return _response(request, 500, envelope(err.code, err.message, err.detail), {})
