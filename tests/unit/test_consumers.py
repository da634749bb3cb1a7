"""The worker's start-up check for routed queues that no live worker consumes
(workers.consumers); with real workers: tests/integration/test_monitoring.py."""

from __future__ import annotations

import logging

import pytest

from ingest.queue import (
    QUEUE_MAINTENANCE,
    QUEUE_PREHASH,
    QUEUE_VERIFY,
    TASK_PREHASH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_VERIFY,
    WORKER_QUEUES,
)
from workers import consumers
from workers.app import app


def test_every_routed_queue_is_known_with_the_tasks_it_holds() -> None:
    routed = consumers.routed_queues(app)
    assert set(routed) == {QUEUE_VERIFY, QUEUE_PREHASH, QUEUE_MAINTENANCE}
    assert TASK_VERIFY in routed[QUEUE_VERIFY]
    assert TASK_PREHASH in routed[QUEUE_PREHASH]
    assert {TASK_RECONCILE, TASK_PURGE} <= set(routed[QUEUE_MAINTENANCE])
    # What `ingest worker` and the compose file run consumes every one of them.
    assert set(WORKER_QUEUES.split(",")) == set(routed)


def test_queue_names_are_read_from_active_queues_replies() -> None:
    replies = [
        {"w1@h": [{"name": "verify", "exchange": {}}, {"name": "prehash"}]},
        {"w2@h": [{"name": "maintenance"}], "w3@h": None},
        "garbage",
    ]
    assert consumers.consumed_queues(replies) == {"verify", "prehash", "maintenance"}
    assert consumers.consumed_queues({"w@h": [{"name": "verify"}]}) == {"verify"}
    assert consumers.consumed_queues(None) == set()


def test_a_queue_nobody_consumes_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumers, "_ask", lambda app, timeout: {QUEUE_PREHASH})
    with caplog.at_level(logging.WARNING, logger="workers.consumers"):
        missing = consumers.check_consumers(app, [QUEUE_VERIFY])
    assert missing == [QUEUE_MAINTENANCE]
    (record,) = [r for r in caplog.records if r.name == "workers.consumers"]
    message = record.getMessage()
    assert "'maintenance'" in message
    assert TASK_PURGE in message
    assert TASK_RECONCILE in message
    assert f"-Q {WORKER_QUEUES}" in message


def test_no_warning_when_every_routed_queue_has_a_consumer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumers, "_ask", lambda app, timeout: {QUEUE_MAINTENANCE})
    with caplog.at_level(logging.WARNING, logger="workers.consumers"):
        assert consumers.check_consumers(app, [QUEUE_VERIFY, QUEUE_PREHASH]) == []
    assert not [r for r in caplog.records if r.name == "workers.consumers"]


def test_a_broker_that_does_not_answer_still_leaves_the_workers_own_queues(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down(app: object, timeout: float) -> set[str]:
        raise ConnectionError("refused")

    monkeypatch.setattr(consumers, "_ask", down)
    with caplog.at_level(logging.WARNING, logger="workers.consumers"):
        missing = consumers.check_consumers(app, WORKER_QUEUES.split(","))
    assert missing == []
    assert any("could not ask" in r.getMessage() for r in caplog.records)
