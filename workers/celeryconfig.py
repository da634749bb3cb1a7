"""Static Celery settings: no URLs, no secrets (those come from Settings).

Why each matters for verified ingest:

* JSON only, both ways: a pickled message or result must never be executed.
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a verification whose
  worker dies is redelivered, not lost. Tasks are idempotent, so a duplicate is
  harmless (see ``ingest.commit``).
* ``worker_prefetch_multiplier = 1``: a worker holds one reserved verification
  at a time, so a long blob does not hide others behind it.
* Events on, ``result_extended`` on: Flower shows names, arguments and states.
* ``beat_scheduler``: beat schedules only while it holds the beat lock, so a second
  beat (or ``ingest worker --beat`` on two hosts) stands by instead of sending every
  periodic task twice (:mod:`workers.beat`).
"""

from ingest.queue import (
    QUEUE_MAINTENANCE,
    QUEUE_PREHASH,
    QUEUE_VERIFY,
    TASK_FSCK,
    TASK_GC,
    TASK_NOTIFY,
    TASK_NOTIFY_SWEEP,
    TASK_PREHASH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_VERIFY,
    TASK_VERIFY_BATCH,
)

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# No task_track_started: a STARTED write per task costs ~10% of a small verification;
# large ones report PROGRESS at once instead (ingest.commit.PROGRESS_MIN_SIZE).
task_track_started = False

task_send_sent_event = True
worker_send_task_events = True
result_extended = True

task_default_queue = QUEUE_VERIFY
task_routes = {
    TASK_VERIFY: {"queue": QUEUE_VERIFY},
    TASK_VERIFY_BATCH: {"queue": QUEUE_VERIFY},
    TASK_PREHASH: {"queue": QUEUE_PREHASH},
    TASK_RECONCILE: {"queue": QUEUE_MAINTENANCE},
    TASK_PURGE: {"queue": QUEUE_MAINTENANCE},
    TASK_FSCK: {"queue": QUEUE_MAINTENANCE},
    TASK_GC: {"queue": QUEUE_MAINTENANCE},
    # Registry events (workers.notify): never behind verifications, never slowing them.
    TASK_NOTIFY: {"queue": QUEUE_MAINTENANCE},
    TASK_NOTIFY_SWEEP: {"queue": QUEUE_MAINTENANCE},
}

beat_scheduler = "workers.beat:LockedScheduler"

worker_hijack_root_logger = False
broker_connection_retry_on_startup = True
timezone = "UTC"
enable_utc = True
