"""Unit-test isolation shared by every module under tests/unit."""

from __future__ import annotations

import sys

import fakeredis
import pytest

from ingest.outcomes import OutcomeCounter


@pytest.fixture(autouse=True)
def outcome_counter(monkeypatch: pytest.MonkeyPatch) -> OutcomeCounter:
    """Tasks run in-process count verification outcomes in a fresh fakeredis, never in
    whatever Redis ``REDIS_URL`` (or the default 127.0.0.1:6379) names; the counter is
    the fixture's value, for tests that read the counts."""
    counter = OutcomeCounter(
        "redis://fake", marker_ttl=3600, client=fakeredis.FakeRedis(server=fakeredis.FakeServer())
    )
    tasks = sys.modules.get("workers.tasks")
    if tasks is not None:  # imported by the test module: only then can a task run
        monkeypatch.setattr(tasks, "outcome_counter", lambda settings: counter)
    return counter
