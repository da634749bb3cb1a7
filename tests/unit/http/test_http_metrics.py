"""The frontend's HTTP server metrics (requests by method, route template and status;
durations; bytes both ways), the build info and the workers' outcome counters on the
debug listener's /metrics."""

from __future__ import annotations

import re
import warnings

import fakeredis
import pytest
from prometheus_client import REGISTRY
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ingest.buildinfo import build_info
from ingest.errors import DigestInvalid
from ingest.http.debug import create_debug_app
from ingest.outcomes import OutcomeCounter, committed, rejected
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import make_ingest, sha256
from tests.unit.http.conftest import Env

UPLOAD = "/v2/{name}/blobs/uploads/{upload_id}"


def requests(method: str, route: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "ingest_http_requests_total", {"method": method, "route": route, "status": str(status)}
    )
    return value or 0.0


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_method_route_template_and_status(env: Env) -> None:
    before = {
        "post": requests("POST", "/v2/{name}/blobs/uploads/", 202),
        "patch": requests("PATCH", UPLOAD, 202),
        "put": requests("PUT", UPLOAD, 201),
        "head": requests("HEAD", "/v2/{name}/blobs/{digest}", 200),
        "missing": requests("HEAD", "/v2/{name}/blobs/{digest}", 404),
        "base": requests("GET", "/v2/", 200),
    }
    digest = env.push_blob("metrics/repo", b"some bytes")
    assert env.client.head(f"/v2/metrics/repo/blobs/{digest}").status_code == 200
    assert env.client.head(f"/v2/metrics/repo/blobs/{sha256(b'none')}").status_code == 404
    assert env.client.get("/v2/").status_code == 200
    assert requests("POST", "/v2/{name}/blobs/uploads/", 202) == before["post"] + 1
    assert requests("PATCH", UPLOAD, 202) == before["patch"] + 1
    assert requests("PUT", UPLOAD, 201) == before["put"] + 1
    assert requests("HEAD", "/v2/{name}/blobs/{digest}", 200) == before["head"] + 1
    assert requests("HEAD", "/v2/{name}/blobs/{digest}", 404) == before["missing"] + 1
    assert requests("GET", "/v2/", 200) == before["base"] + 1


def test_no_raw_path_or_client_chosen_method_becomes_a_label(env: Env) -> None:
    before_unmatched = requests("GET", "unmatched", 404)
    before_other = requests("OTHER", "unmatched", 404)
    for i in range(5):
        env.client.get(f"/nowhere/{i}")
    env.client.request("FROB", "/elsewhere")
    assert requests("GET", "unmatched", 404) == before_unmatched + 5
    assert requests("OTHER", "unmatched", 404) == before_other + 1
    for metric in REGISTRY.collect():
        for s in metric.samples:
            route = s.labels.get("route")
            assert route is None or "/nowhere" not in route
            assert s.labels.get("method", "GET") != "FROB"
            # Upload ids, digests and repository names never reach a label.
            assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}|sha256:|metrics/repo", str(s.labels))


def test_durations_and_bytes_both_ways_are_recorded_per_route(env: Env) -> None:
    route = {"method": "PATCH", "route": UPLOAD}
    got = {"method": "GET", "route": "/v2/{name}/blobs/{digest}"}
    count = sample("ingest_http_request_duration_seconds_count", **route)
    bytes_in = sample("ingest_http_request_bytes_total", **route)
    bytes_out = sample("ingest_http_response_bytes_total", **got)
    data = b"x" * 4321
    digest = env.push_blob("metrics/bytes", data)
    r = env.client.get(f"/v2/metrics/bytes/blobs/{digest}")
    assert r.content == data
    assert sample("ingest_http_request_duration_seconds_count", **route) == count + 1
    assert sample("ingest_http_request_duration_seconds_bucket", **route, le="+Inf") >= count + 1
    assert sample("ingest_http_request_bytes_total", **route) == bytes_in + len(data)
    assert sample("ingest_http_response_bytes_total", **got) == bytes_out + len(data)
    assert sample("ingest_http_requests_in_flight") == 0


def test_a_handler_that_crashes_is_counted_as_a_500(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(env.ingest, "offset", boom)
    before = requests("GET", UPLOAD, 500)
    loc, _ = env.start("metrics/crash")
    assert env.client.get(loc).status_code == 500
    assert requests("GET", UPLOAD, 500) == before + 1
    assert sample("ingest_http_requests_in_flight") == 0


def test_an_async_finish_is_no_outcome_of_the_frontend(env: Env) -> None:
    """The frontend answers 202 without knowing the outcome; the worker counts it
    (tests/unit/test_task_outcomes.py), so nothing here may count one."""
    loc, _ = env.start("metrics/async")
    r = env.client.patch(loc, content=b"async")
    r = env.client.put(
        r.headers["location"],
        params={"digest": sha256(b"async")},
        headers={"Prefer": "respond-async"},
    )
    assert r.status_code == 202
    names = {m.name for m in REGISTRY.collect()}
    assert "ingest_verification_outcomes" not in names


def _debug_client(counter: OutcomeCounter | None = None) -> TestClient:
    ing, _ = make_ingest(MemoryDriver())
    if counter is None:
        counter = OutcomeCounter(
            "redis://fake", marker_ttl=60, client=fakeredis.FakeRedis(server=fakeredis.FakeServer())
        )
    return TestClient(create_debug_app(ing, outcomes=counter), raise_server_exceptions=False)


def test_metrics_carry_the_build_info() -> None:
    info = build_info()
    with _debug_client() as client:
        text = client.get("/metrics").text
    line = (
        f'ingest_build_info{{commit="{info.commit}",python="{info.python}",'
        f'version="{info.version}"}} 1.0'
    )
    assert line in text, text[-1500:]


def test_metrics_export_the_outcomes_the_workers_counted() -> None:
    counter = OutcomeCounter(
        "redis://fake", marker_ttl=60, client=fakeredis.FakeRedis(server=fakeredis.FakeServer())
    )
    with _debug_client(counter) as client:
        text = client.get("/metrics").text
        # Before any verification: the committed series is there, at 0.
        assert 'ingest_verification_outcomes_total{code="",outcome="committed"} 0.0' in text
        counter.record(committed("a"), committed("b"), rejected("c", DigestInvalid()))
        text = client.get("/metrics").text
    assert 'ingest_verification_outcomes_total{code="",outcome="committed"} 2.0' in text
    assert (
        'ingest_verification_outcomes_total{code="DIGEST_INVALID",outcome="rejected"} 1.0' in text
    )


def test_metrics_still_answer_when_the_outcome_counters_do_not() -> None:
    from devtools.localredis import free_port

    dead = OutcomeCounter(f"redis://127.0.0.1:{free_port()}/0", marker_ttl=60, timeout=0.2)
    with _debug_client(dead) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    assert "ingest_build_info" in r.text
    assert "ingest_verification_outcomes" not in r.text
