"""The storage driver contract.

Drivers store byte strings under *storage paths*: absolute, ``/``-separated
keys such as ``/blobs/sha256/ab/ab12…/data``, as :mod:`ingest.paths` spells them.
Unlike distribution's, they have no ``/docker/registry/v2`` prefix: the filesystem
driver keeps that blob at ``<root>/blobs/sha256/ab/ab12…/data``, and the S3 driver
maps each key into its bucket below its optional prefix (:mod:`ingest.storage.s3`).
Every path is checked by :func:`check_path` before a driver touches it, so nothing a
client sends can name a location outside the driver's root.

The semantics follow distribution's storage drivers, and the shared contract
suite (``tests/unit/storage/contract.py``) holds every backend to them.

A driver that makes writes atomic through a temporary object next to the target
(the filesystem driver does) names it ``TMP_MARKER`` + random characters, in the
same directory. Such an entry can show up in ``list`` and ``walk`` while a write is
in progress, or after a crash. It is no stored object: callers that list skip it
(:func:`is_temporary`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

__all__ = [
    "TMP_MARKER",
    "FileInfo",
    "FileWriter",
    "InvalidOffset",
    "InvalidPath",
    "ObjectSealed",
    "PathNotFound",
    "StorageDriver",
    "StorageError",
    "check_path",
    "exists",
    "is_temporary",
    "sync_in_background",
]

# One path component: no empty, '.' or '..' components, nothing outside a
# conservative character set. '+' appears in tarsum algorithm names.
_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._+=-]+)+")
_MAX_PATH = 1024

#: How a temporary object's name starts (see the module docstring). No key that
#: :mod:`ingest.paths` builds has a segment starting with a dot.
TMP_MARKER = ".tmp-"


class StorageError(Exception):
    """Base of driver-level errors; the core translates these into IngestError."""

    def __init__(self, path: str, message: str = "") -> None:
        self.path = path
        super().__init__(path, message)

    def __str__(self) -> str:
        return f"{type(self).__name__}: {self.args[1] or ''} {self.path}".strip()


class PathNotFound(StorageError):
    """Nothing is stored at the path."""


class InvalidPath(StorageError):
    """The path does not follow the storage path grammar."""


class InvalidOffset(StorageError):
    """A read or write offset the object cannot honour, or an append by a writer
    whose idea of the object's size is stale (another writer appended meanwhile)."""


class ObjectSealed(StorageError):
    """The object was sealed (:meth:`StorageDriver.seal`): it takes no more bytes."""


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid storage path, else raise InvalidPath."""
    if (
        not isinstance(path, str)
        or len(path) > _MAX_PATH
        or not _PATH_RE.fullmatch(path)
        or any(part in (".", "..") for part in path.split("/"))
    ):
        raise InvalidPath(str(path)[:200], "invalid storage path")
    return path


def exists(driver: StorageDriver, path: str) -> bool:
    """Whether an object (or directory) is stored at ``path``."""
    try:
        driver.stat(path)
    except PathNotFound:
        return False
    return True


def is_temporary(path: str) -> bool:
    """Whether ``path`` (a key, or the bare name of a listed entry) names a driver's
    temporary object rather than something stored."""
    return path.rpartition("/")[2].startswith(TMP_MARKER)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat`` reports. ``mod_time`` is seconds since the epoch."""

    path: str
    size: int
    mod_time: float
    is_dir: bool


class FileWriter(Protocol):
    """An append-only writer to one stored object.

    Bytes written are not guaranteed durable until :meth:`commit` returns.
    """

    @property
    def size(self) -> int:
        """Bytes in the object as this writer knows it (its own appends included):
        where its next write lands."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data`` at :attr:`size`; return the number of bytes written (all).

        All or nothing with respect to a seal: ObjectSealed if the object was sealed,
        however long ago this writer was opened and wherever the object was moved
        since, and then none of ``data`` reaches the object. PathNotFound if the
        object was deleted. InvalidOffset if another writer appended since this one
        last wrote. In each case nothing is written.
        """

    def commit(self) -> None:
        """Make everything written durable (flush + fsync). The writer stays usable."""

    def cancel(self) -> None:
        """Discard the object. Idempotent."""

    def close(self) -> None:
        """Release the handle without committing. Idempotent."""


@runtime_checkable
class StorageDriver(Protocol):
    """A flat key space of byte objects with directory-like listing."""

    name: str
    #: Bytes per ``write`` for a caller copying a stream into a writer. Each write may
    #: cost a request (S3), and the caller holds that much in memory.
    write_size: int

    def get_content(self, path: str) -> bytes:
        """The whole object; for small objects only. PathNotFound if missing."""

    def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        """Store ``content`` atomically: readers see the old object or the new one,
        never a part. With ``durable`` (the default) it survives a machine crash
        once this returns; without, only a process crash (no fsync: for records
        that can be rebuilt). Creates parent directories."""

    def put_if_absent(self, path: str, content: bytes, *, durable: bool = True) -> bool:
        """Store ``content`` at ``path`` only if no object is stored there; True if
        this call created it, False if one was there.

        Atomic against a concurrent ``put_if_absent`` of the same path: of any number
        racing, exactly one stores its content, and readers never see a part of it.
        (Not against a concurrent ``put_content``, ``writer`` or ``move`` to the path.)
        A driver may answer False for an object its own retried request created (a lost
        response): a caller that must know writes content unique to it and reads it
        back. ``durable`` as for ``put_content``; creates parent directories. This is
        the one primitive two processes can decide a race with (see :mod:`ingest.gc`)."""

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        """A seekable binary file positioned at ``offset``. PathNotFound if missing;
        InvalidOffset if ``offset`` is negative or past the end."""

    def writer(self, path: str, append: bool = False) -> FileWriter:
        """A writer to ``path``: truncated unless ``append``. With ``append`` the
        object must exist (PathNotFound otherwise). ObjectSealed if it is sealed."""

    def seal(self, path: str) -> int:
        """Freeze the object at ``path`` and return its final size.

        Waits for a write in progress to end. From then on no writer -- opened before
        or after, in any process -- can change the object: its writes raise
        ObjectSealed. The seal belongs to the object, so it travels with ``move``;
        ``put_content`` at the path stores a new, unsealed object. Idempotent.
        PathNotFound if missing.

        This is what makes a verification mean something: bytes hashed after the
        seal are the bytes any later ``move`` carries."""

    def stat(self, path: str) -> FileInfo:
        """Size, modification time and kind of ``path``. PathNotFound if missing."""

    def list(self, path: str) -> list[str]:
        """Full paths of the direct children of directory ``path``, sorted.
        PathNotFound if ``path`` does not exist."""

    def sync(self, path: str) -> None:
        """Make the object's bytes durable where it is (e.g. fsync). PathNotFound if
        missing. Lets a caller start the flush early, so a later ``move`` is quick."""

    def move(self, source: str, dest: str) -> None:
        """Atomically rename ``source`` to ``dest``, overwriting it, after making the
        source durable. A missing source raises PathNotFound and leaves ``dest``
        untouched."""

    def delete(self, path: str) -> None:
        """Remove ``path`` and everything below it; siblings are never touched.
        PathNotFound if missing."""

    def walk(self, path: str) -> Iterator[FileInfo]:
        """Every object (not directory) below ``path``, depth first. Empty if missing."""


def sync_in_background(driver: StorageDriver, path: str) -> threading.Thread:
    """Start ``driver.sync(path)`` on a daemon thread and return it. Best effort: a
    failure is swallowed, because the ``move`` that follows fsyncs again and reports
    any real error."""

    def run() -> None:
        with contextlib.suppress(Exception):
            driver.sync(path)

    t = threading.Thread(target=run, name="ingest-early-sync", daemon=True)
    t.start()
    return t
