"""At start-up, a worker warns about every routed queue that no live worker consumes.

A worker started with too few queues (``-Q verify`` once was the README's advice)
runs fine and silently leaves work behind: purge, reconcile, fsck and gc go to
``maintenance``, prehashes to ``prehash``, and wait there for a consumer that never
comes. So when a worker is ready it asks the live workers (a control broadcast,
answered within :data:`INSPECT_TIMEOUT`) which queues they consume and logs one
warning per routed queue nobody does, naming the queue and the tasks it holds up.
It runs in a thread of its own: the worker takes tasks meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery, signals

from ingest.queue import WORKER_QUEUES

__all__ = ["INSPECT_TIMEOUT", "check_consumers", "consumed_queues", "routed_queues"]

log = logging.getLogger(__name__)

#: Seconds the live workers have to say which queues they consume.
INSPECT_TIMEOUT = 1.0


def routed_queues(app: Celery) -> dict[str, list[str]]:
    """Every queue tasks are routed to (``task_routes``, and the default queue) →
    the names of the tasks routed there."""
    routed: dict[str, list[str]] = {str(app.conf.task_default_queue): []}
    for task, route in (app.conf.task_routes or {}).items():
        queue = route.get("queue") if isinstance(route, Mapping) else None
        if queue:
            routed.setdefault(str(queue), []).append(str(task))
    return routed


def consumed_queues(replies: Any) -> set[str]:
    """The queue names in ``inspect().active_queues()`` replies (``[{worker:
    [queue info, …]}, …]`` or ``{worker: [queue info, …]}``)."""
    names: set[str] = set()
    if isinstance(replies, Mapping):
        replies = [replies]
    for reply in replies or ():
        if not isinstance(reply, Mapping):
            continue
        for queues in reply.values():
            for queue in queues or ():
                if isinstance(queue, Mapping) and queue.get("name"):
                    names.add(str(queue["name"]))
    return names


def _ask(app: Celery, timeout: float) -> set[str]:
    with app.connection_for_write() as conn:
        replies = app.control.inspect(timeout=timeout, connection=conn).active_queues()
    return consumed_queues(replies)


def check_consumers(
    app: Celery, own: Iterable[str], *, timeout: float = INSPECT_TIMEOUT
) -> list[str]:
    """The routed queues that neither ``own`` (this worker's) nor any live worker
    answering within ``timeout`` consumes, in order; each is logged as a warning."""
    consumed = set(own)
    try:
        consumed |= _ask(app, timeout)
    except Exception as exc:  # noqa: BLE001 - a start-up check must not stop the worker
        log.warning("could not ask the live workers which queues they consume: %r", exc)
    missing = []
    for queue, tasks in sorted(routed_queues(app).items()):
        if queue in consumed:
            continue
        missing.append(queue)
        log.warning(
            "no live worker consumes queue %r: %s wait there until one does. Run "
            "`ingest worker` (-Q %s), or add workers with -Q %s",
            queue,
            ", ".join(sorted(tasks)) or "its tasks",
            WORKER_QUEUES,
            queue,
            extra={"queue": queue, "tasks": sorted(tasks)},
        )
    if not missing:
        log.info("every routed queue has a live consumer: %s", ", ".join(sorted(consumed)))
    return missing


@signals.worker_ready.connect
def _check_at_start(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if not isinstance(app, Celery):
        return
    own = list(app.amqp.queues.consume_from or ())
    threading.Thread(
        target=check_consumers, args=(app, own), name="queue-consumer-check", daemon=True
    ).start()
