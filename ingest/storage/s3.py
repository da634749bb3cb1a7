"""A storage driver over an S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto).

Layout in the bucket, below the optional key prefix ``<p>/``::

    <p>/files/<path>                 plain objects: put_content, and every moved object
    <p>/appends/<path>               the manifest of an appendable object (JSON)
    <p>/segments/<id>/<start>-<tok>  that object's bytes in immutable objects (below)
    <p>/segments/<id>/owner          the logical path the manifest lives at (for purge)
    <p>/segments/<id>/moved-sealed   left by ``move`` of a sealed object (see below)

Why appendable objects are not one multipart upload. The driver contract asks for
three things S3 has no primitive for: bytes returned by ``write`` are visible to
readers at once (the prehash tails a staged upload while it grows, and ``stat`` gives
resume offsets); an append by a writer whose idea of the size is stale is refused;
and a seal that no writer in any process can get past. Parts of an unfinished
multipart upload cannot be read, so an upload cannot live in one. Instead each
``write`` stores its bytes as a new *segment* object, then swaps the manifest (the
segment list, size and seal flag) with a conditional ``PutObject`` (``If-Match`` the
ETag the writer last saw). The manifest is a compare-and-swap register: a write
that lost a race (another writer appended, or the object was sealed, replaced or
deleted meanwhile) changes nothing and reads why; ``seal`` is the same swap with the
flag set. Segments are never overwritten (each write names its own with a fresh
token), so the bytes a sealed manifest lists are fixed for good.

Small writes are buffered durably up to S3's 5 MiB minimum part size, as parts of a
multipart upload would be: the trailing segments below that size are the buffer, and
the write that takes it to the minimum stores one segment with the buffer's bytes (read
back) and its own, in place of them. So every segment but the last few is big enough
to be a part of its own, wherever the writes came from (a resumed upload continues the
same buffer from any host). Frontends write ``write_size`` (the part size) at a time,
so a streamed body needs no merging at all.

``move`` of an appendable object makes it one plain object: a single ``CopyObject``
if it is one segment, else one multipart upload with an ``UploadPartCopy``
(server-side) per segment of at least the minimum part size, and the final one
whatever its size; only a run of small segments in between or at the end (the
buffer) goes through a bounded buffer and is uploaded again. It copies exactly the
segments the (sealed) manifest lists, so the bytes placed are the bytes a
verification hashed. The last step, deleting the manifest, is conditional on its ETag
too, so a write that slipped in before it (only possible when moving an unsealed
object) makes the move start again rather than lose that write.

Plain objects are ordinary S3 objects (``put_content`` is one ``PutObject``: atomic
and durable when it returns; ``get_content`` one ``GetObject``); a sealed one carries
``x-amz-meta-ingest-sealed``, which ``CopyObject`` and the composed upload keep, so
the seal travels with ``move``. Where both a plain object and a manifest exist at one
path the plain object wins. ``put_content`` does not look for a manifest to remove
(that would add a request to every record write); a shadowed manifest goes when the
path is moved or deleted, or with the purge.

A writer whose object was sealed and then moved finds no manifest: the
``moved-sealed`` marker tells it so (ObjectSealed rather than PathNotFound, as on a
filesystem, where the writer's descriptor follows the renamed file).
:meth:`S3Driver.purge_leftovers` removes such markers, the segments of objects a crash
left without a manifest, shadowed manifests, and multipart uploads a crashed ``move``
left open.

``put_if_absent`` is one ``PutObject`` with ``If-None-Match: *``: the server lets
exactly one of racing creators succeed (the others get 412), which is what garbage
collection decides its races with (:mod:`ingest.gc`). A retried request whose first
attempt landed gets 412 too, so it answers False for an object it created (the
contract allows it).

Requires conditional writes (``If-Match``/``If-None-Match`` on ``PutObject`` and
``If-Match`` on ``DeleteObject``): AWS S3 since 2024, MinIO, and the two servers the
tests run against, moto and SeaweedFS (4.48). SeaweedFS answers a conditional
``PutObject``/``DeleteObject`` on a missing key with 412 where AWS answers 404: a
manifest swap or delete takes either as "changed or gone", and where the two differ
(deleting a plain object that ``move`` or ``writer`` has just copied) a HEAD tells.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ingest.config import ConfigError, Settings
from ingest.errors import StorageUnavailable
from ingest.storage.base import (
    FileInfo,
    InvalidOffset,
    ObjectSealed,
    PathNotFound,
    StorageError,
    check_path,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["MIN_PART_SIZE", "S3Driver"]

#: S3's smallest part of a multipart upload, except the last one.
MIN_PART_SIZE = 5 << 20
#: S3's largest single PutObject / CopyObject / part.
_MAX_SINGLE = 5 << 30
_MAX_PARTS = 10_000
#: Bytes one ranged GET of a reader covers: one request per window, bounded memory.
READ_WINDOW = 8 << 20
_SEALED = "ingest-sealed"
_SIZE = "ingest-size"
_OWNER = "owner"
_MOVED_SEALED = "moved-sealed"
#: How often a write, seal or move retries a swap that lost to an unrelated change.
_CAS_ATTEMPTS = 20

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
_CONFLICT = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[None]:
    """Translate client errors into the driver taxonomy at this one boundary."""
    try:
        yield
    except StorageError:
        raise
    except ClientError as exc:
        code = _code(exc)
        if code in _NOT_FOUND:
            raise PathNotFound(path, "not found") from exc
        if code in ("InvalidRange", "416"):
            raise InvalidOffset(path, "range not satisfiable") from exc
        # Throttling, 5xx, access or bucket misconfiguration: our side, maybe transient.
        raise StorageUnavailable(
            f"object store error on {path}: {code or exc}", {"code": code, "path": path}
        ) from exc
    except BotoCoreError as exc:  # connection refused, timeouts, truncated bodies
        raise StorageUnavailable(
            f"object store unreachable on {path}: {type(exc).__name__}",
            {"code": type(exc).__name__, "path": path},
        ) from exc


@dataclass(frozen=True, slots=True)
class _Piece:
    """A byte range of one stored object that is part of a logical object."""

    key: str
    start: int  # within the stored object
    length: int
    etag: str | None  # pinned for objects that could change; None for immutable segments


@dataclass(frozen=True, slots=True)
class _Manifest:
    id: str
    size: int
    sealed: bool
    segments: tuple[tuple[int, int, str], ...]  # (start, length, name under segments/<id>/)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "id": self.id,
                "size": self.size,
                "sealed": self.sealed,
                "segments": [list(s) for s in self.segments],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, path: str) -> _Manifest:
        try:
            d = json.loads(raw)
            segs = tuple((int(a), int(b), str(c)) for a, b, c in d["segments"])
            return cls(str(d["id"]), int(d["size"]), bool(d["sealed"]), segs)
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageUnavailable(
                f"unreadable manifest at {path}", {"code": "BadManifest", "path": path}
            ) from exc


class _RangeReader(io.RawIOBase):
    """A seekable reader over pieces of stored objects, in ranged GETs of ``window``."""

    def __init__(
        self, driver: S3Driver, path: str, pieces: Sequence[_Piece], offset: int, window: int
    ) -> None:
        super().__init__()
        self._driver = driver
        self._path = path
        self._pieces = list(pieces)
        self._starts: list[int] = []
        total = 0
        for p in self._pieces:
            self._starts.append(total)
            total += p.length
        self._size = total
        self._pos = offset
        self._window = window
        self._body: Any = None
        self._left = 0  # bytes the open response still holds
        if offset < total:
            # The first window is fetched now: a reader opened before an overwrite
            # keeps the bytes it had (a pinned ETag guards every later window).
            self._open()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        if pos != self._pos:
            self._drop()
            self._pos = pos
        return pos

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
        self._body, self._left = None, 0

    def _open(self) -> None:
        i = max(j for j, s in enumerate(self._starts) if s <= self._pos)
        while self._pieces[i].length == 0:
            i += 1
        piece = self._pieces[i]
        within = self._pos - self._starts[i]
        n = min(self._window, piece.length - within)
        first = piece.start + within
        kwargs: dict[str, Any] = {}
        if piece.etag is not None:
            kwargs["IfMatch"] = piece.etag
        try:
            with _mapped(self._path):
                r = self._driver._client.get_object(
                    Bucket=self._driver.bucket,
                    Key=piece.key,
                    Range=f"bytes={first}-{first + n - 1}",
                    **kwargs,
                )
        except StorageUnavailable as exc:
            if exc.detail.get("code") in _CONFLICT:
                raise StorageUnavailable(
                    f"{self._path} was replaced while being read",
                    {"code": "ObjectChanged", "path": self._path},
                ) from exc
            raise
        self._body, self._left = r["Body"], n

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        if self._body is None or self._left == 0:
            self._drop()
            self._open()
        want = min(len(view), self._left)
        with _mapped(self._path):
            data = self._body.read(want)
        if not data:
            raise StorageUnavailable(
                f"object store closed the response early on {self._path}",
                {"code": "IncompleteRead", "path": self._path},
            )
        n = len(data)
        view[:n] = data
        self._pos += n
        self._left -= n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


class _S3Writer:
    """Appends to one appendable object: one segment and one manifest swap per write."""

    def __init__(self, driver: S3Driver, path: str, manifest: _Manifest, etag: str) -> None:
        self._driver = driver
        self._path = path
        self._manifest = manifest
        self._etag = etag
        self._closed = False

    @property
    def size(self) -> int:
        return self._manifest.size

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:
            raise StorageError(self._path, "writer is closed")
        d = self._driver
        body = bytes(data)  # the caller may reuse its buffer once this returns
        n = len(body)
        if n > _MAX_SINGLE:
            raise ValueError(f"one write takes at most {_MAX_SINGLE} bytes")
        if n == 0:
            self._refresh()  # nothing to add, but the same refusals apply
            return 0
        m = self._manifest
        # The trailing segments under S3's minimum part size are the object's durable
        # write buffer. Once it and this write reach that size they become one segment
        # (their bytes read back and stored again with this write's), so every segment
        # but the last few is big enough to be a part the commit copies server-side.
        keep = len(m.segments)
        while keep and m.segments[keep - 1][1] < MIN_PART_SIZE:
            keep -= 1
        buffered = m.segments[keep:]
        start = m.size
        if buffered and sum(seg[1] for seg in buffered) + n >= MIN_PART_SIZE:
            start = buffered[0][0]
            body = self._read_segments(buffered) + body
        else:
            keep = len(m.segments)
        # A fresh name per write: a merged segment starts where an earlier one did.
        name = f"{start:016x}-{secrets.token_hex(8)}"
        seg_key = d._segment_key(m.id, name)
        with _mapped(self._path):
            d._client.put_object(Bucket=d.bucket, Key=seg_key, Body=body)
        segment = (start, len(body), name)
        new = _Manifest(m.id, m.size + n, False, (*m.segments[:keep], segment))
        for _ in range(_CAS_ATTEMPTS):
            try:
                self._etag = d._swap(self._path, new, self._etag)
            except _Lost:
                try:
                    current = self._refresh(landed=segment)
                except (ObjectSealed, PathNotFound, InvalidOffset):
                    # Known not to be listed: the segment is an orphan; best effort.
                    d._delete_keys([seg_key])
                    raise
                if segment in current.segments:
                    return n  # our swap landed; its response was lost
                if current.segments != m.segments:
                    # Same size, other segments: someone else's swap, not ours.
                    d._delete_keys([seg_key])
                    raise InvalidOffset(self._path, "object changed under the writer") from None
                continue  # same size, unsealed, new ETag: swap again on top of it
            # Any other failure leaves the segment alone: the swap may have landed.
            self._manifest = new
            return n
        raise StorageUnavailable(
            f"{self._path} kept changing under a write",
            {"code": "Contention", "path": self._path},
        )

    def _read_segments(self, segments: Sequence[tuple[int, int, str]]) -> bytes:
        """The bytes of ``segments`` (immutable objects, so no version to pin)."""
        d = self._driver
        out = bytearray()
        for _, length, name in segments:
            with _mapped(self._path):
                data = d._client.get_object(
                    Bucket=d.bucket, Key=d._segment_key(self._manifest.id, name)
                )["Body"].read()
            if len(data) != length:
                raise StorageUnavailable(
                    f"segment of {self._path} has {len(data)} bytes, {length} listed",
                    {"code": "BadSegment", "path": self._path},
                )
            out += data
        return bytes(out)

    def _refresh(self, landed: tuple[int, int, str] | None = None) -> _Manifest:
        """Re-read the manifest and adopt it; raise the refusal a write at this
        writer's size gets (unless ``landed``, this writer's segment, is in it)."""
        d = self._driver
        found = d._manifest(self._path)
        if found is None or found[0].id != self._manifest.id:
            if found is None and d._moved_sealed(self._manifest.id):
                raise ObjectSealed(self._path, "object was sealed and moved")
            raise PathNotFound(self._path, "deleted or replaced while writing")
        current, etag = found
        if landed is None or landed not in current.segments:
            if current.sealed:
                raise ObjectSealed(self._path, "object is sealed")
            if current.size != self._manifest.size:
                raise InvalidOffset(
                    self._path,
                    f"object has {current.size} bytes, writer expected {self._manifest.size}",
                )
        self._manifest, self._etag = current, etag
        return current

    def commit(self) -> None:
        # Every write is a completed PutObject: durable when it returned.
        if self._closed:
            raise StorageError(self._path, "writer is closed")

    def cancel(self) -> None:
        self._closed = True
        d = self._driver
        found = d._manifest(self._path)
        if found is not None and found[0].id == self._manifest.id:
            with contextlib.suppress(_Lost, PathNotFound):
                d._delete_manifest(self._path, found[1])
        d._delete_prefix(d._segments_prefix(self._manifest.id))

    def close(self) -> None:
        self._closed = True


@dataclass(frozen=True, slots=True)
class _Snapshot:
    pieces: list[_Piece]
    size: int
    sealed: bool
    manifest: _Manifest | None  # None: a plain object
    etag: str  # of the plain object, or of the manifest


class _Lost(Exception):
    """A conditional request found the object changed (or gone) since it was read."""


class S3Driver:
    """Stores objects in ``bucket`` below ``prefix`` (see the module docstring)."""

    name = "s3"

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 8 << 20,
        read_window: int = READ_WINDOW,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = self.prefix + "/" if self.prefix else ""
        self.part_size = part_size
        self.read_window = read_window
        #: One segment per write: part-sized writes make segments the commit copies
        #: server-side, where 1 MiB ones would be merged (read back) on the way.
        self.write_size = part_size

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Driver:
        if not settings.s3_bucket:
            raise ConfigError(
                "INGEST_S3_BUCKET must be set for INGEST_STORAGE_DRIVER=s3", "s3_bucket"
            )
        if settings.s3_part_size < MIN_PART_SIZE:
            raise ConfigError(
                f"INGEST_S3_PART_SIZE must be at least 5MiB (S3's smallest part), "
                f"not {settings.s3_part_size} bytes",
                "s3_part_size",
            )
        if bool(settings.s3_access_key) != bool(settings.s3_secret_key):
            raise ConfigError(
                "INGEST_S3_ACCESS_KEY and INGEST_S3_SECRET_KEY go together", "s3_secret_key"
            )
        config = Config(
            region_name=settings.s3_region or None,
            s3={"addressing_style": settings.s3_addressing},  # type: ignore[arg-type]
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        # Without keys boto3 finds credentials its own way (instance role, web identity,
        # a shared credentials file): the usual set-up on AWS.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            config=config,
            aws_access_key_id=settings.s3_access_key or None,
            aws_secret_access_key=settings.s3_secret_key or None,
        )
        return cls(client, settings.s3_bucket, settings.s3_prefix, part_size=settings.s3_part_size)

    def __repr__(self) -> str:
        return f"S3Driver(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- keys ---------------------------------------------------------------------------

    def _file_key(self, path: str) -> str:
        return f"{self._base}files{path}"

    def _append_key(self, path: str) -> str:
        return f"{self._base}appends{path}"

    def _segments_prefix(self, oid: str) -> str:
        return f"{self._base}segments/{oid}/"

    def _segment_key(self, oid: str, name: str) -> str:
        return self._segments_prefix(oid) + name

    def _dir_prefixes(self, path: str) -> tuple[str, str]:
        """The key prefixes below which ``path``'s children live, in both namespaces."""
        tail = "/" if path == "/" else path + "/"
        return f"{self._base}files{tail}", f"{self._base}appends{tail}"

    # -- low-level helpers --------------------------------------------------------------

    def _head(self, key: str, path: str) -> dict[str, Any] | None:
        try:
            with _mapped(path):
                r = self._client.head_object(Bucket=self.bucket, Key=key)
        except PathNotFound:
            return None
        return dict(r)

    def _manifest(self, path: str) -> tuple[_Manifest, str] | None:
        try:
            with _mapped(path):
                r = self._client.get_object(Bucket=self.bucket, Key=self._append_key(path))
                raw = r["Body"].read()
        except PathNotFound:
            return None
        return _Manifest.from_json(raw, path), str(r["ETag"])

    def _swap(self, path: str, new: _Manifest, etag: str | None) -> str:
        """Store ``new`` at ``path``'s manifest if it still has ``etag`` (None: if there
        is none); return the new ETag. _Lost if it changed or vanished."""
        cond: dict[str, str] = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            with _mapped(path):
                r = self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._append_key(path),
                    Body=new.to_json(),
                    ContentType="application/json",
                    Metadata={_SIZE: str(new.size), _SEALED: "1" if new.sealed else "0"},
                    **cond,  # type: ignore[arg-type]
                )
        except (PathNotFound, StorageUnavailable) as exc:
            if isinstance(exc, PathNotFound) or exc.detail.get("code") in _CONFLICT:
                raise _Lost() from exc
            raise
        return str(r["ETag"])

    def _delete_manifest(self, path: str, etag: str) -> None:
        try:
            with _mapped(path):
                self._client.delete_object(
                    Bucket=self.bucket, Key=self._append_key(path), IfMatch=etag
                )
        except StorageUnavailable as exc:
            if exc.detail.get("code") in _CONFLICT:
                raise _Lost() from exc
            raise

    def _delete_if_match(self, key: str, path: str, etag: str) -> None:
        """Delete ``key`` if its ETag is still ``etag``: PathNotFound if it is gone,
        StorageUnavailable (PreconditionFailed) if it changed."""
        try:
            with _mapped(path):
                self._client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except StorageUnavailable as exc:
            # AWS S3 and moto answer a conditional delete of a missing key with 404;
            # SeaweedFS with 412, as for a changed one. Only a HEAD tells the two apart
            # (one more request, and only when a delete raced another change).
            if exc.detail.get("code") in _CONFLICT and self._head(key, path) is None:
                raise PathNotFound(path, "not found") from exc
            raise

    def _moved_sealed(self, oid: str) -> bool:
        return self._head(self._segment_key(oid, _MOVED_SEALED), oid) is not None

    def _keys(self, prefix: str, path: str) -> Iterator[dict[str, Any]]:
        with _mapped(path):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                yield from (dict(o) for o in page.get("Contents", ()))

    def _delete_keys(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch: list[Any] = [{"Key": k} for k in keys[i : i + 1000]]
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )

    def _delete_prefix(self, prefix: str, *, keep: str | None = None) -> None:
        with contextlib.suppress(StorageError):
            keys = [o["Key"] for o in self._keys(prefix, prefix) if o["Key"] != keep]
            self._delete_keys(keys)

    def _plain_or_manifest(
        self, path: str
    ) -> tuple[dict[str, Any], None] | tuple[None, tuple[_Manifest, str]]:
        """What is stored at ``path``: a plain object's HEAD, or a manifest."""
        head = self._head(self._file_key(path), path)
        if head is not None:
            return head, None
        found = self._manifest(path)
        if found is None:
            raise PathNotFound(path, "not found")
        return None, found

    def _snapshot(self, path: str) -> _Snapshot:
        """What ``path`` holds now, as pieces to read or copy."""
        head, found = self._plain_or_manifest(path)
        if head is not None:
            size = int(head["ContentLength"])
            piece = _Piece(self._file_key(path), 0, size, str(head["ETag"]))
            sealed = (head.get("Metadata") or {}).get(_SEALED) == "1"
            return _Snapshot([piece], size, sealed, None, str(head["ETag"]))
        assert found is not None
        m, etag = found
        return _Snapshot(self._pieces(m), m.size, m.sealed, m, etag)

    def _pieces(self, m: _Manifest) -> list[_Piece]:
        return [
            _Piece(self._segment_key(m.id, name), 0, length, None) for _, length, name in m.segments
        ]

    # -- the contract -------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        check_path(path)
        # One GET for a plain object (every record is one), where a reader would HEAD
        # first to pin the ETag: a single response is one version already.
        try:
            with _mapped(path):
                r = self._client.get_object(Bucket=self.bucket, Key=self._file_key(path))
                return bytes(r["Body"].read())
        except PathNotFound:
            pass
        found = self._manifest(path)
        if found is None:
            raise PathNotFound(path, "not found")
        with _RangeReader(self, path, self._pieces(found[0]), 0, self.read_window) as f:
            return f.read()

    def put_if_absent(self, path: str, content: bytes, *, durable: bool = True) -> bool:
        # One PutObject with If-None-Match: * decides among racing creators (S3 lets
        # the first to complete win and answers 412 to the others). The manifest
        # check only keeps an appendable object from being shadowed; like the
        # contract, it is not atomic against a writer.
        check_path(path)
        if self._head(self._append_key(path), path) is not None:
            return False
        for _ in range(_CAS_ATTEMPTS):
            try:
                with _mapped(path):
                    self._client.put_object(
                        Bucket=self.bucket,
                        Key=self._file_key(path),
                        Body=content,
                        IfNoneMatch="*",
                    )
            except StorageUnavailable as exc:
                code = exc.detail.get("code")
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in _CONFLICT:
                    # 409 ConditionalRequestConflict: a concurrent request on the key
                    # (e.g. a delete) completed first; it says nothing about who won.
                    time.sleep(0.01)
                    continue
                raise
            return True
        raise StorageUnavailable(
            f"{path} kept changing under a conditional create",
            {"code": "Contention", "path": path},
        )

    def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        check_path(path)
        with _mapped(path):
            self._client.put_object(Bucket=self.bucket, Key=self._file_key(path), Body=content)
        # The plain object wins from now on. A manifest it shadows is not looked for
        # here (that would double the requests of every record write): ``move`` drops
        # one at its source, ``delete`` with the object, the purge when it is old.

    def _drop_manifest(self, path: str) -> None:
        found = self._manifest(path)
        if found is None:
            return
        with contextlib.suppress(_Lost, PathNotFound):
            self._delete_manifest(path, found[1])
        self._delete_prefix(self._segments_prefix(found[0].id))

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        check_path(path)
        snap = self._snapshot(path)
        if offset < 0 or offset > snap.size:
            raise InvalidOffset(path, f"offset {offset} outside 0..{snap.size}")
        raw = _RangeReader(self, path, snap.pieces, offset, self.read_window)
        return io.BufferedReader(raw, buffer_size=1 << 16)

    def writer(self, path: str, append: bool = False) -> _S3Writer:
        check_path(path)
        for _ in range(_CAS_ATTEMPTS):
            head = self._head(self._file_key(path), path)
            if head is not None and (head.get("Metadata") or {}).get(_SEALED) == "1":
                raise ObjectSealed(path, "object is sealed")
            found = self._manifest(path)
            if found is not None and found[0].sealed and head is None:
                raise ObjectSealed(path, "object is sealed")
            if append and head is None:
                if found is None:
                    raise PathNotFound(path, "not found")
                return _S3Writer(self, path, found[0], found[1])
            oid = secrets.token_hex(16)
            segments: tuple[tuple[int, int, str], ...] = ()
            size = 0
            if append and head is not None:
                # Appending to a plain object: its bytes become the first segment.
                size = int(head["ContentLength"])
                if size:
                    name = f"{0:016x}-{secrets.token_hex(8)}"
                    self._copy_whole(path, head, self._segment_key(oid, name))
                    segments = ((0, size, name),)
            self._put_owner(oid, path)
            new = _Manifest(oid, size, False, segments)
            try:
                etag = self._swap(path, new, None if found is None else found[1])
            except _Lost:
                self._delete_prefix(self._segments_prefix(oid))
                continue  # sealed, replaced or created meanwhile: look again
            if head is not None:
                with contextlib.suppress(StorageError):
                    self._delete_if_match(self._file_key(path), path, str(head["ETag"]))
            if found is not None:
                self._delete_prefix(self._segments_prefix(found[0].id))
            return _S3Writer(self, path, new, etag)
        raise StorageUnavailable(
            f"{path} kept changing while a writer was opened", {"code": "Contention", "path": path}
        )

    def _put_owner(self, oid: str, path: str) -> None:
        with _mapped(path):
            self._client.put_object(
                Bucket=self.bucket, Key=self._segment_key(oid, _OWNER), Body=path.encode()
            )

    def _copy_whole(self, path: str, head: dict[str, Any], dest_key: str) -> None:
        size = int(head["ContentLength"])
        piece = _Piece(self._file_key(path), 0, size, str(head["ETag"]))
        if size > _MAX_SINGLE:
            self._compose(path, [piece], size, dest_key, {})
            return
        with _mapped(path):
            self._client.copy_object(
                Bucket=self.bucket,
                Key=dest_key,
                CopySource={"Bucket": self.bucket, "Key": piece.key},
                CopySourceIfMatch=str(piece.etag),
                MetadataDirective="REPLACE",
            )

    def seal(self, path: str) -> int:
        check_path(path)
        for _ in range(_CAS_ATTEMPTS):
            head, found = self._plain_or_manifest(path)
            if head is not None:
                size = int(head["ContentLength"])
                meta = dict(head.get("Metadata") or {})
                if meta.get(_SEALED) != "1":
                    # A plain object (never a staged upload): mark it by copying it
                    # onto itself with the flag, if it is still the one we saw.
                    key = self._file_key(path)
                    with _mapped(path):
                        self._client.copy_object(
                            Bucket=self.bucket,
                            Key=key,
                            CopySource={"Bucket": self.bucket, "Key": key},
                            CopySourceIfMatch=str(head["ETag"]),
                            Metadata={**meta, _SEALED: "1"},
                            MetadataDirective="REPLACE",
                        )
                return size
            assert found is not None
            m, etag = found
            if m.sealed:
                return m.size
            try:
                self._swap(path, _Manifest(m.id, m.size, True, m.segments), etag)
            except _Lost:
                continue  # a write landed first: seal what is there now
            return m.size
        raise StorageUnavailable(
            f"{path} kept changing while being sealed", {"code": "Contention", "path": path}
        )

    def stat(self, path: str) -> FileInfo:
        if path != "/":
            check_path(path)
            head = self._head(self._file_key(path), path)
            if head is not None:
                return FileInfo(
                    path, int(head["ContentLength"]), head["LastModified"].timestamp(), False
                )
            head = self._head(self._append_key(path), path)
            if head is not None:
                meta = head.get("Metadata") or {}
                if _SIZE in meta:
                    return FileInfo(path, int(meta[_SIZE]), head["LastModified"].timestamp(), False)
                found = self._manifest(path)
                if found is not None:
                    return FileInfo(path, found[0].size, head["LastModified"].timestamp(), False)
        for prefix in self._dir_prefixes(path):
            with _mapped(path):
                r = self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
            if r.get("KeyCount", 0):
                return FileInfo(path, 0, time.time(), True)
        raise PathNotFound(path, "not found")

    def list(self, path: str) -> list[str]:
        if path != "/":
            check_path(path)
        base = "" if path == "/" else path
        children: set[str] = set()
        for prefix in self._dir_prefixes(path):
            with _mapped(path):
                pages = self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/"
                )
                for page in pages:
                    for cp in page.get("CommonPrefixes", ()):
                        children.add(cp["Prefix"][len(prefix) :].rstrip("/"))
                    for o in page.get("Contents", ()):
                        children.add(o["Key"][len(prefix) :])
        children.discard("")
        if not children:
            raise PathNotFound(path, "not found")
        return sorted(f"{base}/{name}" for name in children)

    def sync(self, path: str) -> None:
        # Objects are durable once the request that stored them returned.
        check_path(path)
        self._plain_or_manifest(path)

    def move(self, source: str, dest: str) -> None:
        check_path(source)
        check_path(dest)
        if source == dest:
            self._snapshot(source)  # PathNotFound if missing; else nothing to do
            return
        dest_key = self._file_key(dest)
        for _ in range(_CAS_ATTEMPTS):
            snap = self._snapshot(source)
            meta = {_SEALED: "1"} if snap.sealed else {}
            if snap.manifest is None and snap.size <= _MAX_SINGLE:
                with _mapped(source):
                    self._client.copy_object(
                        Bucket=self.bucket,
                        Key=dest_key,
                        CopySource={"Bucket": self.bucket, "Key": snap.pieces[0].key},
                        CopySourceIfMatch=snap.etag,
                        MetadataDirective="COPY",
                    )
            else:
                self._compose(source, snap.pieces, snap.size, dest_key, meta)
            # The plain object at dest wins already (a manifest there is shadowed).
            if snap.manifest is None:
                with contextlib.suppress(PathNotFound):
                    self._delete_if_match(snap.pieces[0].key, source, snap.etag)
                # A manifest the plain source shadowed would show through now.
                self._drop_manifest(source)
                return
            oid = snap.manifest.id
            marker = self._segment_key(oid, _MOVED_SEALED)
            if snap.sealed:
                # Tells this object's writers it was sealed, once its manifest is gone.
                with _mapped(source):
                    self._client.put_object(Bucket=self.bucket, Key=marker, Body=b"")
            try:
                self._delete_manifest(source, snap.etag)
            except (_Lost, PathNotFound):
                # A write landed after the snapshot (the source was not sealed), or the
                # source went: copy again from what is there now.
                if not self._exists_anywhere(source):
                    return
                continue
            self._delete_prefix(self._segments_prefix(oid), keep=marker if snap.sealed else None)
            return
        raise StorageUnavailable(
            f"{source} kept changing while being moved", {"code": "Contention", "path": source}
        )

    def _exists_anywhere(self, path: str) -> bool:
        try:
            self._plain_or_manifest(path)
        except PathNotFound:
            return False
        return True

    def _compose(
        self, path: str, pieces: Sequence[_Piece], size: int, dest_key: str, meta: dict[str, str]
    ) -> None:
        """Store the concatenation of ``pieces`` (``size`` bytes) at ``dest_key``
        atomically: one PutObject for an empty object, else one multipart upload."""
        meta = {_SEALED: "1"} if meta.get(_SEALED) == "1" else {}
        if size == 0:
            with _mapped(path):
                self._client.put_object(Bucket=self.bucket, Key=dest_key, Body=b"", Metadata=meta)
            return
        whole = [p for p in pieces if p.length]
        if len(whole) == 1 and whole[0].start == 0 and size <= _MAX_SINGLE:
            # One stored object as it is (a staged upload of one segment; every piece
            # covers its whole object): one server-side copy instead of four requests.
            extra: dict[str, Any] = {}
            if whole[0].etag is not None:
                extra["CopySourceIfMatch"] = whole[0].etag
            with _mapped(path):
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=dest_key,
                    CopySource={"Bucket": self.bucket, "Key": whole[0].key},
                    Metadata=meta,
                    MetadataDirective="REPLACE",
                    **extra,
                )
            return
        # Stay within S3's 10,000 parts whatever the size (buffered parts grow).
        part = max(self.part_size, -(-size // (_MAX_PARTS - 100)))
        with _mapped(path):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=dest_key, Metadata=meta
            )["UploadId"]
        try:
            parts = _Composer(self, path, dest_key, upload_id, part).run(pieces)
            with _mapped(path):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=dest_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=dest_key, UploadId=upload_id
                )
            raise

    def delete(self, path: str) -> None:
        check_path(path)
        found_any = False
        files, appends = self._dir_prefixes(path)
        plain = [self._file_key(path), *(o["Key"] for o in self._keys(files, path))]
        manifests = [self._append_key(path), *(o["Key"] for o in self._keys(appends, path))]
        exact_plain = self._head(plain[0], path) is not None
        exact_manifest = self._head(manifests[0], path) is not None
        if not exact_plain:
            plain = plain[1:]
        if not exact_manifest:
            manifests = manifests[1:]
        found_any = bool(plain or manifests)
        oids: list[str] = []
        for key in manifests:
            with contextlib.suppress(PathNotFound), _mapped(path):
                raw = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                oids.append(_Manifest.from_json(raw, path).id)
        self._delete_keys_strict(path, [*plain, *manifests])
        for oid in oids:
            self._delete_prefix(self._segments_prefix(oid))
        if not found_any:
            raise PathNotFound(path, "not found")

    def _delete_keys_strict(self, path: str, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch: list[Any] = [{"Key": k} for k in keys[i : i + 1000]]
            with _mapped(path):
                r = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if r.get("Errors"):
                e = r["Errors"][0]
                raise StorageUnavailable(
                    f"could not delete {e.get('Key')}: {e.get('Code')}",
                    {"code": str(e.get("Code")), "path": path},
                )

    def walk(self, path: str) -> Iterator[FileInfo]:
        if path != "/":
            check_path(path)
        base = "" if path == "/" else path
        files, appends = self._dir_prefixes(path)
        entries: dict[str, FileInfo] = {}
        for o in self._keys(appends, path):
            p = f"{base}/{o['Key'][len(appends) :]}"
            with contextlib.suppress(PathNotFound):
                entries[p] = self.stat(p)
        for o in self._keys(files, path):
            p = f"{base}/{o['Key'][len(files) :]}"
            entries[p] = FileInfo(p, int(o["Size"]), o["LastModified"].timestamp(), False)
        for p in sorted(entries):
            yield entries[p]

    # -- housekeeping -------------------------------------------------------------------

    def purge_leftovers(self, older_than: float, *, now: float | None = None) -> int:
        """Remove what crashes and moves leave behind, if older than ``older_than``
        seconds: open multipart uploads (a crashed ``move``), segment sets whose
        manifest is gone (a crash, or a ``moved-sealed`` marker), and manifests a plain
        object was put over, with their segments. Return the count of multipart uploads
        and segment sets removed."""
        cutoff = (time.time() if now is None else now) - older_than
        removed = 0
        with _mapped("/"):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._base
            )
            for page in pages:
                for u in page.get("Uploads", ()):
                    if u["Initiated"].timestamp() < cutoff and self._parts_older(u, cutoff):
                        with contextlib.suppress(ClientError):
                            self._client.abort_multipart_upload(
                                Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                            )
                            removed += 1
        seg_root = f"{self._base}segments/"
        groups: dict[str, list[dict[str, Any]]] = {}
        for o in self._keys(seg_root, "/"):
            groups.setdefault(o["Key"][len(seg_root) :].split("/", 1)[0], []).append(o)
        for oid, objects in groups.items():
            if max(o["LastModified"].timestamp() for o in objects) >= cutoff:
                continue
            owner = next((o for o in objects if o["Key"].endswith("/" + _OWNER)), None)
            if owner is not None:
                with contextlib.suppress(PathNotFound), _mapped("/"):
                    raw = self._client.get_object(Bucket=self.bucket, Key=owner["Key"])
                    logical = raw["Body"].read().decode()
                    found = self._manifest(check_path(logical))
                    if found is not None and found[0].id == oid:
                        if self._head(self._file_key(logical), logical) is None:
                            continue  # still in use
                        # Shadowed by a plain object put over it (put_content does not
                        # look for one): nobody can read it, so it goes.
                        with contextlib.suppress(_Lost, PathNotFound):
                            self._delete_manifest(logical, found[1])
            self._delete_keys([o["Key"] for o in objects])
            removed += 1
        return removed

    def _parts_older(self, upload: Any, cutoff: float) -> bool:
        # A part uploaded since the cut-off means a move is still at work (and some
        # servers, moto among them, report no real initiation time).
        with contextlib.suppress(ClientError):
            r = self._client.list_parts(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            return all(p["LastModified"].timestamp() < cutoff for p in r.get("Parts", ()))
        return False


class _Composer:
    """Builds the parts of one multipart upload from pieces: server-side copies for
    runs of at least the minimum part size, a bounded buffer for smaller runs."""

    def __init__(
        self, driver: S3Driver, path: str, dest_key: str, upload_id: str, part: int
    ) -> None:
        self._d = driver
        self._path = path
        self._dest = dest_key
        self._upload_id = upload_id
        self._part = part
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []

    def run(self, pieces: Sequence[_Piece]) -> list[dict[str, Any]]:
        pieces = [p for p in pieces if p.length]
        for i, p in enumerate(pieces):
            last = i == len(pieces) - 1
            pos, end = p.start, p.start + p.length
            while pos < end:
                left = end - pos
                if len(self._buf) >= MIN_PART_SIZE:
                    self._flush()
                # The last part may be small: a final piece is copied whatever its size.
                if not self._buf and (left >= MIN_PART_SIZE or last):
                    n = min(left, _MAX_SINGLE)
                    # Never leave a tail too small to stand as a part of its own,
                    # unless it is the very end of the object.
                    if 0 < left - n < MIN_PART_SIZE and not last:
                        n = left - MIN_PART_SIZE
                    self._copy(p, pos, n)
                    pos += n
                else:
                    n = min(left, self._part - len(self._buf))
                    self._read(p, pos, n)
                    pos += n
                    if len(self._buf) >= self._part:
                        self._flush()
        if self._buf or not self._parts:
            self._flush()
        return self._parts

    def _copy(self, p: _Piece, pos: int, n: int) -> None:
        number = len(self._parts) + 1
        extra: dict[str, Any] = {} if p.etag is None else {"CopySourceIfMatch": p.etag}
        with _mapped(self._path):
            r = self._d._client.upload_part_copy(
                Bucket=self._d.bucket,
                Key=self._dest,
                UploadId=self._upload_id,
                PartNumber=number,
                CopySource={"Bucket": self._d.bucket, "Key": p.key},
                CopySourceRange=f"bytes={pos}-{pos + n - 1}",
                **extra,
            )
        self._parts.append({"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]})

    def _read(self, p: _Piece, pos: int, n: int) -> None:
        extra: dict[str, Any] = {} if p.etag is None else {"IfMatch": p.etag}
        with _mapped(self._path):
            r = self._d._client.get_object(
                Bucket=self._d.bucket, Key=p.key, Range=f"bytes={pos}-{pos + n - 1}", **extra
            )
            body = r["Body"]
            got = 0
            while got < n:
                chunk = body.read(min(1 << 20, n - got))
                if not chunk:
                    break
                self._buf += chunk
                got += len(chunk)
        if got != n:
            raise StorageUnavailable(
                f"short read composing {self._path}", {"code": "IncompleteRead", "path": self._path}
            )

    def _flush(self) -> None:
        number = len(self._parts) + 1
        with _mapped(self._path):
            r = self._d._client.upload_part(
                Bucket=self._d.bucket,
                Key=self._dest,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=bytes(self._buf),
            )
        self._parts.append({"PartNumber": number, "ETag": r["ETag"]})
        self._buf.clear()
