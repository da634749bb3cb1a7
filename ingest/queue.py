"""The one seam between the library/frontends and Celery.

Frontends enqueue work by task *name* (``send_task``), so they never import the
worker code, and read outcomes back through :class:`TaskQueue`. This module is
the only place in ``ingest`` that touches Celery, and it imports Celery lazily,
so ``import ingest`` stays free of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ingest.errors import IngestError, StorageUnavailable, Unknown, VerificationTimeout, from_dict

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "QUEUE_VERIFY",
    "TASK_VERIFY",
    "CeleryTaskQueue",
    "TaskInfo",
    "TaskQueue",
    "client_config",
]

TASK_VERIFY = "ingest.verify_upload"
QUEUE_VERIFY = "verify"
#: Custom task state reported while a verification streams the staged bytes.
STATE_PROGRESS = "PROGRESS"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What the result backend knows of a task. ``state`` is Celery's state name
    (PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE)."""

    task_id: str
    state: str
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TaskQueue(Protocol):
    """Enqueue verifications and observe their outcome."""

    def enqueue_verify(
        self, upload_id: str, digest: str, size: int | None, *, task_id: str, time_limit: int
    ) -> None:
        """Send ``ingest.verify_upload(upload_id, digest, size)`` under ``task_id``.
        Raises StorageUnavailable if the broker cannot be reached."""

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """The committed result; raise the recorded IngestError on failure, or
        VerificationTimeout if ``timeout`` seconds pass first."""

    def info(self, task_id: str) -> TaskInfo:
        """The task's current state, progress and outcome, without waiting."""


def client_config(broker_url: str, result_backend: str, visibility_timeout: int) -> dict[str, Any]:
    """The Celery settings a *sender* needs; the worker's full set extends these."""
    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": QUEUE_VERIFY,
        "task_routes": {TASK_VERIFY: {"queue": QUEUE_VERIFY}},
        "broker_transport_options": {"visibility_timeout": visibility_timeout},
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_send_sent_event": True,
        "result_extended": True,
    }


def _error_from_result(value: object, task_id: str) -> IngestError:
    if isinstance(value, IngestError):
        return value
    if isinstance(value, dict) and "code" in value:
        return from_dict(value)
    return Unknown(
        "verification failed unexpectedly",
        {"task_id": task_id, "error": type(value).__name__, "message": str(value)[:500]},
    )


class CeleryTaskQueue:
    """:class:`TaskQueue` over a Celery app (its own, or one passed in)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def from_urls(
        cls, broker_url: str, result_backend: str, visibility_timeout: int = 3600
    ) -> CeleryTaskQueue:
        from celery import Celery

        app = Celery("ingest-client", set_as_current=False)
        app.conf.update(client_config(broker_url, result_backend, visibility_timeout))
        return cls(app)

    def enqueue_verify(
        self, upload_id: str, digest: str, size: int | None, *, task_id: str, time_limit: int
    ) -> None:
        from kombu.exceptions import OperationalError

        try:
            self.app.send_task(
                TASK_VERIFY,
                args=(upload_id, digest, size),
                task_id=task_id,
                queue=QUEUE_VERIFY,
                time_limit=time_limit,
                soft_time_limit=max(1, time_limit - 10),
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
            )
        except OperationalError as exc:
            raise StorageUnavailable(
                "the task broker is unreachable", {"error": str(exc)[:300]}
            ) from exc

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        from celery.exceptions import TimeoutError as CeleryTimeout

        res = self.app.AsyncResult(task_id)
        try:
            # The Redis backend waits on pub/sub: no polling loop per waiter.
            value = res.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise VerificationTimeout(
                f"verification not finished after {timeout:g} s",
                {"task_id": task_id, "state": res.state},
            ) from None
        except OSError as exc:
            raise StorageUnavailable(
                "result backend unreachable", {"error": str(exc)[:300]}
            ) from exc
        if res.state == "SUCCESS" and isinstance(value, dict):
            return value
        raise _error_from_result(value, task_id)

    def info(self, task_id: str) -> TaskInfo:
        res = self.app.AsyncResult(task_id)
        state = res.state
        meta = res.info
        if state == STATE_PROGRESS and isinstance(meta, dict):
            return TaskInfo(task_id, state, progress=meta)
        if state == "SUCCESS" and isinstance(meta, dict):
            return TaskInfo(task_id, state, result=meta)
        if state == "FAILURE":
            return TaskInfo(task_id, state, error=_error_from_result(meta, task_id).to_dict())
        return TaskInfo(task_id, state)
