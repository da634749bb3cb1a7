"""The ingest-specific JSON API for frontends and operators, next to ``/v2/``.

* ``GET  /ingest/v1/uploads/{id}``        state, offset, live progress, result or error
* ``POST /ingest/v1/uploads/{id}/retry``  re-verify a failed upload; optional body
  ``{"digest": …}`` to verify against a corrected digest
* ``POST /ingest/v1/failed-uploads/retry`` re-verify every failed upload (after an
  outage); optional body ``{"since": seconds, "code": "UNAVAILABLE"}``
* ``GET  /ingest/v1/openapi.json``        this API and the /v2 surface as OpenAPI 3.1

The upload routes need push on the upload's repository; an upload the caller may
not push to is answered as unknown, and the bulk retry leaves it out
(:mod:`ingest.http.access`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.digests import Digest, check_supported, parse_digest
from ingest.errors import BlobUploadInvalid
from ingest.http.access import may_push
from ingest.http.common import content_length, ingest
from ingest.http.common import upload_id as path_upload_id


async def upload_status(request: Request) -> Response:
    upload_id = path_upload_id(request)
    status = await run_in_threadpool(ingest(request).status, upload_id)
    return JSONResponse(status.to_dict())


async def _read_small_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BlobUploadInvalid(f"body larger than {limit} bytes", {"reason": "too-large"})
    return bytes(body)


async def retry_upload(request: Request) -> Response:
    upload_id = path_upload_id(request)
    content_length(request)  # a malformed one is SIZE_INVALID, as on every endpoint
    digest: Digest | None = None
    raw = await _read_small_body(request, 4096)
    if raw.strip():
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise BlobUploadInvalid("body must be JSON", {"reason": "json"}) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("digest", ""), str):
            raise BlobUploadInvalid('body must be {"digest": "<digest>"}', {"reason": "json"})
        if doc.get("digest"):
            digest = check_supported(parse_digest(doc["digest"]))
    ticket = await run_in_threadpool(ingest(request).retry, upload_id, digest)
    return JSONResponse(
        {"upload_id": upload_id, "task_id": ticket.task_id, "state": "finishing"},
        status_code=202,
        headers={"Location": f"/ingest/v1/uploads/{upload_id}"},
    )


async def retry_failed(request: Request) -> Response:
    content_length(request)
    raw = await _read_small_body(request, 4096)
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise BlobUploadInvalid("body must be JSON", {"reason": "json"}) from None
    since = doc.get("since") if isinstance(doc, dict) else None
    code = doc.get("code") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or not (since is None or _positive_number(since))
        or not (code is None or isinstance(code, str))
    ):
        raise BlobUploadInvalid(
            'body must be {"since": <seconds > 0>, "code": "<error code>"}', {"reason": "json"}
        )
    summary = await run_in_threadpool(
        ingest(request).retry_failed,
        since=None if since is None else float(since),
        code=code,
        allowed=lambda repository: may_push(request, repository),
    )
    return JSONResponse(summary.to_dict())


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "verified-ingest", "version": "1"},
    "paths": {
        "/ingest/v1/uploads/{upload_id}": {
            "get": {
                "summary": "Upload state, live verification progress, and outcome",
                "parameters": [
                    {
                        "name": "upload_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "status",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/UploadStatus"}
                            }
                        },
                    },
                    "401": _error_response("UNAUTHORIZED: credentials required"),
                    "404": _error_response(
                        "BLOB_UPLOAD_UNKNOWN: no such upload, or not one the caller may push to"
                    ),
                },
            }
        },
        "/ingest/v1/uploads/{upload_id}/retry": {
            "post": {
                "summary": "Re-enqueue a failed verification as a new attempt",
                "parameters": [
                    {
                        "name": "upload_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"digest": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "queued",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "upload_id": {"type": "string"},
                                        "task_id": {"type": "string"},
                                        "state": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _error_response(
                        "BLOB_UPLOAD_INVALID: committed or not failed, or a malformed body; "
                        "DIGEST_INVALID; SIZE_INVALID: a malformed Content-Length"
                    ),
                    "401": _error_response("UNAUTHORIZED: credentials required"),
                    "404": _error_response(
                        "BLOB_UPLOAD_UNKNOWN: no such upload, or not one the caller may push to"
                    ),
                    "405": _error_response("UNSUPPORTED: the registry is read-only"),
                },
            }
        },
        "/ingest/v1/failed-uploads/retry": {
            "post": {
                "summary": "Re-enqueue every failed verification the caller may retry",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "since": {
                                        "type": "number",
                                        "description": "only failures this many seconds old",
                                    },
                                    "code": {
                                        "type": "string",
                                        "description": "only failures with this error code",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "what was re-enqueued, and what could not be",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "queued": {"type": "array", "items": {"type": "object"}},
                                        "errors": {"type": "array", "items": {"type": "object"}},
                                    },
                                }
                            }
                        },
                    },
                    "400": _error_response("BLOB_UPLOAD_INVALID: a malformed body"),
                    "401": _error_response("UNAUTHORIZED: credentials required"),
                    "405": _error_response("UNSUPPORTED: the registry is read-only"),
                    "503": _error_response("UNAVAILABLE: the task broker is unreachable"),
                },
            }
        },
        "/v2/": {
            "get": {"summary": "API version check", "responses": {"200": {"description": "ok"}}}
        },
    },
    "components": {
        "schemas": {
            "Errors": {
                "type": "object",
                "properties": {
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "detail": {"type": "object"},
                            },
                        },
                    }
                },
            },
            "UploadStatus": {
                "type": "object",
                "properties": {
                    "upload_id": {"type": "string"},
                    "repository": {"type": "string"},
                    "started_at": {"type": "number"},
                    "last_activity": {"type": "number"},
                    "state": {
                        "type": "string",
                        "enum": ["open", "finishing", "verified", "failed", "committed"],
                    },
                    "offset": {"type": "integer"},
                    "claimed_digest": {"type": ["string", "null"]},
                    "task_id": {"type": ["string", "null"]},
                    "attempt": {"type": "integer"},
                    "task_state": {"type": ["string", "null"]},
                    "progress": {
                        "type": ["object", "null"],
                        "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
                    },
                    "result": {"type": ["object", "null"]},
                    "error": {"type": ["object", "null"]},
                },
            },
        }
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)
