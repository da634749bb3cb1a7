"""Verification outcome counters (ingest.outcomes), against fakeredis with Lua:
labelled outcome and code, and each attempt counted once however often it is
reported."""

from __future__ import annotations

import fakeredis
import pytest

from devtools.localredis import free_port
from ingest.errors import (
    ArgumentInvalid,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    StorageUnavailable,
)
from ingest.outcomes import (
    MARKER_PREFIX,
    TOTALS_KEY,
    Outcome,
    OutcomeCounter,
    committed,
    rejected,
)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def counter(server: fakeredis.FakeServer, ttl: int = 600) -> OutcomeCounter:
    return OutcomeCounter(
        "redis://unused", marker_ttl=ttl, client=fakeredis.FakeRedis(server=server)
    )


def test_commits_and_rejections_are_counted_apart_with_their_codes(
    server: fakeredis.FakeServer,
) -> None:
    c = counter(server)
    mismatch = DigestInvalid("digest mismatch", {"reason": "mismatch"})
    assert c.record(committed("t1"), committed("t2")) == 2
    assert c.record(rejected("t3", mismatch)) == 1
    assert c.record(rejected("t4", BlobUploadUnknown())) == 1
    assert c.totals() == {
        ("committed", ""): 2,
        ("rejected", "DIGEST_INVALID"): 1,
        ("rejected", "BLOB_UPLOAD_UNKNOWN"): 1,
    }


def test_an_attempt_reported_twice_counts_once(server: fakeredis.FakeServer) -> None:
    first, second = counter(server), counter(server)  # two worker processes
    assert first.record(committed("redelivered")) == 1
    assert second.record(committed("redelivered")) == 0
    # Whatever the second report says: the attempt's first outcome stands.
    assert second.record(rejected("redelivered", DigestInvalid())) == 0
    # Twice within one call too (a batch naming an attempt twice).
    assert first.record(committed("twice"), committed("twice")) == 1
    assert first.totals() == {("committed", ""): 2}


def test_a_new_attempt_of_the_same_upload_counts_again(server: fakeredis.FakeServer) -> None:
    c = counter(server)
    c.record(rejected("attempt-1", DigestInvalid()))
    c.record(committed("attempt-2"))  # `ingest retry` with the right digest
    assert c.totals() == {("rejected", "DIGEST_INVALID"): 1, ("committed", ""): 1}


def test_an_attempts_marker_expires_and_the_totals_do_not(server: fakeredis.FakeServer) -> None:
    c = counter(server, ttl=1234)
    c.record(committed("t"))
    r = fakeredis.FakeRedis(server=server)
    assert 1230 <= r.ttl(MARKER_PREFIX + "t") <= 1234
    assert r.ttl(TOTALS_KEY) == -1


def test_failures_that_judge_a_message_not_an_upload_are_not_outcomes() -> None:
    assert rejected("t", ArgumentInvalid("bad", {"argument": "digest"})) is None
    assert rejected("t", BlobUploadInvalid("late", {"reason": "superseded"})) is None
    assert rejected("t", BlobUploadInvalid("open", {"reason": "not-finished"})) is None
    assert rejected("", DigestInvalid()) is None
    # Every other failure of an attempt is its outcome, with its stable code.
    assert rejected("t", BlobUploadInvalid("cancelled")) == Outcome(
        "t", "rejected", "BLOB_UPLOAD_INVALID"
    )
    assert rejected("t", StorageUnavailable()) == Outcome("t", "rejected", "UNAVAILABLE")
    assert rejected("t", RuntimeError("boom")) == Outcome("t", "rejected", "UNKNOWN")


def test_a_redis_that_does_not_answer_is_storage_unavailable() -> None:
    c = OutcomeCounter(f"redis://127.0.0.1:{free_port()}/0", marker_ttl=60, timeout=0.5)
    with pytest.raises(StorageUnavailable):
        c.record(committed("t"))
    with pytest.raises(StorageUnavailable):
        c.totals()


def test_fields_written_by_something_else_are_ignored(server: fakeredis.FakeServer) -> None:
    r = fakeredis.FakeRedis(server=server)
    r.hset(TOTALS_KEY, mapping={"committed|": 3, "junk": 9, "pending|x": 1})
    assert counter(server).totals() == {("committed", ""): 3}
