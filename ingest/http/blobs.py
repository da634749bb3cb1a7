"""Blob and upload endpoints of the OCI distribution API (thin: parse → core → render)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ingest.api import Ingest, Ticket, Upload
from ingest.digests import parse_digest
from ingest.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    IngestError,
    NameInvalid,
    RangeInvalid,
    SizeInvalid,
    TooLarge,
    VerificationTimeout,
)
from ingest.http import metrics
from ingest.http.errors import envelope
from ingest.logs import task_id_var, upload_id_var
from ingest.names import validate_name
from ingest.paths import validate_upload_id

#: Request bodies are staged in writes of this size: large enough that the
#: storage sees few big writes, small enough to bound memory per request.
FLUSH_SIZE = 1 << 20
#: Blob GETs stream in slices of this size.
SEND_CHUNK = 1 << 20

_RANGE_RE = re.compile(r"(?:bytes=)?(\d+)-(\d+)")
_BYTES_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def _ingest(request: Request) -> Ingest:
    ing = request.app.state.ingest
    assert isinstance(ing, Ingest)
    return ing


def _name(request: Request) -> str:
    return validate_name(request.path_params["name"])


def _upload_id(request: Request) -> str:
    """The path's upload id, validated and bound to every log line of this request."""
    upload_id = validate_upload_id(request.path_params["upload_id"])
    upload_id_var.set(upload_id)
    return upload_id


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _upload_headers(name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": _upload_location(name, upload_id),
        "Docker-Upload-UUID": upload_id,
        # distribution reports "0-0" for an empty upload; clients expect that.
        "Range": f"0-{max(offset - 1, 0)}",
        "Content-Length": "0",
    }


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdecimal()) or len(raw) > 19:
        raise SizeInvalid("invalid Content-Length", {"content_length": raw[:40]})
    return int(raw)


def _parse_content_range(raw: str) -> tuple[int, int]:
    m = _RANGE_RE.fullmatch(raw.strip())
    if not m:
        raise RangeInvalid("invalid Content-Range", {"content_range": raw[:80]})
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeInvalid("invalid Content-Range", {"content_range": raw[:80]})
    return start, end


async def _stream_body(request: Request, up: Upload) -> int:
    """Append the request body to ``up`` in large writes; bounded memory."""
    ing = _ingest(request)
    length = _content_length(request)
    if length is not None and length > 0:
        offset = await run_in_threadpool(lambda: up.offset)
        if offset + length > ing.settings.max_blob_size:
            raise TooLarge("blob exceeds the maximum size", {"limit": ing.settings.max_blob_size})
    upload_id_var.set(up.id)
    buf = bytearray()
    total = 0
    metrics.UPLOADS_ACTIVE.inc()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= FLUSH_SIZE:
                data, buf = buf, bytearray()
                await run_in_threadpool(up.write, data)
                total += len(data)
    except ClientDisconnect:
        pass  # keep what arrived: the upload resumes from its durable offset
    finally:
        try:
            if buf:
                await run_in_threadpool(up.write, buf)
                total += len(buf)
        finally:
            metrics.UPLOADS_ACTIVE.dec()
            metrics.UPLOAD_BYTES.inc(total)
            await run_in_threadpool(up.close)
    if length is not None and total != length:
        raise SizeInvalid(
            "request body shorter than Content-Length",
            {"content_length": length, "received": total},
        )
    return total


async def _wait_for_commit(request: Request, ticket: Ticket, name: str) -> Response:
    """201 when committed within the bound, the recorded error if rejected, else 202."""
    ing = _ingest(request)
    upload_id_var.set(ticket.upload_id)
    task_id_var.set(ticket.task_id)
    prefer = request.headers.get("prefer", "")
    if "respond-async" not in prefer.lower():
        started = time.perf_counter()
        try:
            result = await ticket.wait_async(ing.settings.finish_wait)
        except VerificationTimeout:
            result = None
        except IngestError as exc:
            metrics.FINISH_SECONDS.observe(time.perf_counter() - started)
            metrics.OUTCOMES.labels(exc.code).inc()
            raise
        metrics.FINISH_SECONDS.observe(time.perf_counter() - started)
        metrics.OUTCOMES.labels("committed" if result is not None else "pending").inc()
        if result is not None:
            return Response(
                status_code=201,
                headers={
                    "Location": f"/v2/{name}/blobs/{result['digest']}",
                    "Docker-Content-Digest": str(result["digest"]),
                    "Content-Length": "0",
                },
            )
    return Response(
        status_code=202,
        headers={
            "Location": f"/ingest/v1/uploads/{ticket.upload_id}",
            "Docker-Upload-UUID": ticket.upload_id,
            "Content-Length": "0",
        },
    )


def _claimed_digest(request: Request) -> str:
    digest = request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("digest query parameter required", {"reason": "missing"})
    return str(parse_digest(digest))


# -- uploads -------------------------------------------------------------------------


async def start_upload(request: Request) -> Response:
    """POST /v2/<name>/blobs/uploads/ — new session, monolithic (?digest=) or mount."""
    name = _name(request)
    ing = _ingest(request)
    params = request.query_params
    mount = params.get("mount")
    if mount:
        source = params.get("from")
        if source:
            mounted = await run_in_threadpool(_mount, ing, name, source, mount)
            if mounted is not None:
                return Response(
                    status_code=201,
                    headers={
                        "Location": f"/v2/{name}/blobs/{mounted}",
                        "Docker-Content-Digest": mounted,
                        "Content-Length": "0",
                    },
                )
    digest = params.get("digest")
    if digest:
        claimed = str(parse_digest(digest))
    up = await run_in_threadpool(ing.start_upload, name)
    upload_id_var.set(up.id)
    if digest:
        up = await _append(request, ing, name, up.id)
        ticket = await run_in_threadpool(ing._finish, up.info, claimed, None)
        return await _wait_for_commit(request, ticket, name)
    return Response(status_code=202, headers=_upload_headers(name, up.id, 0))


def _mount(ing: Ingest, name: str, source: str, digest: str) -> str | None:
    """Link ``digest`` from ``source`` into ``name``; None when it cannot be mounted.
    As the spec suggests, anything unmountable (unknown blob, unusable ``from`` or
    ``mount``) falls back to a fresh upload session rather than an error."""
    try:
        d = parse_digest(digest)
        validate_name(source)
        canonical = ing.blobs.resolve(source, d)
        ing.blobs.stat(source, d)
    except (BlobUnknown, DigestInvalid, NameInvalid):
        return None
    ing.blobs.link(name, canonical, canonical)
    if d != canonical:
        ing.blobs.link(name, d, canonical)
    return str(d)


def _open_upload(ing: Ingest, name: str, upload_id: str) -> Upload:
    validate_upload_id(upload_id)
    return ing.resume(name, upload_id, immediate=True)  # one request: no re-read before writing


def _check_range(up: Upload, crange: str, length: int | None) -> int:
    """Check a chunk's Content-Range against the upload; return the current offset."""
    start, end = _parse_content_range(crange)
    offset = up.offset
    if start != offset:
        raise RangeInvalid(
            f"chunk starts at {start}, upload has {offset} bytes",
            {"offset": offset, "requested": start, "upload_id": up.id},
        )
    if length is not None and length != end - start + 1:
        raise RangeInvalid(
            "Content-Range does not match Content-Length",
            {"offset": offset, "upload_id": up.id},
        )
    return offset


def _small_body(request: Request) -> int | None:
    """The length of a body small enough to take in one piece (≤ FLUSH_SIZE, the
    size the streaming path buffers anyway), or None to stream it."""
    length = _content_length(request)
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is None or chunked or length > FLUSH_SIZE:
        return None
    return length


async def _read_small(request: Request, length: int) -> bytes:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > length:
                break
    except ClientDisconnect:
        pass
    if len(body) != length:
        raise SizeInvalid(
            "request body does not match Content-Length",
            {"content_length": length, "received": len(body)},
        )
    metrics.UPLOAD_BYTES.inc(length)
    return bytes(body)


def _append_small(
    ing: Ingest, name: str, upload_id: str, body: bytes, crange: str | None
) -> Upload:
    """Open, check the range, append and close in one go (one thread hop)."""
    up = _open_upload(ing, name, upload_id)
    try:
        if crange is not None:
            _check_range(up, crange, len(body))
        if body:
            up.write(body)
    finally:
        up.close()
    return up


async def _append(request: Request, ing: Ingest, name: str, upload_id: str) -> Upload:
    """Append the request body to the upload: small bodies in one piece, others streamed."""
    crange = request.headers.get("content-range")
    small = _small_body(request)
    if small is not None:
        body = await _read_small(request, small)
        return await run_in_threadpool(_append_small, ing, name, upload_id, body, crange)
    up = await run_in_threadpool(_open_upload, ing, name, upload_id)
    if crange is not None:
        try:
            await run_in_threadpool(_check_range, up, crange, _content_length(request))
        except BaseException:
            up.close()
            raise
    await _stream_body(request, up)
    return up


async def patch_upload(request: Request) -> Response:
    """PATCH — append a chunk (Content-Range optional; Content-Length or chunked)."""
    name = _name(request)
    ing = _ingest(request)
    upload_id = _upload_id(request)
    await _append(request, ing, name, upload_id)
    offset = await run_in_threadpool(ing.staging.size, upload_id)
    return Response(status_code=202, headers=_upload_headers(name, upload_id, offset))


def _append_and_finish(
    ing: Ingest, name: str, upload_id: str, body: bytes, crange: str | None, claimed: str
) -> Ticket:
    if body or crange is not None:
        up = _append_small(ing, name, upload_id, body, crange)
        return ing._finish(up.info, claimed, None, known=up.known_record)
    return ing.finish(name, upload_id, claimed)


async def put_upload(request: Request) -> Response:
    """PUT ?digest= — optional final chunk, then finish through the verification task."""
    name = _name(request)
    ing = _ingest(request)
    upload_id = _upload_id(request)
    claimed = _claimed_digest(request)
    small = _small_body(request)
    if small is not None:
        # The common case (a monolithic small blob, or an empty closing PUT): one hop.
        body = await _read_small(request, small) if small else b""
        crange = request.headers.get("content-range") if body else None
        ticket = await run_in_threadpool(
            _append_and_finish, ing, name, upload_id, body, crange, claimed
        )
    else:
        up = await _append(request, ing, name, upload_id)
        ticket = await run_in_threadpool(ing._finish, up.info, claimed, None)
    return await _wait_for_commit(request, ticket, name)


async def get_upload(request: Request) -> Response:
    """GET — the upload's progress as a Range header (204)."""
    name = _name(request)
    ing = _ingest(request)
    upload_id = _upload_id(request)
    await run_in_threadpool(ing.staging.info, upload_id, name)
    if await run_in_threadpool(ing.staging.result, upload_id) is not None:
        # Finished sessions are gone as far as the distribution API goes; the
        # ingest API (/ingest/v1/uploads/<id>) still reports the outcome.
        raise BlobUploadUnknown("upload already committed", {"upload_id": upload_id})
    offset = await run_in_threadpool(ing.staging.size, upload_id)
    return Response(status_code=204, headers=_upload_headers(name, upload_id, offset))


async def delete_upload(request: Request) -> Response:
    """DELETE — cancel the session (204)."""
    name = _name(request)
    ing = _ingest(request)
    upload_id = _upload_id(request)
    await run_in_threadpool(ing.staging.info, upload_id, name)
    await run_in_threadpool(ing.cancel, upload_id)
    return Response(status_code=204, headers={"Content-Length": "0"})


# -- blobs ---------------------------------------------------------------------------


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


def _blob_headers(info: Any) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": info.digest,
        "ETag": f'"{info.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


async def head_blob(request: Request) -> Response:
    name = _name(request)
    ing = _ingest(request)
    info = await run_in_threadpool(ing.stat, name, request.path_params["digest"])
    headers = _blob_headers(info)
    headers["Content-Length"] = str(info.size)
    return Response(status_code=200, headers=headers)


async def get_blob(request: Request) -> Response:
    name = _name(request)
    ing = _ingest(request)
    reader = await run_in_threadpool(ing.open, name, request.path_params["digest"])
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
    name = _name(request)
    ing = _ingest(request)
    digest = parse_digest(request.path_params["digest"])
    await run_in_threadpool(ing.blobs.unlink, name, digest)
    return Response(status_code=202, headers={"Content-Length": "0"})


__all__ = [
    "delete_blob",
    "delete_upload",
    "get_blob",
    "get_upload",
    "head_blob",
    "patch_upload",
    "put_upload",
    "start_upload",
]
