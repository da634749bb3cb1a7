"""An in-process storage driver for unit tests. Not shared between processes."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from ingest.storage.base import (
    FileInfo,
    InvalidOffset,
    ObjectSealed,
    PathNotFound,
    StorageError,
    check_path,
)

__all__ = ["MemoryDriver"]


class _Object(bytearray):
    """A stored object. Writers hold the object itself, not its path, so like a file
    descriptor they follow it through a ``move``; the seal is part of the object."""

    sealed = False
    unlinked = False  # deleted, or replaced by another object at its path


class _MemoryWriter:
    def __init__(self, driver: MemoryDriver, path: str, obj: _Object) -> None:
        self._driver = driver
        self._path = path
        self._obj = obj
        self._size = len(obj)
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:
            raise StorageError(self._path, "writer is closed")
        with self._driver._lock:
            obj = self._obj
            if obj.sealed:
                raise ObjectSealed(self._path, "object is sealed")
            if obj.unlinked:
                raise PathNotFound(self._path, "deleted while writing")
            if len(obj) != self._size:
                raise InvalidOffset(
                    self._path, f"object has {len(obj)} bytes, writer expected {self._size}"
                )
            obj += data
            self._size = len(obj)
            if self._driver._objects.get(self._path) is obj:
                self._driver._mtimes[self._path] = time.time()
        return len(data)

    def commit(self) -> None:
        if self._closed:
            raise StorageError(self._path, "writer is closed")

    def cancel(self) -> None:
        self._closed = True
        with self._driver._lock:
            if self._driver._objects.get(self._path) is self._obj:
                self._driver._drop(self._path)

    def close(self) -> None:
        self._closed = True


class MemoryDriver:
    """Objects in a dict; directories are implied by object paths."""

    name = "memory"
    write_size = 1 << 20

    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}
        self._mtimes: dict[str, float] = {}
        self._lock = threading.RLock()

    def _drop(self, path: str) -> None:
        obj = self._objects.pop(path, None)
        if obj is not None:
            obj.unlinked = True
        self._mtimes.pop(path, None)

    def _is_dir(self, path: str) -> bool:
        if path == "/":
            return True
        prefix = path + "/"
        return any(k.startswith(prefix) for k in self._objects)

    def get_content(self, path: str) -> bytes:
        with self._lock:
            try:
                return bytes(self._objects[check_path(path)])
            except KeyError:
                raise PathNotFound(path, "not found") from None

    def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        with self._lock:
            self._drop(check_path(path))
            self._objects[path] = _Object(content)
            self._mtimes[path] = time.time()

    def put_if_absent(self, path: str, content: bytes, *, durable: bool = True) -> bool:
        with self._lock:  # the check and the store are one step
            if check_path(path) in self._objects or self._is_dir(path):
                return False
            self._objects[path] = _Object(content)
            self._mtimes[path] = time.time()
            return True

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        data = self.get_content(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(path, f"offset {offset} outside 0..{len(data)}")
        f = io.BytesIO(data)
        f.seek(offset)
        return f

    def writer(self, path: str, append: bool = False) -> _MemoryWriter:
        check_path(path)
        with self._lock:
            obj = self._objects.get(path)
            if obj is not None and obj.sealed:
                raise ObjectSealed(path, "object is sealed")
            if append:
                if obj is None:
                    raise PathNotFound(path, "not found")
            elif obj is None:
                obj = self._objects[path] = _Object()
                self._mtimes[path] = time.time()
            else:
                del obj[:]
                self._mtimes[path] = time.time()
            return _MemoryWriter(self, path, obj)

    def seal(self, path: str) -> int:
        with self._lock:
            try:
                obj = self._objects[check_path(path)]
            except KeyError:
                raise PathNotFound(path, "not found") from None
            obj.sealed = True
            return len(obj)

    def stat(self, path: str) -> FileInfo:
        with self._lock:
            if path != "/":
                check_path(path)
            if path in self._objects:
                return FileInfo(path, len(self._objects[path]), self._mtimes[path], False)
            if self._is_dir(path):
                return FileInfo(path, 0, time.time(), True)
        raise PathNotFound(path, "not found")

    def list(self, path: str) -> list[str]:
        with self._lock:
            if path != "/":
                check_path(path)
            prefix = "/" if path == "/" else path + "/"
            children = {
                prefix + k[len(prefix) :].split("/", 1)[0]
                for k in self._objects
                if k.startswith(prefix)
            }
            if not children:
                raise PathNotFound(path, "not found")
            return sorted(children)

    def sync(self, path: str) -> None:
        with self._lock:
            if check_path(path) not in self._objects:
                raise PathNotFound(path, "not found")

    def move(self, source: str, dest: str) -> None:
        check_path(dest)
        with self._lock:
            try:
                data = self._objects.pop(check_path(source))
            except KeyError:
                raise PathNotFound(source, "not found") from None
            self._mtimes.pop(source, None)
            if self._objects.get(dest) is not data:
                self._drop(dest)
            self._objects[dest] = data
            self._mtimes[dest] = time.time()

    def delete(self, path: str) -> None:
        with self._lock:
            check_path(path)
            prefix = path + "/"
            doomed = [k for k in self._objects if k == path or k.startswith(prefix)]
            if not doomed:
                raise PathNotFound(path, "not found")
            for k in doomed:
                self._drop(k)

    def walk(self, path: str) -> Iterator[FileInfo]:
        if path != "/":
            check_path(path)
        with self._lock:
            prefix = "/" if path == "/" else path + "/"
            items = sorted(
                (k, len(v), self._mtimes[k])
                for k, v in self._objects.items()
                if k.startswith(prefix)
            )
        for k, size, mtime in items:
            yield FileInfo(k, size, mtime, False)
