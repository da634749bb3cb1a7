"""Blob endpoints of the OCI distribution API: HEAD, GET (with ranges) and DELETE
of a blob linked in a repository."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ingest.blobs import BlobInfo
from ingest.errors import RangeInvalid
from ingest.http.access import origin
from ingest.http.common import ingest, path_digest, repository
from ingest.http.errors import envelope

__all__ = ["delete_blob", "get_blob", "head_blob"]

#: Blob GETs stream in slices of this size.
SEND_CHUNK = 1 << 20

_BYTES_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def _parse_range(raw: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (first, last) inclusive; None to serve it all.
    Raises RangeInvalid (→ 416) when unsatisfiable."""
    if "," in raw:
        return None  # multi-range: serving the whole blob is allowed
    m = _BYTES_RANGE_RE.fullmatch(raw.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # not a byte range we understand: ignore it, as RFC 9110 allows
    if not m.group(1):
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise RangeInvalid("unsatisfiable range", {"size": size})
        return max(size - n, 0), size - 1
    first = int(m.group(1))
    if m.group(2) and int(m.group(2)) < first:
        return None  # syntactically invalid: ignored (RFC 9110 §14.2)
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size:
        raise RangeInvalid("unsatisfiable range", {"size": size})
    return first, min(last, size - 1)


def _blob_headers(info: BlobInfo) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": info.digest,
        "ETag": f'"{info.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


async def head_blob(request: Request) -> Response:
    info = await run_in_threadpool(ingest(request).stat, repository(request), path_digest(request))
    headers = _blob_headers(info)
    headers["Content-Length"] = str(info.size)
    return Response(status_code=200, headers=headers)


async def get_blob(request: Request) -> Response:
    name, digest, who = repository(request), path_digest(request), origin(request)
    reader = await run_in_threadpool(lambda: ingest(request).open(name, digest, origin=who))
    info = reader.info
    headers = _blob_headers(info)
    status = 200
    first, last = 0, info.size - 1
    raw_range = request.headers.get("range")
    if raw_range:
        try:
            picked = _parse_range(raw_range, info.size)
        except RangeInvalid as exc:
            reader.close()
            return JSONResponse(
                envelope(exc.code, exc.message, exc.detail),
                status_code=416,
                headers={"Content-Range": f"bytes */{info.size}"},
            )
        if picked is not None:
            first, last = picked
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
    headers["Content-Length"] = str(max(last - first + 1, 0))

    async def body() -> AsyncIterator[bytes]:
        try:
            await run_in_threadpool(reader.seek, first)
            left = last - first + 1
            while left > 0:
                chunk = await run_in_threadpool(reader.read, min(SEND_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            reader.close()

    return StreamingResponse(body(), status_code=status, headers=headers)


async def delete_blob(request: Request) -> Response:
    """DELETE — unlink the digest from this repository only (202)."""
    name, digest, who = repository(request), path_digest(request), origin(request)
    await run_in_threadpool(lambda: ingest(request).unlink(name, digest, origin=who))
    return Response(status_code=202, headers={"Content-Length": "0"})
