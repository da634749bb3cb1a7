"""Several tasks' outcomes written to Celery's Redis result backend in two round trips.

A batch of verifications (``ingest.verify_batch``) publishes each upload's outcome
under that upload's own task id. Through ``backend.store_result`` that is two
round trips per upload (a GET, so a late writer never overwrites a SUCCESS, then a
pipelined SET + PUBLISH). :func:`store_outcomes` does the same for the whole batch
with one pipeline of GETs and one of SETs and PUBLISHes. The stored and published
JSON is what ``store_result`` writes (``tests/integration/test_result_pipeline.py``
compares them); any other backend gets ``store_result``/``mark_as_failure`` per task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Outcome", "store_outcomes"]

#: (task id, value, state): a result with SUCCESS, an exception with FAILURE.
Outcome = tuple[str, Any, str]


def store_outcomes(backend: Any, outcomes: Sequence[Outcome]) -> None:
    """Store and publish every outcome; best effort per outcome, as ``store_result``
    is (the caller logs what fails: the upload's record in storage stands)."""
    if not outcomes:
        return
    from celery.backends.redis import RedisBackend

    if not isinstance(backend, RedisBackend) or len(outcomes) == 1:
        _one_by_one(backend, outcomes)
        return
    from celery import states

    redis_backend: Any = backend  # the stubs lack what the pipeline uses
    expires = redis_backend.expires

    keys = [backend.get_key_for_task(task_id) for task_id, _, _ in outcomes]
    with backend.client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
        current = pipe.execute()
    with backend.client.pipeline(transaction=False) as pipe:
        for (task_id, value, state), key, raw in zip(outcomes, keys, current, strict=True):
            if raw is not None and backend.decode_result(raw).get("status") == states.SUCCESS:
                continue  # as store_result: a SUCCESS is never overwritten
            meta = redis_backend._get_result_meta(
                result=backend.encode_result(value, state),
                state=state,
                traceback=None,
                request=None,
            )
            meta["task_id"] = task_id
            payload = backend.encode(meta)
            if expires:
                pipe.set(key, payload, ex=expires)
            else:
                pipe.set(key, payload)
            pipe.publish(key, payload)
        pipe.execute()


def _one_by_one(backend: Any, outcomes: Sequence[Outcome]) -> None:
    for task_id, value, state in outcomes:
        if state == "FAILURE":
            backend.mark_as_failure(task_id, value)
        else:
            backend.store_result(task_id, value, state)
