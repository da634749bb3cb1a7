"""Building the backends from configuration: the one place that names them.

Every process has one composition root -- ``Ingest.from_settings`` (the Python API,
the HTTP frontend, the CLI) and ``workers.app`` (the Celery worker) -- and each
asks this module for its storage driver and task queue, then injects them.
Nothing else constructs a concrete driver or queue, so adding a backend means
registering it in :data:`STORAGE_DRIVERS` and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ingest.config import ConfigError, Settings
from ingest.queue import CeleryTaskQueue, TaskQueue
from ingest.storage.base import StorageDriver

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["STORAGE_DRIVERS", "storage_driver", "task_queue"]


def _filesystem(settings: Settings) -> StorageDriver:
    from ingest.storage.filesystem import FilesystemDriver

    return FilesystemDriver.from_settings(settings)


#: ``INGEST_STORAGE_DRIVER`` → a factory taking the settings. Imports are local so
#: a process loads only the backend it uses.
STORAGE_DRIVERS: dict[str, Callable[[Settings], StorageDriver]] = {
    "filesystem": _filesystem,
}


def storage_driver(settings: Settings) -> StorageDriver:
    """The storage driver ``settings.storage_driver`` names, configured from ``settings``."""
    try:
        factory = STORAGE_DRIVERS[settings.storage_driver]
    except KeyError:
        raise ConfigError(
            f"INGEST_STORAGE_DRIVER: unknown driver {settings.storage_driver!r} "
            f"(known: {', '.join(sorted(STORAGE_DRIVERS))})",
            "storage_driver",
        ) from None
    return factory(settings)


def task_queue(settings: Settings, app: Celery | None = None) -> TaskQueue:
    """The task queue of ``settings``' broker: over ``app`` in a worker (which has
    its own Celery app), else over a sender-only app of its own."""
    if app is not None:
        return CeleryTaskQueue(app)
    return CeleryTaskQueue.from_urls(
        settings.broker_url,
        settings.result_backend,
        settings.visibility_timeout,
        settings.redis_ssl_options(),
    )
