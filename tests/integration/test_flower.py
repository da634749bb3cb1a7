"""Flower, the Celery monitor, against a real worker: names, readable args, errors, metrics.

Flower only knows what the event stream tells it, and only from the moment it
listens. The worker's task events come from the configuration alone
(``worker_send_task_events`` in ``workers.celeryconfig``): Flower is started with
``--enable_events=False`` so it never broadcasts ``enable_events`` to the
workers, which would otherwise hide a missing setting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from devtools.localredis import free_port
from ingest.errors import DigestInvalid
from ingest.queue import TASK_VERIFY
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

T = TypeVar("T")

FLOWER_USER = "ops"
FLOWER_PASSWORD = "test-only-flower-password"  # noqa: S105 - a test value


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def poll(what: str, probe: Callable[[], T], timeout: float, log: Path) -> T:
    """Call ``probe`` until it returns something truthy (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            value = probe()
            if value:
                return value
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"{what}: not after {timeout} s\n--- {log.name} ---\n{tail}")


@contextlib.contextmanager
def flower(
    env: Mapping[str, str], log: Path, *extra_args: str, port: int | None = None
) -> Iterator[str]:
    """A ``celery -A workers.app flower`` subprocess on loopback; yields its base URL."""
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        *extra_args,
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"flower exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            r = httpx.get(f"{url}/healthcheck", timeout=1)
            return r.status_code == 200 and r.text == "OK"

        poll("flower /healthcheck", healthy, 20, log)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_flower_shows_verifications_with_readable_args_errors_and_metrics(
    stack: Stack,
) -> None:
    worker = stack.worker()
    log = stack.root / "flower.log"
    # Flower always runs with authentication (as in docker-compose.yml and the demo),
    # from the environment: never on the command line, where `ps` shows it.
    env = {**stack.env, "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    with (
        flower(env, log, "--enable_events=False") as url,
        httpx.Client(base_url=url, auth=(FLOWER_USER, FLOWER_PASSWORD)) as http,
    ):
        # Without credentials, or with wrong ones, the UI and the API refuse.
        for path in ("/", "/api/workers", "/api/tasks", "/tasks"):
            r = httpx.get(f"{url}{path}", timeout=5)
            assert r.status_code == 401, (path, r.status_code)
        assert httpx.get(f"{url}/api/tasks", auth=(FLOWER_USER, "nope")).status_code == 401
        assert http.get("/api/workers").status_code == 200

        # Events are not stored: wait until Flower has heard this worker's heartbeat
        # (every 2 s), so its receiver is live before any task runs.
        online = f'flower_worker_online{{worker="{worker.name}"}} 1.0'
        poll("flower sees the worker", lambda: online in http.get("/metrics").text, 15, log)

        ing = stack.ingest
        good = os.urandom(64 << 10)
        ok = ing.start_upload("flower/ok")
        ok.write(good)
        ok_ticket = ok.finish(sha256(good))
        assert ok_ticket.wait(30)["status"] == "committed"

        bad_data = os.urandom(1000)
        wrong = "sha256:" + "0" * 64
        bad = ing.start_upload("flower/bad")
        bad.write(bad_data)
        bad_ticket = bad.finish(wrong)
        with pytest.raises(DigestInvalid):
            bad_ticket.wait(30)

        wanted = {ok_ticket.task_id: "SUCCESS", bad_ticket.task_id: "FAILURE"}

        def both_final() -> dict[str, Any]:
            r = http.get("/api/tasks", params={"taskname": TASK_VERIFY})
            assert r.status_code == 200, r.text
            listed: dict[str, Any] = r.json()
            done = all(listed.get(t, {}).get("state") == s for t, s in wanted.items())
            return listed if done else {}

        listed = poll("both verifications in /api/tasks", both_final, 15, log)
        assert set(wanted) <= set(listed)

        infos: dict[str, dict[str, Any]] = {}
        for task_id in wanted:
            r = http.get(f"/api/task/info/{task_id}")
            assert r.status_code == 200, r.text
            infos[task_id] = r.json()

        for task_id, state in wanted.items():
            info = infos[task_id]
            assert info["name"] == TASK_VERIFY
            assert info["state"] == state
            assert info["worker"] == worker.name
            assert listed[task_id]["name"] == TASK_VERIFY

        # Readable arguments: the argsrepr/kwargsrepr the sender sets, not a tuple.
        ok_info, bad_info = infos[ok_ticket.task_id], infos[bad_ticket.task_id]
        assert ok_info["args"] == f"upload={ok.id} digest={sha256(good)} size=None"
        assert ok_info["kwargs"] == f"staged_size={len(good)} repository=flower/ok"
        assert bad_info["args"] == f"upload={bad.id} digest={wrong} size=None"
        assert bad_info["kwargs"] == f"staged_size={len(bad_data)} repository=flower/bad"
        assert ok_info["exception"] is None
        assert ok.id in str(ok_info["result"])

        # The rejection is legible: code, claimed and computed digests (IngestError.__repr__).
        exception = bad_info["exception"]
        assert "DIGEST_INVALID" in exception
        assert f"claimed={wrong}" in exception
        assert f"computed={sha256(bad_data)}" in exception
        assert "DigestInvalid" in (bad_info.get("traceback") or "")

        # Prometheus metrics, with the task-level counters for our task.
        r = http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        metrics = r.text
        assert "# TYPE flower_events_total counter" in metrics
        for event in ("task-received", "task-started", "task-succeeded", "task-failed"):
            pattern = (
                r"^flower_events_total\{"
                rf'task="{re.escape(TASK_VERIFY)}",type="{event}",worker="{re.escape(worker.name)}"'
                r"\} ([0-9.]+)$"
            )
            m = re.search(pattern, metrics, re.MULTILINE)
            assert m, f"no {event} counter for {TASK_VERIFY}:\n{metrics[-3000:]}"
            expected = 1.0 if event in ("task-succeeded", "task-failed") else 2.0
            assert float(m.group(1)) == expected, m.group(0)
        assert f'flower_task_runtime_seconds_count{{task="{TASK_VERIFY}"' in metrics
