"""Faults with real processes: dead workers, lost Redis, killed frontends, races, pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from devtools.devstack import Frontend
from devtools.localredis import LocalRedis, RedisNotFound, free_port
from ingest.queue import QUEUE_VERIFY
from ingest.uploads import Staging
from tests.integration.conftest import Stack, stage_large, unavailable, wait_for_progress

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stored(stack: Stack, prefix: str) -> list[str]:
    root = stack.storage
    return (
        sorted(str(p.relative_to(root)) for p in (root / prefix).rglob("*") if p.is_file())
        if (root / prefix).exists()
        else []
    )


def tmp_files(stack: Stack) -> list[str]:
    return [str(p) for p in stack.storage.rglob("*") if ".tmp-" in p.name]


def test_killing_the_whole_worker_mid_verification_recovers_within_the_visibility_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    # Short limits so the broker's redelivery (visibility timeout) fits a test.
    stack = Stack(
        redis_url,
        tmp_path,
        INGEST_MAX_BLOB_SIZE="2GiB",
        INGEST_VERIFY_MIN_RATE="200MiB",
        INGEST_VERIFY_BASE_TIME="5",
        INGEST_VISIBILITY_TIMEOUT="20",
    )
    try:
        worker = stack.worker()
        ing = stack.ingest
        uid, claim, canonical = stage_large(ing, "rel/whole-worker", 768 << 20)
        ticket = ing.resume("rel/whole-worker", uid).finish(claim)
        wait_for_progress(ing, ticket.task_id)
        killed_at = time.monotonic()
        worker.kill()  # SIGKILL to the main process and its pool child at once

        stack.worker()  # a replacement comes up (as a supervisor would restart it)
        result = ticket.wait(timeout=90)
        recovery = time.monotonic() - killed_at
        assert result["status"] == "committed"
        assert result["canonical_digest"] == canonical
        # visibility timeout (20 s) + the restore scan interval (10 s) + slack
        assert recovery < 45, recovery
        assert stored(stack, "blobs") == [f"blobs/sha256/{canonical[7:9]}/{canonical[7:]}/data"]
        assert tmp_files(stack) == []
        assert not (stack.storage / "uploads" / uid / "data").exists()
        print(f"recovered {recovery:.1f} s after the kill")
    finally:
        stack.close()


def test_losing_redis_keeps_uploads_and_the_reconciler_requeues_lost_verifications(
    tmp_path: Path,
) -> None:
    try:
        server = LocalRedis().start()
    except (RedisNotFound, RuntimeError) as exc:
        unavailable(f"cannot start a private redis-server: {exc}")
    try:
        stack = Stack(server.url, tmp_path)
        ing = stack.ingest
        # One blob committed before the outage.
        w = stack.worker()
        before = os.urandom(50_000)
        up = ing.start_upload("rel/redis")
        up.write(before)
        committed = up.finish(sha256(before)).wait(timeout=30)
        w.stop()

        # Verifications queued while no worker runs, and an upload still in progress.
        blobs = [os.urandom(200_000 + i) for i in range(3)]
        tickets = []
        for data in blobs:
            u = ing.start_upload("rel/redis")
            u.write(data)
            tickets.append(u.finish(sha256(data)))
        in_progress = ing.start_upload("rel/redis")
        in_progress.write(b"first half ")
        in_progress.close()

        # Redis restarts empty: every queued task and result is gone.
        port = server.port
        server.stop()
        server = LocalRedis(port=port).start()
        assert (
            int(
                subprocess.run(  # the queue really is empty
                    [
                        sys.executable,
                        "-c",
                        f"import redis; print(redis.Redis.from_url('{server.url}')"
                        f".llen('{QUEUE_VERIFY}'))",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            == 0
        )

        w2 = stack.worker()
        # The in-progress upload resumes and finishes normally.
        resumed = ing.resume("rel/redis", in_progress.id)
        resumed.write(b"second half")
        assert resumed.finish(sha256(b"first half second half")).wait(30)["status"] == "committed"

        # The lost verifications are stuck in "finishing" until the reconciler runs.
        staging = Staging(ing.driver)
        for t in tickets:
            assert ing.status(t.upload_id).state == "finishing"
            # The outage lasted two minutes: older than the shortest grace (a minute).
            record = staging.state(t.upload_id)
            aged = dataclasses.replace(record, updated_at=record.updated_at - 120)
            staging.write_state(t.upload_id, aged)
        run = subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--json", "reconcile", "--grace", "1m"],
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["requeued_count"] == 3
        for t, data in zip(tickets, blobs, strict=True):
            assert t.wait(timeout=30)["canonical_digest"] == sha256(data)
        # Committed data is untouched.
        with ing.open("rel/redis", committed["digest"]) as blob:
            assert blob.read() == before
        w2.stop()
    finally:
        server.stop()


def test_killing_the_frontend_mid_patch_resumes_from_the_durable_offset(
    shared_stack: Stack,
) -> None:
    port = free_port()
    env = shared_stack.env
    frontend = Frontend(env, shared_stack.root / "fe-kill.log", port=port).start()
    data = os.urandom(8 << 20)
    try:
        with httpx.Client(base_url=frontend.url) as client:
            location = client.post("/v2/rel/fe-kill/blobs/uploads/").headers["location"]
        # Send 5 of 8 MiB by hand, then kill the frontend without warning.
        sock = socket.create_connection(("127.0.0.1", port))
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: 5 << 20])
        time.sleep(1.0)
        frontend.kill()
        sock.close()
    finally:
        frontend.stop()

    frontend = Frontend(env, shared_stack.root / "fe-kill-2.log", port=port).start()
    try:
        with httpx.Client(base_url=frontend.url) as client:
            status = client.get(location)
            assert status.status_code == 204
            offset = int(status.headers["range"].split("-")[1]) + 1
            assert 0 < offset <= 5 << 20
            patch = client.patch(
                location,
                content=data[offset:],
                headers={"Content-Range": f"{offset}-{len(data) - 1}"},
            )
            assert patch.status_code == 202
            put = client.put(location, params={"digest": sha256(data)})
            assert put.status_code == 201
            got = client.get(f"/v2/rel/fe-kill/blobs/{sha256(data)}")
            assert got.content == data
    finally:
        frontend.stop()


def test_fifty_concurrent_finishes_of_one_content_across_ten_repos_store_one_blob(
    stack: Stack,
) -> None:
    stack.worker(concurrency=2)
    stack.worker(concurrency=2)
    ing = stack.ingest
    data = os.urandom(256_000)
    uploads = []
    for i in range(50):
        up = ing.start_upload(f"rel/race-{i % 10}")
        up.write(data)
        up.close()
        uploads.append(up)
    results: list[dict[str, object]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def finish(repo: str, uid: str) -> None:
        try:
            r = ing.finish(repo, uid, sha256(data)).wait(timeout=60)
            with lock:
                results.append(r)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=finish, args=(u.repository, u.id)) for u in uploads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 50
    assert all(r["status"] == "committed" for r in results)
    assert stored(stack, "blobs") == [f"blobs/sha256/{sha256(data)[7:9]}/{sha256(data)[7:]}/data"]
    links = [p for p in stored(stack, "repositories") if p.endswith("/link")]
    assert len(links) == 10
    assert tmp_files(stack) == []
    # Two finishes of the same upload: one commit, the same result for both.
    up = ing.start_upload("rel/double")
    up.write(data)
    up.close()
    t1 = ing.finish("rel/double", up.id, sha256(data))
    t2 = ing.finish("rel/double", up.id, sha256(data))
    assert t1.wait(30) == t2.wait(30)


def test_a_pickled_message_on_the_queue_is_rejected_not_executed(
    shared_stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    code = f"""
import os, pickle
from kombu import Connection, Exchange, Queue
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
with Connection({shared_stack.redis_url!r}) as conn:
    producer = conn.Producer(serializer="pickle")
    body = ((Evil(),), {{}}, {{"callbacks": None, "errbacks": None, "chain": None, "chord": None}})
    ex = Exchange({QUEUE_VERIFY!r})
    producer.publish(body, routing_key={QUEUE_VERIFY!r}, exchange=ex,
                     declare=[Queue({QUEUE_VERIFY!r}, ex, {QUEUE_VERIFY!r})],
                     headers={{"lang": "py", "task": "ingest.verify_upload", "id": "evil-1",
                               "argsrepr": "", "kwargsrepr": ""}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    deadline = time.monotonic() + 15
    log = ""
    while time.monotonic() < deadline:
        log = "".join(w.log() for w in shared_stack.workers)
        if "ContentDisallowed" in log or "disallowed" in log.lower():
            break
        time.sleep(0.1)
    assert "ContentDisallowed" in log or "disallowed" in log.lower(), log[-2000:]
    time.sleep(0.5)
    assert not marker.exists()
