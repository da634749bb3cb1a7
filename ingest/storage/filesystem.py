"""A storage driver over a local (or shared, e.g. NFS) directory tree.

Durability: ``put_content`` writes a temporary file next to the target, fsyncs
it, renames it into place and fsyncs the directory (``durable=False`` skips the
fsyncs, for records that can be rebuilt); ``move`` fsyncs the source before
renaming and the directories after. A crash therefore leaves either the old or
the new object, plus at worst a stray ``.tmp-*`` file for the purge job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ingest.errors import StorageUnavailable
from ingest.storage.base import FileInfo, InvalidOffset, PathNotFound, StorageError, check_path

__all__ = ["FilesystemDriver"]

TMP_MARKER = ".tmp-"
_PUT_ATTEMPTS = 5


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[None]:
    """Translate OSError into the driver taxonomy at this one boundary."""
    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise PathNotFound(path, "not found") from exc
    except OSError as exc:
        # ENOSPC, EIO, EROFS, EDQUOT...: our side, and possibly transient.
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StorageUnavailable(
            f"storage error on {path}: {exc.strerror or exc}", {"errno": name, "path": path}
        ) from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter:
    def __init__(self, full: Path, logical: str, append: bool) -> None:
        self._logical = logical
        # Unbuffered: callers already write in large slices, and commit() then only
        # has to fsync.
        self._f: BinaryIO | None = open(full, "ab" if append else "wb", buffering=0)  # noqa: SIM115
        self._full = full
        self._size = os.fstat(self._f.fileno()).st_size

    @property
    def size(self) -> int:
        return self._size

    def _file(self) -> BinaryIO:
        if self._f is None:
            raise StorageError(self._logical, "writer is closed")
        return self._f

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        f = self._file()
        view = memoryview(data)
        with _mapped(self._logical):
            while view:  # raw writes may be short
                n = f.write(view)
                if n is None:  # pragma: no cover - only for non-blocking files
                    continue
                self._size += n
                view = view[n:]
        return len(data)

    def commit(self) -> None:
        with _mapped(self._logical):
            os.fsync(self._file().fileno())

    def cancel(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self._full.unlink()

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            f.close()


class FilesystemDriver:
    """Stores objects as files below ``root``."""

    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemDriver({str(self.root)!r})"

    def _full(self, path: str) -> Path:
        return self.root / check_path(path).lstrip("/")

    def _makedirs(self, directory: Path, *, durable: bool = True) -> None:
        # Create missing parents and fsync each new entry's parent, so a fresh
        # directory chain survives a crash together with the file put in it.
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            with contextlib.suppress(FileExistsError):
                m.mkdir()
            if durable:
                _fsync_dir(m.parent)

    def get_content(self, path: str) -> bytes:
        full = self._full(path)
        with _mapped(path):
            if full.is_dir():
                raise PathNotFound(path, "is a directory")
            return full.read_bytes()

    def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        full = self._full(path)
        with _mapped(path):
            for attempt in range(_PUT_ATTEMPTS):
                self._makedirs(full.parent, durable=durable)
                try:
                    self._write_and_replace(full, content, durable)
                    break
                except FileNotFoundError:
                    # A concurrent delete removed the parent between our mkdir and
                    # the write (e.g. a blob unlinked while it is being linked):
                    # recreate it and try again; the last attempt reports it.
                    if attempt == _PUT_ATTEMPTS - 1:
                        raise
            if durable:
                # If a concurrent delete already removed the directory, it removed
                # our object too: put-then-delete, a valid order; nothing to sync.
                with contextlib.suppress(FileNotFoundError):
                    _fsync_dir(full.parent)

    @staticmethod
    def _write_and_replace(full: Path, content: bytes, durable: bool) -> None:
        # Fixed-length name: a target name near NAME_MAX must still fit.
        tmp = full.with_name(f"{TMP_MARKER}{secrets.token_hex(8)}")
        try:
            with open(tmp, "wb", buffering=0) as f:
                view = memoryview(content)
                while view:
                    n = f.write(view)
                    view = view[n or 0 :]
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        full = self._full(path)
        with _mapped(path):
            if full.is_dir():
                raise PathNotFound(path, "is a directory")
            f = open(full, "rb")  # noqa: SIM115 - returned to the caller
            try:
                size = os.fstat(f.fileno()).st_size
                if offset < 0 or offset > size:
                    raise InvalidOffset(path, f"offset {offset} outside 0..{size}")
                f.seek(offset)
            except BaseException:
                f.close()
                raise
            return f

    def writer(self, path: str, append: bool = False) -> _FileWriter:
        full = self._full(path)
        with _mapped(path):
            if append:
                if not full.is_file():
                    raise PathNotFound(path, "not found")
            else:
                # Durability of staged bytes comes from commit() and the fsync in
                # move(); the directory entry needs no sync of its own here.
                self._makedirs(full.parent, durable=False)
            return _FileWriter(full, path, append)

    def stat(self, path: str) -> FileInfo:
        full = self._full(path) if path != "/" else self.root
        with _mapped(path):
            st = full.stat()
        is_dir = full.is_dir()
        return FileInfo(path, 0 if is_dir else st.st_size, st.st_mtime, is_dir)

    def list(self, path: str) -> list[str]:
        full = self._full(path) if path != "/" else self.root
        prefix = "" if path == "/" else path
        with _mapped(path):
            if not full.is_dir():
                raise PathNotFound(path, "not a directory")
            return sorted(f"{prefix}/{name}" for name in os.listdir(full))

    def sync(self, path: str) -> None:
        full = self._full(path)
        with _mapped(path):
            fd = os.open(full, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def move(self, source: str, dest: str) -> None:
        src, dst = self._full(source), self._full(dest)
        with _mapped(source):
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is durable before its new name is
            finally:
                os.close(fd)
        with _mapped(dest):
            self._makedirs(dst.parent)
            os.replace(src, dst)
            _fsync_dir(dst.parent)
            if src.parent != dst.parent:
                _fsync_dir(src.parent)

    def delete(self, path: str) -> None:
        full = self._full(path)
        with _mapped(path):
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full)
            else:
                full.unlink()

    def walk(self, path: str) -> Iterator[FileInfo]:
        full = self._full(path) if path != "/" else self.root
        prefix = "" if path == "/" else path
        if not full.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames.sort()
            rel = os.path.relpath(dirpath, full)
            base = prefix if rel == "." else f"{prefix}/{rel}"
            for name in sorted(filenames):
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(dirpath, name))
                    yield FileInfo(f"{base}/{name}", st.st_size, st.st_mtime, False)
