"""Manifest, tag-list and referrers endpoints."""

from __future__ import annotations

import json
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.errors import ManifestInvalid, TooLarge
from ingest.http.access import origin
from ingest.http.common import ingest
from ingest.manifests import OCI_INDEX, ManifestStore, is_digest_reference
from ingest.names import validate_name

_MAX_TAGS_PAGE = 10_000


def _store(request: Request) -> ManifestStore:
    return ingest(request).manifests


async def _read_body(request: Request, limit: int) -> bytes:
    # Manifests are small and capped: buffering one is bounded by ``limit``.
    raw = request.headers.get("content-length")
    if raw is not None and raw.isascii() and raw.isdecimal() and int(raw) > limit:
        raise TooLarge("manifest too large", {"limit": limit})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge("manifest too large", {"limit": limit})
    return bytes(body)


async def put_manifest(request: Request) -> Response:
    name = validate_name(request.path_params["name"])
    reference = request.path_params["reference"]
    ing = ingest(request)
    body = await _read_body(request, ing.manifests.max_size)
    m = await run_in_threadpool(
        lambda: ing.put_manifest(
            name, reference, body, request.headers.get("content-type"), origin=origin(request)
        )
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{m.digest}",
        "Docker-Content-Digest": m.digest,
        "Content-Length": "0",
    }
    subject = json.loads(body).get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        headers["OCI-Subject"] = subject["digest"]
    return Response(status_code=201, headers=headers)


async def get_manifest(request: Request) -> Response:
    name = validate_name(request.path_params["name"])
    # A GET is a pull (an event, when pulls are notified); a HEAD is not.
    who = origin(request) if request.method == "GET" else None
    reference = request.path_params["reference"]
    m = await run_in_threadpool(lambda: ingest(request).get_manifest(name, reference, origin=who))
    headers = {
        "Content-Type": m.media_type,
        "Docker-Content-Digest": m.digest,
        "ETag": f'"{m.digest}"',
        "Content-Length": str(m.size),
    }
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers)
    return Response(m.body, status_code=200, headers=headers, media_type=m.media_type)


async def delete_manifest(request: Request) -> Response:
    name = validate_name(request.path_params["name"])
    reference = request.path_params["reference"]
    ing, who = ingest(request), origin(request)
    await run_in_threadpool(lambda: ing.delete_manifest(name, reference, origin=who))
    return Response(status_code=202, headers={"Content-Length": "0"})


async def list_tags(request: Request) -> Response:
    name = validate_name(request.path_params["name"])
    tags = await run_in_threadpool(_store(request).tags, name)
    params = request.query_params
    last = params.get("last")
    if last:
        tags = [t for t in tags if t > last]
    headers: dict[str, str] = {}
    n_raw = params.get("n")
    if n_raw is not None:
        if not (n_raw.isascii() and n_raw.isdecimal()) or len(n_raw) > 9:
            raise ManifestInvalid("n must be a non-negative integer", {"reason": "pagination"})
        n = min(int(n_raw), _MAX_TAGS_PAGE)
        if len(tags) > n:
            tags = tags[:n]
            if tags:
                headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={quote(tags[-1])}>; rel="next"'
    return JSONResponse({"name": name, "tags": tags}, headers=headers)


async def list_referrers(request: Request) -> Response:
    name = validate_name(request.path_params["name"])
    digest = request.path_params["digest"]
    if not is_digest_reference(digest):
        raise ManifestInvalid("referrers take a digest", {"reason": "reference"})
    artifact_type = request.query_params.get("artifactType")
    index = await run_in_threadpool(_store(request).referrers, name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    return JSONResponse(index, headers=headers, media_type=OCI_INDEX)
