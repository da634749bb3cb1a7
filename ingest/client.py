"""An HTTP client for the ingest frontend: push and pull blobs, follow and retry
verifications.

Speaks the OCI distribution API for blobs and the ingest JSON API for outcomes:

* push: ``HEAD`` the blob first and skip it if the repository has it (as skopeo and
  oras do); else POST, PATCH bodies streamed from the input in slices (a pipe of
  unknown length too: nothing is buffered beyond one slice), and the finishing PUT
  ``?digest=`` with ``Prefer: respond-async``, so the client can show the
  verification's progress from ``/ingest/v1/uploads/<id>`` instead of blocking.
* pull: GET streamed into a temporary file next to the target, hashed as it
  arrives, renamed only when the digest matches.

Errors come back as the shared taxonomy (``DIGEST_INVALID``...) or, when the
service cannot be reached, as ``StorageUnavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import httpx

from ingest.digests import new_verifier, parse_digest
from ingest.errors import (
    DigestInvalid,
    IngestError,
    RangeInvalid,
    StorageUnavailable,
    Unknown,
    VerificationTimeout,
    from_dict,
)

__all__ = ["SLICE", "RegistryClient", "compute_digest"]

OnBytes = Callable[[int], None]
OnVerify = Callable[[int, int], None]

#: Bytes read, sent (and reported to ``on_upload``) at a time within a PATCH: progress
#: moves during a chunk, and memory holds one slice, never a chunk.
SLICE = 256 << 10


def _error(resp: httpx.Response) -> IngestError:
    try:
        errors = resp.json()["errors"]
        return from_dict(errors[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return Unknown(f"HTTP {resp.status_code}", {"body": resp.text[:300]})


def compute_digest(
    stream: BinaryIO, tarsum_label: str | None = None, on_bytes: OnBytes | None = None
) -> str:
    """The sha256 digest (or the TarSum of ``tarsum_label``) of the rest of ``stream``,
    read in slices: what a push of a seekable file claims, known before any byte is
    sent so the blob can be skipped if the repository has it."""

    def feed(update: Callable[[bytes], None]) -> None:
        while piece := stream.read(SLICE):
            update(piece)
            if on_bytes is not None:
                on_bytes(len(piece))

    if tarsum_label is not None:
        from ingest.tarsum import TarSum

        ts = TarSum(tarsum_label)
        feed(ts.update)
        return ts.finish()
    sha = hashlib.sha256()
    feed(sha.update)
    return "sha256:" + sha.hexdigest()


class RegistryClient:
    """Talks to one ingest frontend (``base_url``, e.g. ``http://127.0.0.1:5000``).

    ``transport``: an httpx transport to use instead of the network (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"cannot reach {self.base_url}: {exc}", {"url": self.base_url}
            ) from exc

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with self._reaching():
            resp = self._http.request(method, url, **kwargs)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of ``digest`` if ``repository`` has it linked (a HEAD), else None.
        Any refusal (404, or no pull access) is None: the upload that follows gets
        the real answer, with its error body."""
        with self._reaching():
            resp = self._http.head(f"/v2/{repository}/blobs/{digest}")
        if resp.status_code != 200:
            return None
        try:
            return int(resp.headers.get("content-length", ""))
        except ValueError:
            return None

    def push(
        self,
        repository: str,
        stream: BinaryIO,
        *,
        digest: str | None = None,
        tarsum_label: str | None = None,
        chunk_size: int = 16 << 20,
        on_upload: OnBytes | None = None,
        on_verify: OnVerify | None = None,
        timeout: float = 600.0,
        skip_existing: bool = True,
    ) -> dict[str, Any]:
        """Upload ``stream`` in PATCHes of at most ``chunk_size`` bytes, finish, and wait
        for the verified commit (its result).

        With ``digest`` (and ``skip_existing``), a blob the repository already has is
        not sent: the answer is ``{"status": "exists", ..., "skipped": True}``.
        Without it the client computes one while uploading: sha256, or the TarSum of
        ``tarsum_label`` (e.g. ``tarsum.v1+sha256``). ``on_upload`` hears of every
        slice sent.
        """
        if digest is not None and skip_existing:
            size = self.blob_size(repository, digest)
            if size is not None:
                return {
                    "status": "exists",
                    "skipped": True,
                    "repository": repository,
                    "digest": digest,
                    "size": size,
                }
        sha = hashlib.sha256()
        ts = None
        if digest is None and tarsum_label is not None:
            from ingest.tarsum import TarSum

            ts = TarSum(tarsum_label)
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        location = started.headers["location"]
        upload_id = started.headers.get("docker-upload-uuid") or _last_segment(location)
        offset = 0
        piece = stream.read(min(SLICE, chunk_size))
        while piece:
            sent = 0

            def body(first: bytes) -> Iterator[bytes]:
                # Pulled by httpx as it writes the request: one slice in memory at a time,
                # and each one reported once it is on its way.
                nonlocal sent
                part = first
                while part:
                    if ts is not None:
                        ts.update(part)
                    elif digest is None:
                        sha.update(part)
                    yield part
                    sent += len(part)
                    if on_upload is not None:
                        on_upload(len(part))
                    if sent >= chunk_size:
                        return
                    part = stream.read(min(SLICE, chunk_size - sent))

            # No Content-Range: its end is unknown until the input says so (a pipe);
            # the server appends, and its Range answer proves where the bytes went.
            resp = self._request(
                "PATCH",
                location,
                content=body(piece),
                headers={"Content-Type": "application/octet-stream"},
            )
            offset += sent
            if resp.headers.get("range", f"0-{offset - 1}") != f"0-{offset - 1}":
                raise RangeInvalid(
                    "the registry holds another amount of this upload than was sent",
                    {"upload_id": upload_id, "sent": offset, "range": resp.headers["range"]},
                )
            location = resp.headers.get("location", location)
            piece = stream.read(min(SLICE, chunk_size))
        if digest is None:
            digest = ts.finish() if ts is not None else "sha256:" + sha.hexdigest()
        resp = self._request(
            "PUT", location, params={"digest": digest}, headers={"Prefer": "respond-async"}
        )
        # 201 (already verified) or 202 (verifying): either way the ingest API has
        # the full result, or the progress to show until there is one.
        upload_id = resp.headers.get("docker-upload-uuid", upload_id)
        return self.wait(upload_id, timeout=timeout, on_verify=on_verify)

    def pull(
        self,
        repository: str,
        digest: str,
        path: str | os.PathLike[str],
        *,
        on_total: Callable[[int | None], None] | None = None,
        on_bytes: OnBytes | None = None,
    ) -> dict[str, Any]:
        """Download ``repository``'s blob ``digest`` to ``path``, verified as it streams.

        The bytes go to a temporary file next to ``path`` and are hashed on the way;
        only a match is renamed over ``path``. A mismatch raises DigestInvalid
        (``reason: mismatch``, ``claimed``, ``computed``) and leaves nothing behind, as
        does any other failure. ``on_total`` hears the size once the registry says it.
        """
        claimed = parse_digest(digest)
        verifier = new_verifier(claimed)
        target = os.path.abspath(os.fspath(path))
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".part", dir=os.path.dirname(target)
        )
        size = 0
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self._reaching(),
                self._http.stream("GET", f"/v2/{repository}/blobs/{claimed}") as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                if on_total is not None:
                    length = resp.headers.get("content-length", "")
                    on_total(int(length) if length.isdigit() else None)
                for piece in resp.iter_bytes(SLICE):
                    verifier.update(piece)
                    out.write(piece)
                    size += len(piece)
                    if on_bytes is not None:
                        on_bytes(len(piece))
                out.flush()
                os.fsync(out.fileno())
            computed = verifier.result()
            if computed != str(claimed):
                raise DigestInvalid(
                    "downloaded content did not match the digest",
                    {"reason": "mismatch", "claimed": str(claimed), "computed": computed},
                )
            # mkstemp makes the file 0600; the result gets what a plain create would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return {"repository": repository, "digest": str(claimed), "size": size, "path": target}

    def retry(self, upload_id: str, digest: str | None = None) -> str:
        """Re-enqueue a failed verification; returns the new task id."""
        body = {"digest": digest} if digest else {}
        data = self._request("POST", f"/ingest/v1/uploads/{upload_id}/retry", json=body).json()
        return str(data["task_id"])

    def retry_failed(
        self, *, since: float | None = None, code: str | None = None
    ) -> dict[str, Any]:
        """Re-enqueue every failed verification the caller may retry (optionally only
        those failed in the last ``since`` seconds, with error ``code``):
        ``{"queued": [...], "errors": [...]}``."""
        body: dict[str, Any] = {}
        if since is not None:
            body["since"] = since
        if code is not None:
            body["code"] = code
        data = self._request("POST", "/ingest/v1/failed-uploads/retry", json=body).json()
        assert isinstance(data, dict)
        return data

    def cancel(self, upload_id: str) -> None:
        """Discard an upload and its staged bytes (the OCI session DELETE)."""
        repository = self.status(upload_id)["repository"]
        self._request("DELETE", f"/v2/{repository}/blobs/uploads/{upload_id}")

    def status(self, upload_id: str) -> dict[str, Any]:
        data = self._request("GET", f"/ingest/v1/uploads/{upload_id}").json()
        assert isinstance(data, dict)
        return data

    def wait(
        self, upload_id: str, *, timeout: float = 600.0, on_verify: OnVerify | None = None
    ) -> dict[str, Any]:
        """Poll the upload until it is committed (its result) or failed (raise its error)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = self.status(upload_id)
            if st["state"] == "committed" and st.get("result"):
                result: dict[str, Any] = st["result"]
                if on_verify is not None:
                    on_verify(result["size"], result["size"])
                return result
            if st["state"] == "failed" and st.get("error"):
                raise from_dict(st["error"])
            progress = st.get("progress")
            if on_verify is not None and isinstance(progress, dict):
                on_verify(int(progress.get("done", 0)), int(progress.get("total", 0)))
            if time.monotonic() > deadline:
                raise VerificationTimeout(detail={"upload_id": upload_id})
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _last_segment(location: str) -> str:
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
