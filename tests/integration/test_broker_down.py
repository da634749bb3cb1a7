"""Redis down: a sender fails fast and clearly, with UNAVAILABLE (503, exit 4), never a
500 or a traceback after Celery's ~20 s of reconnecting. The CLI's own case (`ingest
put`) is in test_cli.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from devtools.devstack import Frontend
from devtools.localredis import free_port
from ingest.digests import parse_digest
from ingest.errors import StorageUnavailable
from ingest.queue import CeleryTaskQueue

pytestmark = pytest.mark.integration

#: Seconds within which "fail fast" must have failed (Celery's default was about 20).
FAST = 10.0


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_frontend_started_while_redis_is_down_answers_503_unavailable_fast(
    tmp_path: Path,
) -> None:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "INGEST_STORAGE_ROOT": str(tmp_path / "storage"),
        # The PATCH crosses it: a prehash goes through Celery's send_task on the way.
        "INGEST_PREHASH_MIN_SIZE": "64KiB",
    }
    frontend = Frontend(env, tmp_path / "frontend.log", port=free_port(), debug=False).start()
    try:
        data = os.urandom(200_000)
        start = time.monotonic()
        with httpx.Client(base_url=frontend.url, timeout=60) as http:
            location = http.post("/v2/down/http/blobs/uploads/").headers["location"]
            patched = http.patch(location, content=data)
            assert patched.status_code == 202, patched.text
            put = http.put(patched.headers["location"], params={"digest": _sha256(data)})
        took = time.monotonic() - start
        assert put.status_code == 503, put.text
        assert put.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert took < FAST, f"took {took:.1f} s"

        f = tmp_path / "blob.bin"
        f.write_bytes(data[:1000])
        push = subprocess.run(
            [sys.executable, "-m", "ingest.cli", "push", str(f), "--repo", "down/cli"],
            env={**os.environ, "INGEST_URL": frontend.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert push.returncode == 4, push.stderr
        assert "error: UNAVAILABLE" in push.stderr
    finally:
        frontend.stop()


@pytest.mark.parametrize("call", ["verify", "prehash", "wait"])
def test_celerys_own_send_path_fails_fast_with_unavailable(call: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    queue = CeleryTaskQueue.from_urls(url, url)
    # The path of brokers the direct LPUSH does not serve (key prefixes, AMQP).
    queue._direct = None
    calls: dict[str, Callable[[], object]] = {
        "verify": lambda: queue.enqueue_verify(
            str(uuid.uuid4()),
            parse_digest(_sha256(b"x")),
            None,
            task_id=str(uuid.uuid4()),
            staged_size=10 << 20,  # alone, not batched
        ),
        "prehash": lambda: queue.enqueue_prehash(str(uuid.uuid4())),
        "wait": lambda: queue.wait(str(uuid.uuid4()), 30),
    }
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        calls[call]()
    assert time.monotonic() - start < FAST
