"""Upload-session endpoints of the OCI distribution API: start (or mount), append,
finish, inspect and cancel. Finishing hands the upload to a verification task and
waits a bounded time for its verdict on the event loop."""

from __future__ import annotations

import re
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ingest.api import Ingest, Ticket, Upload
from ingest.digests import Digest, check_supported, parse_digest
from ingest.errors import (
    DigestInvalid,
    IngestError,
    NameInvalid,
    RangeInvalid,
    SizeInvalid,
    TooLarge,
    VerificationTimeout,
)
from ingest.http import metrics
from ingest.http.access import may_pull, origin
from ingest.http.common import claimed_digest, content_length, ingest, repository, upload_id
from ingest.logs import task_id_var, upload_id_var
from ingest.names import validate_name
from ingest.notify import Origin

__all__ = ["delete_upload", "get_upload", "patch_upload", "put_upload", "start_upload"]

#: Bodies up to this size are taken in one piece. Larger ones are staged in writes of
#: the storage's ``write_size`` (1 MiB on a filesystem, a part on S3): large enough
#: that the storage sees few big writes, small enough to bound memory per request.
FLUSH_SIZE = 1 << 20

_RANGE_RE = re.compile(r"(?:bytes=)?(\d+)-(\d+)")


def _upload_headers(name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        # distribution reports "0-0" for an empty upload; clients expect that.
        "Range": f"0-{max(offset - 1, 0)}",
        "Content-Length": "0",
    }


def _parse_content_range(raw: str) -> tuple[int, int]:
    m = _RANGE_RE.fullmatch(raw.strip())
    if not m:
        raise RangeInvalid("invalid Content-Range", {"content_range": raw[:80]})
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeInvalid("invalid Content-Range", {"content_range": raw[:80]})
    return start, end


def _check_range(up: Upload, crange: str, length: int | None) -> None:
    """Check a chunk's Content-Range against the upload's current offset."""
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


def _open_upload(ing: Ingest, name: str, upload_id: str) -> Upload:
    return ing.resume(name, upload_id, immediate=True)  # one request: no re-read before writing


# -- request bodies ------------------------------------------------------------------


def _small_body(request: Request) -> int | None:
    """The length of a body small enough to take in one piece (≤ FLUSH_SIZE, the
    size the streaming path buffers anyway), or None to stream it."""
    length = content_length(request)
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
    ing: Ingest,
    name: str,
    upload_id: str,
    body: bytes,
    crange: str | None,
    finish: Digest | None = None,
    who: Origin | None = None,
) -> int | Ticket:
    """Open, check the range, append, then close (the new offset) or finish (the
    ticket): one thread hop for the whole request."""
    up = _open_upload(ing, name, upload_id)
    try:
        if crange is not None:
            _check_range(up, crange, len(body))
        if body:
            up.write(body)
        if finish is not None:
            return up.finish(finish, origin=who)
        return up.offset
    finally:
        up.close()


async def _stream_body(request: Request, up: Upload) -> int:
    """Append the request body to ``up`` in large writes; bounded memory."""
    ing = ingest(request)
    length = content_length(request)
    if length is not None and length > 0:
        offset = await run_in_threadpool(lambda: up.offset)
        if offset + length > ing.settings.max_blob_size:
            raise TooLarge("blob exceeds the maximum size", {"limit": ing.settings.max_blob_size})
    upload_id_var.set(up.id)
    flush_size = max(FLUSH_SIZE, ing.write_size)
    buf = bytearray()
    total = 0
    metrics.UPLOADS_ACTIVE.inc()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= flush_size:
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


async def _append(
    request: Request, ing: Ingest, name: str, upload_id: str, finish: Digest | None = None
) -> int | Ticket:
    """Append the request body (small bodies in one piece, others streamed), then
    the new offset, or with ``finish`` the verification's ticket."""
    crange = request.headers.get("content-range")
    small = _small_body(request)
    if small is not None:
        body = await _read_small(request, small) if small else b""
        if not body and finish is not None:
            # A closing PUT without a chunk: a finish by id, which also takes a
            # repeated finish, or one after a failed verification.
            return await run_in_threadpool(
                lambda: ing.finish(name, upload_id, finish, origin=origin(request))
            )
        return await run_in_threadpool(
            _append_small, ing, name, upload_id, body, crange, finish, origin(request)
        )
    up = await run_in_threadpool(_open_upload, ing, name, upload_id)
    if crange is not None:
        try:
            await run_in_threadpool(_check_range, up, crange, content_length(request))
        except BaseException:
            up.close()
            raise
    await _stream_body(request, up)
    if finish is not None:
        who = origin(request)
        return await run_in_threadpool(lambda: ing.finish(name, upload_id, finish, origin=who))
    return await run_in_threadpool(ing.offset, name, upload_id)


async def _wait_for_commit(request: Request, ticket: Ticket, name: str) -> Response:
    """201 when committed within the bound, the recorded error if rejected, else 202."""
    ing = ingest(request)
    upload_id_var.set(ticket.upload_id)
    task_id_var.set(ticket.task_id)
    prefer = request.headers.get("prefer", "")
    if "respond-async" not in prefer.lower():
        # Outcomes are counted by the workers, where every finish ends (waited for
        # or not): ingest.outcomes. Here only the wait is timed.
        started = time.perf_counter()
        try:
            result = await ticket.wait_async(ing.settings.finish_wait)
        except VerificationTimeout:
            result = None
        except IngestError:
            metrics.FINISH_SECONDS.observe(time.perf_counter() - started)
            raise
        metrics.FINISH_SECONDS.observe(time.perf_counter() - started)
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


# -- endpoints -----------------------------------------------------------------------


def _mount(ing: Ingest, name: str, source: str, digest: str, who: Origin | None) -> Digest | None:
    """``digest`` if it is now linked from ``source`` into ``name``, else None. As
    the spec suggests, anything unmountable (unknown blob, unusable ``from`` or
    ``mount``) falls back to a fresh upload session rather than an error."""
    try:
        d = check_supported(parse_digest(digest))
        return d if ing.mount(name, source, d, origin=who) else None
    except (DigestInvalid, NameInvalid):
        return None


def _may_mount_from(request: Request, source: str) -> bool:
    """Whether the caller may pull from ``source``, the repository it mounts from
    (push on the target was checked before the handler ran). If not, the mount is
    ignored: a fresh session, as for a blob ``source`` does not hold, so the answer
    reveals nothing about ``source``."""
    try:
        validate_name(source)
    except NameInvalid:
        return False
    return may_pull(request, source)


async def start_upload(request: Request) -> Response:
    """POST /v2/<name>/blobs/uploads/ — new session, monolithic (?digest=) or mount."""
    name = repository(request)
    ing = ingest(request)
    params = request.query_params
    mount, source = params.get("mount"), params.get("from")
    if mount and source and _may_mount_from(request, source):
        mounted = await run_in_threadpool(_mount, ing, name, source, mount, origin(request))
        if mounted is not None:
            return Response(
                status_code=201,
                headers={
                    "Location": f"/v2/{name}/blobs/{mounted}",
                    "Docker-Content-Digest": str(mounted),
                    "Content-Length": "0",
                },
            )
    claimed = claimed_digest(request) if params.get("digest") else None
    up = await run_in_threadpool(ing.start_upload, name)
    upload_id_var.set(up.id)
    if claimed is not None:
        ticket = await _append(request, ing, name, up.id, finish=claimed)
        assert isinstance(ticket, Ticket)
        return await _wait_for_commit(request, ticket, name)
    return Response(status_code=202, headers=_upload_headers(name, up.id, 0))


async def patch_upload(request: Request) -> Response:
    """PATCH — append a chunk (Content-Range optional; Content-Length or chunked)."""
    name = repository(request)
    uid = upload_id(request)
    offset = await _append(request, ingest(request), name, uid)
    assert isinstance(offset, int)
    return Response(status_code=202, headers=_upload_headers(name, uid, offset))


async def put_upload(request: Request) -> Response:
    """PUT ?digest= — optional final chunk, then finish through the verification task."""
    name = repository(request)
    uid = upload_id(request)
    claimed = claimed_digest(request)
    ticket = await _append(request, ingest(request), name, uid, finish=claimed)
    assert isinstance(ticket, Ticket)
    return await _wait_for_commit(request, ticket, name)


async def get_upload(request: Request) -> Response:
    """GET — the upload's progress as a Range header (204). A committed upload is
    gone as far as the distribution API goes; /ingest/v1 still reports it."""
    name = repository(request)
    uid = upload_id(request)
    offset = await run_in_threadpool(ingest(request).offset, name, uid)
    return Response(status_code=204, headers=_upload_headers(name, uid, offset))


async def delete_upload(request: Request) -> Response:
    """DELETE — cancel the session (204)."""
    name = repository(request)
    uid = upload_id(request)
    await run_in_threadpool(ingest(request).cancel, uid, name)
    return Response(status_code=204, headers={"Content-Length": "0"})
