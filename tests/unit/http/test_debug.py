"""The debug listener's app: /metrics and /health, and /metrics gone from the registry port."""

from __future__ import annotations

import warnings

import fakeredis
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ingest.http import metrics
from ingest.http.debug import create_debug_app
from ingest.outcomes import OutcomeCounter
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import make_ingest
from tests.unit.http.conftest import Env


def _client(**queue_state: object) -> TestClient:
    ing, queue = make_ingest(MemoryDriver())
    for name, value in queue_state.items():
        setattr(queue, name, value)
    outcomes = OutcomeCounter(
        "redis://fake", marker_ttl=60, client=fakeredis.FakeRedis(server=fakeredis.FakeServer())
    )
    return TestClient(create_debug_app(ing, outcomes=outcomes), raise_server_exceptions=False)


def test_health_answers_200_with_every_check_when_all_pass() -> None:
    with _client() as client:
        r = client.get("/health")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["status"] == "ok"
    assert set(doc["checks"]) == {"broker", "storage", "workers"}
    for check in doc["checks"].values():
        assert check["status"] == "ok"
        assert check["latency_ms"] >= 0
    assert doc["checks"]["workers"]["workers"] == ["fake-worker@localhost"]


def test_health_answers_503_naming_what_failed() -> None:
    with _client(workers=[]) as client:
        r = client.get("/health")
    assert r.status_code == 503
    doc = r.json()
    assert doc["status"] == "fail"
    assert doc["checks"]["workers"]["status"] == "fail"
    assert "no worker answered" in doc["checks"]["workers"]["error"]
    assert doc["checks"]["broker"]["status"] == "ok"
    assert doc["checks"]["storage"]["status"] == "ok"

    with _client(broker_up=False) as client:
        r = client.get("/health")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"]["status"] == "fail"


def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    metrics.UPLOAD_BYTES.inc(0)  # the frontend's metrics live in this process's registry
    with _client() as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "ingest_upload_bytes_total",
        "ingest_uploads_active",
        "ingest_finish_seconds_bucket",
        "ingest_connections_closed",
    ):
        assert name in r.text


def test_the_registry_port_no_longer_serves_metrics(env: Env) -> None:
    r = env.client.get("/metrics")
    assert r.status_code in (401, 404)
    assert "ingest_upload_bytes" not in r.text


def test_the_debug_index_names_its_endpoints() -> None:
    with _client() as client:
        r = client.get("/")
    assert r.status_code == 200
    assert "/metrics" in r.text
    assert "/health" in r.text
