"""Building the backends from configuration: the one place that names them.

Every process has one composition root -- ``Ingest.from_settings`` (the Python API,
the HTTP frontend, the CLI) and ``workers.app`` (the Celery worker) -- and each
asks this module for its storage driver and task queue, then injects them; the HTTP
frontend asks it for its :func:`authenticator` too.
Nothing else constructs a concrete driver or queue, so adding a backend means
registering it in :data:`STORAGE_DRIVERS` and nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ingest.auth import Authenticator
from ingest.config import ConfigError, Settings
from ingest.notify import Kick, Notifier, load_endpoints
from ingest.outcomes import OutcomeCounter
from ingest.queue import CeleryTaskQueue, TaskQueue
from ingest.storage.base import StorageDriver

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "STORAGE_DRIVERS",
    "authenticator",
    "notifier",
    "outcome_counter",
    "storage_driver",
    "task_queue",
]

log = logging.getLogger(__name__)


def _filesystem(settings: Settings) -> StorageDriver:
    from ingest.storage.filesystem import FilesystemDriver

    return FilesystemDriver.from_settings(settings)


def _s3(settings: Settings) -> StorageDriver:
    from ingest.storage.s3 import S3Driver

    return S3Driver.from_settings(settings)


#: ``INGEST_STORAGE_DRIVER`` → a factory taking the settings. Imports are local so
#: a process loads only the backend it uses (boto3 only with ``s3``).
STORAGE_DRIVERS: dict[str, Callable[[Settings], StorageDriver]] = {
    "filesystem": _filesystem,
    "s3": _s3,
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
        return CeleryTaskQueue(app)  # a worker re-sends rarely: no batching
    return CeleryTaskQueue.from_urls(
        settings.broker_url,
        settings.result_backend,
        settings.visibility_timeout,
        settings.redis_ssl_options(),
        batch_window=settings.batch_window,
        batch_max=settings.batch_max,
        batch_max_size=settings.batch_max_size,
    )


def outcome_counter(settings: Settings) -> OutcomeCounter:
    """The cluster-wide verification outcome counters (:mod:`ingest.outcomes`) in
    ``REDIS_URL``: workers count, the frontend's ``/metrics`` reads."""
    # An attempt's marker outlives its redelivery (the visibility timeout) and a
    # reconcile's re-send (the grace), with room to spare.
    marker_ttl = 2 * (settings.visibility_timeout + int(settings.reconcile_grace))
    return OutcomeCounter(
        settings.redis_url, marker_ttl=marker_ttl, tls=settings.redis_ssl_options()
    )


def notifier(
    settings: Settings,
    driver: StorageDriver,
    queue: TaskQueue | None = None,
    kick: Kick | None = None,
) -> Notifier:
    """The event notifier of ``settings`` (``INGEST_NOTIFY_*``): it parses and checks
    the endpoints, so a process with a bad endpoint list refuses to start
    (ConfigError). Its kicks go through ``queue`` (a Celery queue) unless ``kick``
    is given (a worker sends them through its own app)."""
    endpoints = load_endpoints(settings.notify_endpoints)
    if kick is None and isinstance(queue, CeleryTaskQueue):
        kick = queue.enqueue_notify
    for endpoint in endpoints:
        log.info("notifications: endpoint %r", endpoint)  # its repr hides header values
    return Notifier(
        driver,
        endpoints,
        kick=kick,
        pulls=settings.notify_pulls,
        base_url=settings.notify_base_url,
    )


def authenticator(settings: Settings) -> Authenticator:
    """The authentication mode ``settings.auth`` names (``INGEST_AUTH``), built from
    its settings; ConfigError if it is unset (the HTTP frontend calls this at start-up,
    so an unconfigured frontend refuses to start) or its files will not do. Imports
    are local: only the mode in use loads bcrypt or PyJWT."""
    if settings.auth == "none":
        from ingest.auth.none import NoAuth

        log.warning(
            "INGEST_AUTH=none: authentication is OFF: anyone who reaches this port can "
            "push, pull and delete"
        )
        return NoAuth()
    if settings.auth == "htpasswd":
        from ingest.auth.htpasswd import HtpasswdAuth

        return HtpasswdAuth(settings.auth_htpasswd, settings.auth_realm)
    if settings.auth == "token":
        from ingest.auth.token import TokenAuth

        return TokenAuth(
            settings.auth_token_realm,
            settings.auth_token_service,
            settings.auth_token_issuer,
            settings.auth_token_certs,
            settings.auth_token_jwks,
        )
    raise ConfigError("INGEST_AUTH must be set: none, htpasswd or token", "auth")
