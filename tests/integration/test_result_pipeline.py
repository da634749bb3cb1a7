"""workers.results.store_outcomes against Celery's own store_result, on a real Redis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from celery import Celery

from ingest.errors import DigestInvalid
from ingest.queue import client_config
from tests.integration.conftest import _isolated
from workers.results import store_outcomes


def _backend(url: str) -> Any:
    app = Celery("results-test", set_as_current=False)
    app.conf.update(client_config(url, url, 3600))
    app.conf.result_expires = 600
    return app.backend


def _stored(client: redis.Redis[bytes], task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None
    meta: dict[str, Any] = json.loads(raw)
    meta.pop("date_done")
    meta.pop("task_id")
    return meta


def test_pipelined_outcomes_are_what_store_result_writes_and_publishes(redis_url: str) -> None:
    url = _isolated(redis_url)
    client = redis.Redis.from_url(url)
    backend = _backend(url)
    result = {"status": "committed", "digest": "sha256:" + "0" * 64, "size": 3}
    error = DigestInvalid("provided digest did not match", {"reason": "mismatch"})
    ours = [str(uuid.uuid4()), str(uuid.uuid4())]
    theirs = [str(uuid.uuid4()), str(uuid.uuid4())]
    pubsub = client.pubsub()
    pubsub.subscribe(*(f"celery-task-meta-{t}" for t in ours))
    assert pubsub.get_message(timeout=1) is not None  # subscribe confirmations

    store_outcomes(backend, [(ours[0], result, "SUCCESS"), (ours[1], error, "FAILURE")])
    backend.store_result(theirs[0], result, "SUCCESS")
    backend.mark_as_failure(theirs[1], error)

    assert _stored(client, ours[0]) == _stored(client, theirs[0])
    assert _stored(client, ours[1]) == _stored(client, theirs[1])
    assert _stored(client, ours[1])["result"]["exc_type"] == "DigestInvalid"
    assert 0 < client.ttl(f"celery-task-meta-{ours[0]}") <= 600
    published = set()
    for _ in range(20):
        msg = pubsub.get_message(timeout=1)
        if msg is not None and msg["type"] == "message":
            published.add(msg["channel"].decode())
        if len(published) == 2:
            break
    assert published == {f"celery-task-meta-{t}" for t in ours}
    pubsub.close()


def test_a_stored_success_is_never_overwritten(redis_url: str) -> None:
    url = _isolated(redis_url)
    client = redis.Redis.from_url(url)
    backend = _backend(url)
    done, other = str(uuid.uuid4()), str(uuid.uuid4())
    backend.store_result(done, {"status": "committed"}, "SUCCESS")
    error = DigestInvalid("late report of an old attempt")
    store_outcomes(backend, [(done, error, "FAILURE"), (other, error, "FAILURE")])
    assert _stored(client, done)["status"] == "SUCCESS"
    assert _stored(client, other)["status"] == "FAILURE"
