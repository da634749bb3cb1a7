"""A storage driver over a local (or shared, e.g. NFS) directory tree.

Durability: ``put_content`` writes a temporary file next to the target, fsyncs
it, renames it into place and fsyncs the directory (``durable=False`` skips the
fsyncs, for records that can be rebuilt); ``move`` fsyncs the source before
renaming and the directories after. A crash therefore leaves either the old or
the new object, plus at worst a stray ``.tmp-*`` file for the purge job.

Seals (:meth:`FilesystemDriver.seal`): a sealed file is one with no write
permission bits. Every append takes an exclusive lock on the file (``flock`` on
its own descriptor, plus an in-process lock, because on NFS ``flock`` is emulated
with POSIX locks that do not exclude threads of one process), then checks the
mode and size of the open descriptor before writing. ``seal`` takes the same
lock to clear the write bits. So a write either ends before the seal or sees it,
and because the mode belongs to the inode, a descriptor opened long before (which
keeps writing into the inode wherever it is renamed to) sees it too. This holds on
local filesystems, CephFS and NFSv4; every writer must go through this driver.

Permissions: files are created with ``file_mode`` (default 0640) and directories
with ``dir_mode`` (0750); the umask can only take bits away. Sealed files, which
include every committed blob, keep the read bits of ``file_mode`` only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ingest.config import Settings
from ingest.errors import StorageUnavailable
from ingest.storage.base import (
    TMP_MARKER,
    FileInfo,
    InvalidOffset,
    ObjectSealed,
    PathNotFound,
    StorageError,
    check_path,
)

__all__ = ["DEFAULT_DIR_MODE", "DEFAULT_FILE_MODE", "FilesystemDriver"]

_PUT_ATTEMPTS = 5
DEFAULT_FILE_MODE = 0o640
DEFAULT_DIR_MODE = 0o750
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH

# In-process half of the append/seal lock, striped by inode (see the module docstring).
_STRIPES = tuple(threading.Lock() for _ in range(64))


def _is_sealed(st: os.stat_result) -> bool:
    return not st.st_mode & _WRITE_BITS


@contextlib.contextmanager
def _locked(fd: int, inode: tuple[int, int]) -> Iterator[os.stat_result]:
    """Hold the append/seal lock of the file open as ``fd``; yields its fresh stat."""
    with _STRIPES[hash(inode) % len(_STRIPES)]:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield os.fstat(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


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


def _write_temp(full: Path, content: bytes, durable: bool, mode: int) -> Path:
    """``content`` in a new temporary file next to ``full`` (fsync'd if ``durable``),
    for an atomic rename or link onto ``full``; removed again if writing fails."""
    # Fixed-length name: a target name near NAME_MAX must still fit.
    tmp = full.with_name(f"{TMP_MARKER}{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb", buffering=0) as f:
            view = memoryview(content)
            while view:
                n = f.write(view)
                view = view[n or 0 :]
            if durable:
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


class _FileWriter:
    def __init__(self, full: Path, logical: str, append: bool, file_mode: int) -> None:
        self._logical = logical
        self._full = full
        flags = os.O_WRONLY | os.O_APPEND | (0 if append else os.O_CREAT)
        if not append:
            # A new object (the common case: a new upload) needs no lock: nobody else
            # can have sealed or opened it yet.
            with contextlib.suppress(FileExistsError):
                fd = os.open(full, flags | os.O_EXCL, file_mode)
                try:
                    os.fchmod(fd, file_mode)  # exact, whatever the umask
                    st = os.fstat(fd)
                except BaseException:
                    os.close(fd)
                    raise
                self._inode = (st.st_dev, st.st_ino)
                self._size = 0
                self._fd: int | None = fd
                return
        try:
            fd = os.open(full, flags, file_mode)
        except PermissionError:
            # Without root, a sealed file cannot even be opened for writing.
            if _is_sealed(os.stat(full)):
                raise ObjectSealed(logical, "object is sealed") from None
            raise
        try:
            st = os.fstat(fd)
            self._inode = (st.st_dev, st.st_ino)
            with _locked(fd, self._inode) as st:
                if _is_sealed(st):
                    raise ObjectSealed(logical, "object is sealed")
                if not append:
                    os.ftruncate(fd, 0)
                    os.fchmod(fd, file_mode)  # exact, whatever the umask
                self._size = st.st_size if append else 0
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @property
    def size(self) -> int:
        return self._size

    def _file(self) -> int:
        if self._fd is None:
            raise StorageError(self._logical, "writer is closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        fd = self._file()
        view = memoryview(data).cast("B")
        total = len(view)
        with _mapped(self._logical), _locked(fd, self._inode) as st:
            if _is_sealed(st):
                raise ObjectSealed(self._logical, "object is sealed")
            if st.st_nlink == 0:
                raise PathNotFound(self._logical, "deleted while writing")
            if st.st_size != self._size:
                raise InvalidOffset(
                    self._logical, f"object has {st.st_size} bytes, writer expected {self._size}"
                )
            while view:  # writes may be short
                n = os.write(fd, view)
                self._size += n
                view = view[n:]
        return total

    def commit(self) -> None:
        with _mapped(self._logical):
            os.fsync(self._file())

    def cancel(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self._full.unlink()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class FilesystemDriver:
    """Stores objects as files below ``root``."""

    name = "filesystem"
    write_size = 1 << 20

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        file_mode: int = DEFAULT_FILE_MODE,
        dir_mode: int = DEFAULT_DIR_MODE,
    ) -> None:
        if not file_mode & stat.S_IWUSR or file_mode & ~0o777:
            # Without the owner's write bit every new file would look sealed.
            raise ValueError(f"file mode {file_mode:#o} must be within 0777 and owner-writable")
        if dir_mode & 0o700 != 0o700 or dir_mode & ~0o777:
            raise ValueError(f"directory mode {dir_mode:#o} must be within 0777, rwx for the owner")
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.root = Path(root).resolve()
        self.root.mkdir(mode=dir_mode, parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> FilesystemDriver:
        return cls(settings.storage_root, file_mode=settings.file_mode, dir_mode=settings.dir_mode)

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
                m.mkdir(mode=self.dir_mode)
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
                    self._write_and_replace(full, content, durable, self.file_mode)
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

    def put_if_absent(self, path: str, content: bytes, *, durable: bool = True) -> bool:
        full = self._full(path)
        with _mapped(path):
            for attempt in range(_PUT_ATTEMPTS):
                self._makedirs(full.parent, durable=durable)
                try:
                    created = self._write_and_link(full, content, durable, self.file_mode)
                    break
                except FileNotFoundError:
                    # The parent went (a concurrent delete): as in put_content.
                    if attempt == _PUT_ATTEMPTS - 1:
                        raise
            if created and durable:
                with contextlib.suppress(FileNotFoundError):
                    _fsync_dir(full.parent)
            return created

    @staticmethod
    def _write_and_link(full: Path, content: bytes, durable: bool, mode: int) -> bool:
        # The bytes go to a temporary file first, so a reader never sees a part; then
        # link(2), which (unlike rename) fails with EEXIST if anything has the name:
        # the exclusive step, atomic on local file systems, NFS and CephFS. (An NFS
        # retransmission of a link that landed gets EEXIST: a False for our own
        # object, which the contract allows.)
        tmp = _write_temp(full, content, durable, mode)
        try:
            os.link(tmp, full)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return True

    @staticmethod
    def _write_and_replace(full: Path, content: bytes, durable: bool, mode: int) -> None:
        tmp = _write_temp(full, content, durable, mode)
        try:
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
            return _FileWriter(full, path, append, self.file_mode)

    def seal(self, path: str) -> int:
        full = self._full(path)
        with _mapped(path):
            st = full.stat()
            if stat.S_ISDIR(st.st_mode):
                raise PathNotFound(path, "is a directory")
            if _is_sealed(st):
                return st.st_size  # sealed stays sealed: no lock needed to read its size
            try:
                fd = os.open(full, os.O_RDWR)  # NFS: an exclusive lock needs a writable fd
            except PermissionError:
                # Not writable to us: already sealed (or not ours to seal at all).
                st = os.stat(full)
                if _is_sealed(st):
                    return st.st_size
                raise
            try:
                st = os.fstat(fd)
                with _locked(fd, (st.st_dev, st.st_ino)) as st:
                    if not _is_sealed(st):
                        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~_WRITE_BITS)
                    return st.st_size
            finally:
                os.close(fd)

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
