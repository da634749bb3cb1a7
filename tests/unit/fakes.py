"""Test doubles shared by the unit tests: a recording TaskQueue and small helpers."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ingest.api import Ingest
from ingest.commit import Progress, commit_upload
from ingest.config import Settings
from ingest.digests import Digest, parse_digest
from ingest.errors import StorageUnavailable
from ingest.queue import TaskInfo, TaskQueue
from ingest.storage.base import StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from ingest.storage.memory import MemoryDriver

__all__ = [
    "DRIVER_KINDS",
    "EnqueuedVerify",
    "RecordingQueue",
    "make_driver",
    "make_ingest",
    "sha256",
    "sha512",
    "worker_settings",
]

DRIVER_KINDS = ["memory", "filesystem"]


@dataclass(frozen=True, slots=True)
class EnqueuedVerify:
    """One ``enqueue_verify`` call, as the broker would have received it."""

    upload_id: str
    digest: str  # as the message carries it
    size: int | None
    task_id: str
    staged_size: int


class RecordingQueue:
    """A :class:`TaskQueue` that records sends and runs the task body on ``wait``.

    ``wait`` calls :func:`ingest.commit.commit_upload` synchronously with the
    arguments of the recorded send, the way a worker would; exceptions propagate
    unchanged (there is no result backend to translate them).
    """

    def __init__(self, driver: StorageDriver, *, progress: Progress | None = None) -> None:
        self.driver = driver
        self.progress = progress
        self.calls: list[EnqueuedVerify] = []
        self.waited: list[str] = []
        self.prehashes: list[str] = []
        #: What the health checks see: a broker that answers, and these workers.
        self.broker_up = True
        self.workers: list[str] = ["fake-worker@localhost"]
        self.pings: list[tuple[str, float]] = []

    def enqueue_prehash(self, upload_id: str) -> None:
        self.prehashes.append(upload_id)

    def enqueue_verify(
        self,
        upload_id: str,
        digest: Digest,
        size: int | None,
        *,
        task_id: str,
        staged_size: int,
        repository: str | None = None,
    ) -> None:
        self.calls.append(EnqueuedVerify(upload_id, str(digest), size, task_id, staged_size))

    def call(self, task_id: str) -> EnqueuedVerify:
        matches = [c for c in self.calls if c.task_id == task_id]
        assert len(matches) == 1, f"task {task_id} was enqueued {len(matches)} times"
        return matches[0]

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        self.waited.append(task_id)
        c = self.call(task_id)
        return commit_upload(
            self.driver,
            c.upload_id,
            parse_digest(c.digest),
            c.size,
            task_id=c.task_id,
            progress=self.progress,
        )

    async def wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        return self.wait(task_id, timeout)

    def info(self, task_id: str) -> TaskInfo:
        return TaskInfo(task_id, "PENDING")

    def ping_broker(self, timeout: float) -> None:
        self.pings.append(("broker", timeout))
        if not self.broker_up:
            raise StorageUnavailable("the task broker does not answer", {"error": "fake: down"})

    def ping_workers(self, timeout: float, limit: int | None = None) -> list[str]:
        self.pings.append(("workers", timeout))
        if not self.broker_up:
            raise StorageUnavailable("the task broker does not answer", {"error": "fake: down"})
        return list(self.workers[:limit] if limit else self.workers)


def _conforms(queue: RecordingQueue) -> TaskQueue:
    # mypy checks the Protocol conformance here, like Go's `var _ TaskQueue = ...`.
    return queue


def make_driver(kind: str, tmp_path: Path) -> StorageDriver:
    if kind == "memory":
        return MemoryDriver()
    if kind == "filesystem":
        return FilesystemDriver(tmp_path / "root")
    raise ValueError(kind)


def make_ingest(
    driver: StorageDriver, settings: Settings | None = None
) -> tuple[Ingest, RecordingQueue]:
    queue = RecordingQueue(driver)
    return Ingest(driver, _conforms(queue), settings), queue


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


@contextlib.contextmanager
def worker_settings(storage_root: Path, **changes: Any) -> Iterator[FilesystemDriver]:
    """Run the worker's tasks (called in-process) against ``storage_root`` and the
    other ``changes`` to its Settings; yields a driver on that root."""
    from workers.app import app

    settings = app.conf.ingest_settings
    # The tasks build their driver for the settings they see (workers.tasks).
    app.conf.ingest_settings = replace(settings, storage_root=str(storage_root), **changes)
    try:
        yield FilesystemDriver(storage_root)
    finally:
        app.conf.ingest_settings = settings
