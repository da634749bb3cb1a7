"""Delivery of registry events: one run per endpoint at a time, in order, with backoff.

``ingest.notify_deliver(endpoint)`` drains the endpoint's outbox
(:func:`ingest.notify.drain`) while holding the cluster-wide lock
``ingest:v1:lock:notify-<endpoint>``: two runs never send at once, so a receiver
sees the events in the order they were stored. It also keeps
``/notifications/<endpoint>/drain.lease`` fresh, which tells emitters that a run is
live and no kick is needed.

* A run ends when the outbox is empty. It then removes its lease, releases the lock
  and lists the outbox once more: an event stored after its last listing was either
  seen by this check, or its emitter found no lease and kicked a new run.
* The first failed delivery ends the run: the task goes to ``RETRY`` (Flower shows
  the endpoint and the reason) with the endpoint's backoff as countdown, and leaves a
  lease saying "backing off until …", so emitters do not kick meanwhile.
* When the retry budget runs out the oldest batch is given up: the task ends in
  ``FAILURE`` naming the endpoint, the reason and the number of events, after
  scheduling the next run for the rest.
* ``ingest.notify_sweep`` (beat, every :data:`SWEEP_INTERVAL` seconds) kicks every
  endpoint with waiting events and no live or scheduled run: kicks lost with the
  broker, runs lost with a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ingest import paths
from ingest.arguments import check_flag
from ingest.errors import ArgumentInvalid, TooManyRequests
from ingest.leases import Lease, hold_lease, write_lease
from ingest.locks import exclusive
from ingest.notify import DeliveryFailed, DrainResult, Endpoint, Outbox, delivery_live, drain
from ingest.queue import QUEUE_MAINTENANCE, TASK_NOTIFY, TASK_NOTIFY_SWEEP
from workers import events
from workers.app import app
from workers.tasks import CheckedTask

__all__ = ["SWEEP_INTERVAL", "deliver_notifications", "sweep_notifications"]

log = logging.getLogger(__name__)

#: Seconds one delivery run sends before it hands over to a new task (so a long
#: backlog does not hold a maintenance worker slot for long).
DRAIN_BUDGET = 20.0
#: How often beat looks for endpoints with events and no delivery run.
SWEEP_INTERVAL = 30.0


class NotifyTask(CheckedTask):
    """Delivery and sweep: acknowledged on receipt (a lost run is only a delayed one:
    the events stay in storage until delivered, and the sweep starts a new run). Its
    retries are its backoff, budgeted per endpoint in storage, not by Celery."""

    acks_late = False
    max_retries = None
    throws = (ArgumentInvalid, DeliveryFailed)

    def endpoints(self) -> tuple[Endpoint, ...]:
        return events.notifier(self.settings, self.driver, self.app).endpoints

    def endpoint(self, name: object) -> Endpoint:
        for endpoint in self.endpoints():
            if endpoint.name == name:
                return endpoint
        raise ArgumentInvalid(
            "not a configured notification endpoint",
            {"argument": "endpoint", "reason": "unknown", "value": repr(name)[:80]},
        )

    def time_limits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        longest = max((e.timeout for e in self.endpoints()), default=0.0)
        return int(DRAIN_BUDGET + 2 * longest + 30)


def _lock_ttl(endpoint: Endpoint) -> float:
    # Renewed after every batch; a batch takes at most one timeout.
    return 60.0 + 2 * endpoint.timeout


@app.task(bind=True, base=NotifyTask, name=TASK_NOTIFY)
def deliver_notifications(
    self: NotifyTask, endpoint: str, scheduled: bool = False
) -> dict[str, Any]:
    """Deliver ``endpoint``'s waiting events in order (see the module docstring).
    ``scheduled``: the run a backoff scheduled, which may send before the backoff's
    end as its own clock sees it."""
    ep = self.endpoint(endpoint)
    check_flag("scheduled", scheduled)
    settings, driver = self.settings, self.driver
    lease_path = paths.notify_lease_path(ep.name)
    while True:
        try:
            with exclusive(
                settings.redis_url,
                f"notify-{ep.name}",
                ttl=_lock_ttl(ep),
                tls=settings.redis_ssl_options(),
            ) as renew:
                with hold_lease(driver, lease_path, self.request.id):
                    result = drain(
                        driver,
                        ep,
                        events.post,
                        scheduled=scheduled,
                        budget=DRAIN_BUDGET,
                        renew=renew,
                    )
                if (result.failed or result.waiting) and result.retry_in is not None:
                    # Emitters need not kick before then: a run is scheduled.
                    until = time.time() + result.retry_in
                    write_lease(
                        driver,
                        lease_path,
                        Lease(self.request.id, time.time(), detail={"until": until}),
                    )
        except TooManyRequests:
            # Another run holds the endpoint; it lists the outbox again after it lets go.
            return {"endpoint": ep.name, "status": "busy"}
        outcome = _report(result)
        if result.failed:
            _retry(self, ep, result)
        if result.waiting:
            return outcome
        if result.more:
            _kick(ep.name)
            return outcome
        if not Outbox(driver, ep.name).waiting():
            return outcome
        scheduled = False  # stored after the run's last listing: go on


def _kick(endpoint: str, *, scheduled: bool = False, countdown: float | None = None) -> None:
    app.send_task(
        TASK_NOTIFY,
        args=(endpoint,),
        kwargs={"scheduled": True} if scheduled else {},
        countdown=countdown,
        argsrepr=f"endpoint={endpoint}",
        queue=QUEUE_MAINTENANCE,
    )


def _report(result: DrainResult) -> dict[str, Any]:
    status = (
        "failed"
        if result.failed
        else "backing-off"
        if result.waiting
        else "continuing"
        if result.more
        else "delivered"
    )
    return {**result.to_dict(), "status": status}


def _retry(task: NotifyTask, ep: Endpoint, result: DrainResult) -> None:
    """End a failed run: RETRY after the backoff, or FAILURE when events were given up."""
    delay = result.retry_in if result.retry_in is not None else ep.backoff
    if result.expired:
        _kick(ep.name, scheduled=True, countdown=delay)
        raise DeliveryFailed(
            f"endpoint {ep.name}: gave up on {result.expired} event(s) after "
            f"{ep.max_attempts} failed attempt(s): {result.reason}"
        )
    log.warning(
        "notifications to %s failed (%d in a row): %s; next attempt in %g s",
        ep.name,
        result.failures,
        result.reason,
        delay,
    )
    raise task.retry(
        args=(ep.name,),
        kwargs={"scheduled": True},
        countdown=delay,
        exc=DeliveryFailed(
            f"endpoint {ep.name}: {result.reason} ({result.failures} failed attempt(s) in a "
            f"row; next in {delay:g} s)"
        ),
    )


@app.task(bind=True, base=NotifyTask, name=TASK_NOTIFY_SWEEP)
def sweep_notifications(self: NotifyTask) -> dict[str, Any]:
    """Kick the delivery of every endpoint with waiting events and no live or
    scheduled run."""
    driver = self.driver
    kicked = []
    for ep in self.endpoints():
        if Outbox(driver, ep.name).waiting() and not delivery_live(driver, ep.name, time.time()):
            _kick(ep.name)
            kicked.append(ep.name)
    if kicked:
        log.info("notifications: kicked delivery to %s", ", ".join(kicked))
    return {"kicked": kicked}
