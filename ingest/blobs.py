"""The content-addressed blob store and repository links (read side and linking):
:class:`BlobStore`, over a :class:`StorageDriver`.

Callers take the :class:`BlobStore` itself: with one implementation and no caller typed
against a narrower capability, per-capability Protocols (stat, open, link) were dead
code. Add one when a second implementation or a fake needs it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

from ingest import paths
from ingest.digests import Digest, parse_digest
from ingest.errors import BlobUnknown
from ingest.names import validate_name
from ingest.storage.base import PathNotFound, StorageDriver

__all__ = ["BlobInfo", "BlobReader", "BlobStore"]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob as one repository sees it. ``digest`` is the one asked for (maybe an
    alias); ``canonical`` is the sha256 the content is stored under."""

    repository: str
    digest: str
    canonical: str
    size: int
    created_at: float


class BlobReader(io.RawIOBase):
    """A seekable, read-only view of a committed blob, with its :class:`BlobInfo`."""

    def __init__(self, info: BlobInfo, f: BinaryIO) -> None:
        super().__init__()
        self.info = info
        self._f = f

    repository = property(lambda self: self.info.repository)
    digest = property(lambda self: self.info.digest)
    size = property(lambda self: self.info.size)
    created_at = property(lambda self: self.info.created_at)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._f.readinto(b)  # type: ignore[attr-defined,no-any-return]

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class BlobStore:
    """Blobs and links on a storage driver."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def exists(self, canonical: Digest) -> int | None:
        """The stored size of a canonical blob, or None if absent."""
        try:
            return self.driver.stat(paths.blob_data_path(canonical)).size
        except PathNotFound:
            return None

    def resolve(self, repository: str, digest: str | Digest) -> Digest:
        """The canonical digest ``digest`` names in ``repository``; BlobUnknown if unlinked."""
        validate_name(repository)
        d = parse_digest(digest) if isinstance(digest, str) else digest
        try:
            raw = self.driver.get_content(paths.layer_link_path(repository, d))
        except PathNotFound:
            raise BlobUnknown(detail={"repository": repository, "digest": str(d)}) from None
        return parse_digest(raw.decode("ascii").strip())

    def stat(self, repository: str, digest: str | Digest) -> BlobInfo:
        """Info of a blob linked in ``repository``; BlobUnknown otherwise."""
        d = parse_digest(digest) if isinstance(digest, str) else digest
        canonical = self.resolve(repository, d)
        try:
            fi = self.driver.stat(paths.blob_data_path(canonical))
        except PathNotFound:
            # Linked but missing: treat as unknown rather than fail the request.
            raise BlobUnknown(detail={"repository": repository, "digest": str(d)}) from None
        return BlobInfo(repository, str(d), str(canonical), fi.size, fi.mod_time)

    def open(self, repository: str, digest: str | Digest) -> BlobReader:
        """A reader of a blob linked in ``repository``; BlobUnknown otherwise."""
        info = self.stat(repository, digest)
        try:
            f = self.driver.reader(paths.blob_data_path(parse_digest(info.canonical)))
        except PathNotFound:
            raise BlobUnknown(detail={"repository": repository, "digest": info.digest}) from None
        return BlobReader(info, f)

    def unlink(self, repository: str, digest: Digest) -> None:
        """Remove ``digest`` from ``repository`` (BlobUnknown if not linked). Unlinking
        the canonical digest also removes the aliases that name it, so no alias is
        left pointing at a blob the repository no longer has."""
        canonical = self.resolve(repository, digest)
        self.driver.delete(paths.layer_link_dir(repository, digest))
        if digest != canonical:
            return
        for fi in list(self.driver.walk(paths.layers_dir(repository))):
            link = paths.parse_repository_link(fi.path)
            if link is None:
                continue  # a temporary file of a write in progress
            try:
                if self.driver.get_content(fi.path).decode().strip() == str(canonical):
                    self.driver.delete(link.dir)
            except PathNotFound:
                continue

    def link(self, repository: str, digest: Digest, canonical: Digest) -> None:
        """Record atomically that ``digest`` in ``repository`` names blob ``canonical``."""
        # put_content is temp + fsync + rename: a link is whole or absent.
        self.driver.put_content(paths.layer_link_path(repository, digest), str(canonical).encode())
