"""The frontend's direct publish of verification messages (``queue._DirectPublisher``)
against what Celery's own ``send_task`` puts on a real Redis broker."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import redis

from ingest.digests import parse_digest
from ingest.queue import QUEUE_VERIFY, TASK_VERIFY, CeleryTaskQueue, client_config
from tests.integration.conftest import Stack, _isolated

DIGEST = "sha256:" + "ab" * 32


def _pop(client: redis.Redis[bytes], queue: str) -> dict[str, Any]:
    raw = client.rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    message: dict[str, Any] = json.loads(raw)
    return message


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message with what differs between two sends of one task taken out."""
    headers = {k: v for k, v in message["headers"].items() if k != "origin"}
    props = {
        k: v for k, v in message["properties"].items() if k not in ("delivery_tag", "reply_to")
    }
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "headers": headers, "properties": props, "body": body}


def test_a_direct_message_is_the_message_send_task_would_have_sent(redis_url: str) -> None:
    url = _isolated(redis_url)
    client = redis.Redis.from_url(url)
    client.delete(QUEUE_VERIFY)
    queue = CeleryTaskQueue.from_urls(url, url)
    assert queue._direct is not None  # a redis:// broker takes the direct path
    task_id = str(uuid.uuid4())
    upload = str(uuid.uuid4())
    entry = {
        "upload_id": upload,
        "digest": DIGEST,
        "size": 65536,
        "staged_size": 65536,
        "task_id": task_id,
        "repository": "direct/test",
    }
    queue._send_verify(entry)
    direct = _pop(client, QUEUE_VERIFY)

    # The same message through Celery's own publish path.
    from celery import Celery

    app = Celery("reference", set_as_current=False)
    app.conf.update(client_config(url, url, 3600))
    app.conf.task_send_sent_event = False
    app.send_task(
        TASK_VERIFY,
        args=(upload, DIGEST, 65536),
        kwargs={"staged_size": 65536, "repository": "direct/test"},
        task_id=task_id,
        queue=QUEUE_VERIFY,
        argsrepr=f"upload={upload} digest={DIGEST} size=65536",
        kwargsrepr="staged_size=65536 repository=direct/test",
    )
    reference = _pop(client, QUEUE_VERIFY)
    assert _comparable(direct) == _comparable(reference)
    assert direct["properties"]["delivery_tag"] != reference["properties"]["delivery_tag"]


def test_a_non_redis_broker_goes_through_send_task() -> None:
    queue = CeleryTaskQueue.from_urls("amqp://guest:guest@127.0.0.1:1//", "redis://127.0.0.1:1/0")
    assert queue._direct is None


def test_a_directly_published_verification_commits_through_a_real_worker(stack: Stack) -> None:
    ing = stack.ingest
    assert isinstance(ing.queue, CeleryTaskQueue)
    assert ing.queue._direct is not None
    data = b"published directly " * 100
    stack.worker()  # stopped with the stack
    up = ing.start_upload("direct/worker")
    up.write(data)
    result = up.finish(parse_digest("sha256:" + hashlib.sha256(data).hexdigest())).wait(60)
    assert result["status"] == "committed"
    assert result["size"] == len(data)
