"""The debug listener of a real ``ingest serve``: /health against a real broker, storage
and workers, and /metrics aggregated over ``--workers N`` processes."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.devstack import Frontend
from devtools.localredis import free_port
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def health(fe: Frontend) -> httpx.Response:
    assert fe.debug_url is not None
    return httpx.get(f"{fe.debug_url}/health", timeout=10)


def _checks(r: httpx.Response) -> dict[str, dict[str, Any]]:
    doc = r.json()
    assert set(doc) == {"status", "checks"}
    assert set(doc["checks"]) == {"broker", "storage", "workers"}
    for check in doc["checks"].values():
        assert check["status"] in ("ok", "fail")
        assert isinstance(check["latency_ms"], float)
    checks: dict[str, dict[str, Any]] = doc["checks"]
    return checks


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{name} not in:\n{text[-2000:]}"
    return float(m.group(1))


def test_health_and_metrics_of_a_frontend_with_two_processes(stack: Stack) -> None:
    worker = stack.worker()
    # Named here (ingest serve makes a temporary one otherwise) to look inside below.
    multiproc = stack.root / "metrics"
    multiproc.mkdir()
    fe = stack.frontend(processes=2, env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    assert fe.debug_url is not None

    r = health(fe)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    checks = _checks(r)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert worker.name in checks["workers"]["workers"]
    # The storage probe leaves nothing behind.
    probes = stack.storage / "health"
    assert not probes.exists() or list(probes.iterdir()) == []

    # Pushes spread over both processes (a fresh connection each): the one listener,
    # in the supervisor, counts the bytes of all of them.
    sizes = [1000 + i for i in range(12)]
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        with httpx.Client(base_url=fe.url, timeout=30) as client:
            r = client.post(f"/v2/debug/m{i}/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = client.patch(r.headers["location"], content=data)
            assert r.status_code == 202, r.text
            r = client.put(r.headers["location"], params={"digest": sha256(data)})
            assert r.status_code == 201, r.text
    assert fe.debug_url is not None
    # The workers count outcomes just after publishing them: a moment after the 201.
    committed = 'ingest_verification_outcomes_total{code="",outcome="committed"}'
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{fe.debug_url}/metrics", timeout=10).text
        if _metric(text, committed) == len(sizes) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert _metric(text, committed) == len(sizes)
    assert _metric(text, "ingest_upload_bytes_total") == sum(sizes)
    # The HTTP server metrics, summed over both processes, by route template.
    upload = "/v2/{name}/blobs/uploads/{upload_id}"
    put = f'ingest_http_requests_total{{method="PUT",route="{upload}",status="201"}}'
    assert _metric(text, put) == len(sizes)
    patched = f'ingest_http_request_bytes_total{{method="PATCH",route="{upload}"}}'
    assert _metric(text, patched) == sum(sizes)
    assert _metric(text, "ingest_http_requests_in_flight") == 0
    assert _metric(text, "ingest_finish_seconds_count") == len(sizes)
    # Files of more than one process were aggregated (each process writes its own).
    # Each process writes its own files; the listener read those of several.
    pids = {int(m) for p in multiproc.iterdir() for m in re.findall(r"counter_(\d+)\.db", p.name)}
    assert len(pids) >= 3, pids  # the supervisor and both app processes

    # /metrics and /health are not on the registry's port.
    assert httpx.get(f"{fe.url}/metrics", timeout=5).status_code == 404
    assert httpx.get(f"{fe.url}/health", timeout=5).status_code == 404

    # No worker: the deep check says so (the broker and storage still pass).
    worker.stop()
    r = health(fe)
    assert r.status_code == 503, r.text
    checks = _checks(r)
    assert checks["workers"]["status"] == "fail"
    assert "no worker answered a ping" in checks["workers"]["error"]
    assert checks["broker"]["status"] == "ok"
    assert checks["storage"]["status"] == "ok"


def test_health_fails_when_the_storage_cannot_be_written(stack: Stack) -> None:
    stack.worker()
    fe = stack.frontend()
    stack.storage.mkdir(parents=True, exist_ok=True)
    (stack.storage / "health").write_text("a file where the probes' directory should be\n")
    r = health(fe)
    assert r.status_code == 503, r.text
    checks = _checks(r)
    assert checks["storage"]["status"] == "fail"
    assert checks["storage"]["error"]
    assert checks["broker"]["status"] == "ok"
    assert checks["workers"]["status"] == "ok"
    (stack.storage / "health").unlink()
    assert health(fe).status_code == 200


def test_health_fails_fast_when_the_broker_is_down(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {"REDIS_URL": dead, "INGEST_STORAGE_ROOT": str(tmp_path / "storage")}
    with Frontend(env, tmp_path / "frontend.log", port=free_port()) as fe:
        start = time.monotonic()
        r = health(fe)
        elapsed = time.monotonic() - start
    assert r.status_code == 503, r.text
    checks = _checks(r)
    assert checks["broker"]["status"] == "fail"
    assert "Connection refused" in checks["broker"]["error"]
    assert checks["workers"]["status"] == "fail"
    assert checks["storage"]["status"] == "ok"
    assert elapsed < 5
