"""The Celery application: ``celery -A workers.app worker -Q verify,prehash,maintenance``
(what ``ingest worker`` runs; a worker started on fewer queues warns about every
routed queue no live worker consumes: :mod:`workers.consumers`).

Configuration enters here, once: static options from :mod:`workers.celeryconfig`,
URLs and limits from :class:`ingest.config.Settings` read from the environment.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from ingest import logs, paths
from ingest.config import Settings
from ingest.errors import IngestError
from ingest.notify import load_endpoints
from ingest.queue import (
    TASK_FSCK,
    TASK_GC,
    TASK_NOTIFY_SWEEP,
    TASK_PURGE,
    TASK_RECONCILE,
    client_config,
)
from workers import consumers  # noqa: F401 - connects the start-up queue check

log = logging.getLogger("workers")

#: The shortest life of a scheduled message: the clocks of beat's host and the
#: workers' differ a little, and a message may wait a while in a worker whose pool
#: is busy with long verifications (expiry is checked again before it runs).
MIN_EXPIRES = 60.0


def _periodic(task: str, every: float) -> dict[str, Any]:
    """A beat entry whose message expires when the next one is due (at least
    MIN_EXPIRES): a queue nobody consumes then holds messages the next worker
    discards unrun (revoked on receipt; RabbitMQ drops them itself), instead of a
    backlog of stale runs that all execute when a consumer comes back."""
    return {"task": task, "schedule": every, "options": {"expires": max(every, MIN_EXPIRES)}}


def create_celery(settings: Settings) -> Celery:
    # Checked here, so a worker (or beat) with a bad endpoint list refuses to start.
    endpoints = load_endpoints(settings.notify_endpoints)
    app = Celery("workers", include=["workers.tasks", "workers.notify"])
    app.config_from_object("workers.celeryconfig")
    app.conf.update(
        {
            k: v
            for k, v in client_config(
                settings.broker_url,
                settings.result_backend,
                settings.visibility_timeout,
                settings.redis_ssl_options(),
            ).items()
            if k
            in (
                "broker_url",
                "result_backend",
                "broker_transport_options",
                "result_backend_transport_options",
                "broker_use_ssl",  # only for rediss:// URLs
                "redis_backend_use_ssl",
            )
        }
    )
    app.conf.result_expires = settings.result_expires
    # Hard ceiling for any task; verify tasks get a per-call limit scaled to their size.
    app.conf.task_time_limit = settings.max_time_limit()
    app.conf.ingest_settings = settings
    # Celery beat: housekeeping that keeps the pipeline honest after crashes.
    # Only the beat holding the beat lock sends these (workers.beat, beat_scheduler).
    app.conf.beat_schedule = {
        "reconcile-stuck-verifications": _periodic(TASK_RECONCILE, settings.reconcile_interval),
        "purge-abandoned-uploads": _periodic(TASK_PURGE, settings.purge_interval),
    }
    if settings.fsck_interval > 0:
        # A bounded, resumable share of the blob check (ingest.fsck); its cursor is in
        # storage, so a missed or lost run only delays the pass.
        app.conf.beat_schedule["fsck-share"] = _periodic(TASK_FSCK, settings.fsck_interval)
    if settings.gc_interval > 0:
        # Off by default: it deletes data, so an operator opts in (ingest.gc).
        app.conf.beat_schedule["garbage-collection"] = _periodic(TASK_GC, settings.gc_interval)
    if endpoints:
        # Kicks lost with the broker, delivery runs lost with a worker (workers.notify).
        app.conf.beat_schedule["notify-sweep"] = _periodic(TASK_NOTIFY_SWEEP, 30.0)
    return app


@signals.setup_logging.connect
def _setup_logging(logfile: str | None = None, **_: Any) -> None:
    # Connecting this signal stops Celery from installing its own handlers:
    # worker, beat and pool processes log JSON lines with upload and task ids
    # (to ``-f/--logfile`` when given).
    logs.configure(settings.log_level, settings.log_format, logfile or None)


@signals.task_prerun.connect
def _bind_ids(task_id: str | None = None, args: Any = None, **_: Any) -> None:
    logs.task_id_var.set(task_id)
    upload_id = args[0] if args and isinstance(args[0], str) else None
    logs.upload_id_var.set(upload_id)


@signals.task_received.connect
def log_received(request: Any = None, **_: Any) -> None:
    """Celery's own "received" line names the task only; this one binds the task to
    its upload (the first argument of every upload task), so both ids find it."""
    args = getattr(request, "args", None)
    if not args or not isinstance(args[0], str):
        return
    try:
        upload_id = paths.validate_upload_id(args[0])
    except IngestError:
        return  # not an upload task, or a forged message: its refusal is logged
    log.info(
        "%s received for upload %s",
        request.name,
        upload_id,
        extra={"upload_id": upload_id, "task_id": request.id},
    )


@signals.task_postrun.connect
def _unbind_ids(**_: Any) -> None:
    logs.task_id_var.set(None)
    logs.upload_id_var.set(None)


settings = Settings.from_env(os.environ)
app = create_celery(settings)
