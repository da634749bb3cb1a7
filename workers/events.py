"""Registry events on the worker side: the blob push a commit emits, and the HTTP
sender the delivery task posts with (:mod:`ingest.notify` is the core of both).

Kept apart from :mod:`workers.tasks` (which calls :func:`committed`) and
:mod:`workers.notify` (the delivery tasks, which import the task base classes), so
neither imports the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import httpx
from celery import Celery

from ingest import backends
from ingest.config import Settings
from ingest.errors import IngestError
from ingest.notify import MEDIA_TYPE, DeliveryFailed, Endpoint, Notifier, Origin
from ingest.queue import QUEUE_MAINTENANCE, TASK_NOTIFY
from ingest.storage.base import StorageDriver, StorageError
from ingest.uploads import Staging

__all__ = ["committed", "notifier", "post"]

#: The notifier of the settings it was built for (a test that swaps the worker's
#: settings gets a new one).
_built: dict[str, tuple[Settings, StorageDriver, Notifier]] = {}


def notifier(settings: Settings, driver: StorageDriver, app: Celery) -> Notifier:
    """This worker process's notifier: its kicks are sent through the worker's app."""
    built = _built.get("notifier")
    if built is None or built[0] is not settings or built[1] is not driver:

        def kick(endpoint: str) -> None:
            app.send_task(
                TASK_NOTIFY,
                args=(endpoint,),
                argsrepr=f"endpoint={endpoint}",
                queue=QUEUE_MAINTENANCE,
                retry=False,
            )

        built = _built["notifier"] = (
            settings,
            driver,
            backends.notifier(settings, driver, kick=kick),
        )
    return built[2]


def committed(
    settings: Settings,
    driver: StorageDriver,
    app: Celery,
    result: Mapping[str, Any],
    task_id: str | None,
) -> None:
    """A verification task (``task_id``) got ``result`` from its commit: the blob's
    push event, unless the commit was another attempt's (a rerun that found the upload
    committed already must not announce it twice). A redelivered task emits again:
    its first run may have died before it could (at least once, as distribution)."""
    if not settings.notify_endpoints:  # the hot path when notifications are off
        return
    if result.get("task_id") != task_id:
        return
    who: Origin | None = None
    with contextlib.suppress(IngestError, StorageError, ValueError, TypeError):
        recorded = Staging(driver).state(str(result.get("upload_id"))).origin
        who = Origin.from_dict(recorded) if recorded else None
    notifier(settings, driver, app).blob_committed(result, who)


def post(endpoint: Endpoint, body: bytes) -> None:
    """POST an envelope to ``endpoint``; DeliveryFailed with a short reason unless it
    answers 2xx. Redirects are not followed (a receiver that moved is reconfigured,
    not guessed at); header values never appear in a reason."""
    headers = [("Content-Type", MEDIA_TYPE), *endpoint.headers]
    try:
        with httpx.Client(timeout=endpoint.timeout, follow_redirects=False) as client:
            response = client.post(endpoint.url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise DeliveryFailed(f"timed out after {endpoint.timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"HTTP {response.status_code}")
