"""RabbitMQ as the task broker (optional): AMQP for tasks, Redis for results.

``INGEST_BROKER_URL=amqp://…`` with ``REDIS_URL`` as the result backend (and the
lock store). Everything else is the real thing: a ``celery worker`` subprocess,
the Python API, the HTTP frontend.

RabbitMQ is not part of the default stack, so these tests skip -- also under
CI=true -- when nothing listens on 127.0.0.1:5672. Isolation: when
``rabbitmqctl`` works (root on the broker host) every module run gets its own
vhost, deleted afterwards; otherwise the tests use the default vhost "/" and
purge the ``verify`` and ``maintenance`` queues first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from ingest import paths
from ingest.digests import parse_digest
from ingest.errors import DigestInvalid
from ingest.maintenance import reconcile
from ingest.queue import QUEUE_MAINTENANCE, QUEUE_VERIFY, TASK_VERIFY
from tests.integration.conftest import Stack, stage_large, wait_for_progress

pytestmark = pytest.mark.integration

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672
AMQP_USER = "guest"  # guest may only connect from localhost: fine for loopback


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reachable() -> str | None:
    try:
        with socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=1.0):
            return None
    except OSError as exc:
        return str(exc)


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    try:
        run = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


def _purge(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        for name in (QUEUE_VERIFY, QUEUE_MAINTENANCE):
            channel: Any = conn.channel()
            try:
                channel.queue_purge(name)
            except conn.channel_errors:
                pass  # NOT_FOUND: the queue does not exist yet (the broker closed the channel)
            finally:
                with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
                    channel.close()


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    problem = _reachable()
    if problem is not None:
        # Optional broker: skip even under CI=true (unlike Redis, it is not required).
        pytest.skip(
            f"RabbitMQ not reachable at {AMQP_HOST}:{AMQP_PORT} ({problem}); "
            "the optional AMQP broker tests need a local RabbitMQ with the guest user"
        )
    vhost = f"ingest-test-{uuid.uuid4().hex[:12]}"
    if _rabbitmqctl("add_vhost", vhost):
        try:
            if not _rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*"):
                pytest.fail(f"could not give {AMQP_USER} access to vhost {vhost}")
            yield f"amqp://{AMQP_USER}:{AMQP_USER}@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    url = f"amqp://{AMQP_USER}:{AMQP_USER}@{AMQP_HOST}:{AMQP_PORT}//"
    _purge(url)  # leftovers of another run on the shared default vhost
    yield url


@pytest.fixture(scope="module")
def amqp_stack(
    amqp_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(redis_url, tmp_path_factory.mktemp("amqp"), INGEST_BROKER_URL=amqp_url)
    # One pool process: the kill test knows which child runs its task.
    stack.worker(concurrency=1)
    try:
        yield stack
    finally:
        stack.close()


def _stored_blobs(stack: Stack) -> list[str]:
    return sorted(
        str(p.relative_to(stack.storage))
        for p in (stack.storage / "blobs").rglob("*")
        if p.is_file()
    )


def test_the_worker_consumes_from_rabbitmq_and_redis_holds_only_results(
    amqp_stack: Stack, amqp_url: str
) -> None:
    assert amqp_stack.settings.broker_url == amqp_url
    assert amqp_stack.settings.result_backend == amqp_stack.redis_url
    ing = amqp_stack.ingest
    data = os.urandom(3 << 20)
    up = ing.start_upload("amqp/commit")
    up.write(data)
    result = up.finish(sha256(data), size=len(data)).wait(timeout=30)

    assert result["status"] == "committed"
    assert result["canonical_digest"] == sha256(data)
    assert result["size"] == len(data)
    with ing.open("amqp/commit", sha256(data)) as blob:
        assert blob.read() == data
    assert ing.status(up.id).state == "committed"
    worker = amqp_stack.workers[-1]
    banner = worker.logfile.read_text(errors="replace")  # the .out file: banner and stdout
    assert "amqp://" in banner, banner[-2000:]
    # The Redis database holds results, not the queue: no kombu list or unacked keys.
    with redis.Redis.from_url(amqp_stack.redis_url) as r:
        keys = {k.decode() for k in r.keys("*")}
    assert f"celery-task-meta-{result['task_id']}" in keys
    assert not {QUEUE_VERIFY, "unacked", "unacked_index"} & keys, keys


def test_a_digest_mismatch_is_recorded_as_digest_invalid(amqp_stack: Stack) -> None:
    ing = amqp_stack.ingest
    data = os.urandom(1 << 20)
    wrong = sha256(data + b"x")
    up = ing.start_upload("amqp/mismatch")
    up.write(data)
    with pytest.raises(DigestInvalid) as err:
        up.finish(wrong).wait(timeout=30)
    assert err.value.detail["reason"] == "mismatch"
    assert err.value.detail["claimed"] == wrong
    assert err.value.detail["computed"] == sha256(data)
    status = ing.status(up.id)
    assert status.state == "failed"
    assert status.error is not None
    assert status.error["code"] == "DIGEST_INVALID"
    # The retry with the right digest goes through the broker again, at once: the
    # failure is recorded before it is published, and a late report of the old
    # attempt cannot overwrite the retry (see workers/tasks.py, mark_failed).
    assert ing.retry(up.id, sha256(data)).wait(timeout=30)["status"] == "committed"


def test_the_http_frontend_finishes_through_rabbitmq(amqp_stack: Stack) -> None:
    front = amqp_stack.frontend()
    data = os.urandom(256 << 10)
    with httpx.Client(base_url=front.url, timeout=60) as client:
        r = client.post("/v2/amqp/http/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = client.put(
            r.headers["location"],
            params={"digest": sha256(data)},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == sha256(data)
        r = client.get(f"/v2/amqp/http/blobs/{sha256(data)}")
        assert r.status_code == 200
        assert r.content == data


def test_the_reconciler_resends_a_verification_the_broker_lost(
    amqp_stack: Stack, amqp_url: str
) -> None:
    ing = amqp_stack.ingest
    amqp_stack.workers[-1].stop()  # nobody consumes: the message waits in RabbitMQ
    data = os.urandom(1 << 20)
    up = ing.start_upload("amqp/reconcile")
    up.write(data)
    ticket = up.finish(sha256(data))
    _purge(amqp_url)  # the broker loses it (e.g. a RabbitMQ node lost its data)
    assert ing.status(up.id).state == "finishing"

    # As if the loss happened two minutes ago (the grace cannot go below a minute).
    summary = reconcile(ing.driver, ing.queue, amqp_stack.settings, grace=60, now=time.time() + 120)
    assert [e["upload_id"] for e in summary.requeued] == [up.id]
    amqp_stack.worker(concurrency=1)
    result = ticket.wait(timeout=60)  # same task id: the original ticket sees it
    assert result["status"] == "committed"
    assert result["task_id"] == ticket.task_id


def test_killing_the_pool_child_mid_verification_redelivers_and_commits_once(
    amqp_stack: Stack,
) -> None:
    worker = amqp_stack.workers[-1]
    ing = amqp_stack.ingest
    size = 768 << 20
    uid, claim, canonical = stage_large(ing, "amqp/crash", size)
    blobs_before = _stored_blobs(amqp_stack)
    # sha512 + sha256 in one pass is the slowest plain verification: widest window.
    ticket = ing.resume("amqp/crash", uid).finish(claim)
    wait_for_progress(ing, ticket.task_id)
    children = worker.children()
    assert len(children) == 1, children
    os.kill(children[0], 9)

    # task_reject_on_worker_lost: the worker rejects with requeue=True and RabbitMQ
    # hands the message out again at once (no visibility timeout to wait for).
    result = ticket.wait(timeout=120)
    assert result["status"] == "committed"
    assert result["canonical_digest"] == canonical
    log = worker.log()
    assert "WorkerLostError" in log or "SIGKILL" in log or "signal 9" in log
    assert log.count(f"Task {TASK_VERIFY}[{ticket.task_id}] received") == 2, "redelivered once"
    blob = paths.blob_data_path(parse_digest(result["canonical_digest"])).lstrip("/")
    assert sorted(set(_stored_blobs(amqp_stack)) - set(blobs_before)) == [blob]
    assert not any(".tmp-" in p for p in _stored_blobs(amqp_stack))
    assert not (amqp_stack.storage / "uploads" / uid / "data").exists()
    with ing.open("amqp/crash", result["digest"]) as reader:
        assert reader.size == size
    time.sleep(1.0)  # no third delivery arrives late
    assert worker.log().count(f"Task {TASK_VERIFY}[{ticket.task_id}] received") == 2
