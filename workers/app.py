"""The Celery application: ``celery -A workers.app worker -Q verify``.

Configuration enters here, once: static options from :mod:`workers.celeryconfig`,
URLs and limits from :class:`ingest.config.Settings` read from the environment.
"""

from __future__ import annotations

import os

from celery import Celery

from ingest.config import Settings
from ingest.queue import TASK_PURGE, TASK_RECONCILE, client_config


def create_celery(settings: Settings) -> Celery:
    app = Celery("workers", include=["workers.tasks"])
    app.config_from_object("workers.celeryconfig")
    app.conf.update(
        {
            k: v
            for k, v in client_config(
                settings.broker_url, settings.result_backend, settings.visibility_timeout
            ).items()
            if k
            in (
                "broker_url",
                "result_backend",
                "broker_transport_options",
                "result_backend_transport_options",
            )
        }
    )
    app.conf.result_expires = settings.result_expires
    # Hard ceiling for any task; verify tasks get a per-call limit scaled to their size.
    app.conf.task_time_limit = settings.max_time_limit()
    app.conf.ingest_settings = settings
    # Celery beat: housekeeping that keeps the pipeline honest after crashes.
    app.conf.beat_schedule = {
        "reconcile-stuck-verifications": {
            "task": TASK_RECONCILE,
            "schedule": settings.reconcile_interval,
        },
        "purge-abandoned-uploads": {"task": TASK_PURGE, "schedule": settings.purge_interval},
    }
    return app


settings = Settings.from_env(os.environ)
app = create_celery(settings)
