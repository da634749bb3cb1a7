"""An HTTP client for the ingest frontend: push a blob, follow its verification.

Speaks the OCI distribution API for the upload (POST, PATCH chunks with
``Content-Range``, PUT ``?digest=``) and the ingest JSON API for the outcome.
The finishing PUT asks for ``Prefer: respond-async`` so the client can show the
verification's progress from ``/ingest/v1/uploads/<id>`` instead of blocking.
Errors come back as the shared taxonomy (``DIGEST_INVALID``...) or, when the
service cannot be reached, as ``StorageUnavailable``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import httpx

from ingest.errors import IngestError, StorageUnavailable, Unknown, VerificationTimeout, from_dict

__all__ = ["RegistryClient"]

OnBytes = Callable[[int], None]
OnVerify = Callable[[int, int], None]


def _error(resp: httpx.Response) -> IngestError:
    try:
        errors = resp.json()["errors"]
        return from_dict(errors[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return Unknown(f"HTTP {resp.status_code}", {"body": resp.text[:300]})


class RegistryClient:
    """Talks to one ingest frontend (``base_url``, e.g. ``http://127.0.0.1:5000``)."""

    def __init__(self, base_url: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"cannot reach {self.base_url}: {exc}", {"url": self.base_url}
            ) from exc
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

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
    ) -> dict[str, Any]:
        """Upload ``stream`` in chunks, finish, and wait for the verified commit.

        Without ``digest`` the client computes one while uploading: sha256, or the
        TarSum of ``tarsum_label`` (e.g. ``tarsum.v1+sha256``).
        """
        sha = hashlib.sha256()
        ts = None
        if digest is None and tarsum_label is not None:
            from ingest.tarsum import TarSum

            ts = TarSum(tarsum_label)
        location = self._request("POST", f"/v2/{repository}/blobs/uploads/").headers["location"]
        offset = 0
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        while True:
            n = _read_full(stream, view)
            if n == 0:
                break
            chunk = view[:n]
            if digest is None:
                sha.update(chunk)
                if ts is not None:
                    ts.update(chunk)
            resp = self._request(
                "PATCH",
                location,
                content=bytes(chunk),
                headers={
                    "Content-Range": f"{offset}-{offset + n - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            location = resp.headers.get("location", location)
            offset += n
            if on_upload is not None:
                on_upload(n)
        if digest is None:
            digest = ts.finish() if ts is not None else "sha256:" + sha.hexdigest()
        resp = self._request(
            "PUT", location, params={"digest": digest}, headers={"Prefer": "respond-async"}
        )
        # 201 (already verified) or 202 (verifying): either way the ingest API has
        # the full result, or the progress to show until there is one.
        upload_id = location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        upload_id = resp.headers.get("docker-upload-uuid", upload_id)
        return self.wait(upload_id, timeout=timeout, on_verify=on_verify)

    def retry(self, upload_id: str, digest: str | None = None) -> str:
        """Re-enqueue a failed verification; returns the new task id."""
        body = {"digest": digest} if digest else {}
        data = self._request("POST", f"/ingest/v1/uploads/{upload_id}/retry", json=body).json()
        return str(data["task_id"])

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


def _read_full(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (pipes return short reads); 0 at the end."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got
