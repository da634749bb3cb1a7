"""Registry events from the HTTP frontend: which requests emit which events, with the
request's and caller's records, and their counters on the debug listener's /metrics."""

from __future__ import annotations

import json
import warnings
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ingest.auth import Identity
from ingest.config import Settings
from ingest.http.debug import create_debug_app
from ingest.notify import DeliveryFailed, Endpoint, Notifier, Outbox, drain
from tests.unit.fakes import sha256
from tests.unit.http.conftest import OCI_MANIFEST, EnvFactory, FakeAuth, image_manifest

HOOK = Endpoint("hook", "http://127.0.0.1:9/events")


def _events(env: Any) -> list[dict[str, Any]]:
    box = Outbox(env.driver, "hook")
    return [json.loads(box.read(k) or b"null") for k in box.waiting()]


def test_pushes_pulls_mounts_and_deletes_over_http_are_events(make_env: EnvFactory) -> None:
    auth = FakeAuth("Basic", {"Basic alice": Identity("alice", None)})
    env = make_env(Settings(delete_enabled=True), auth=auth)
    env.ingest.notifier = Notifier(env.driver, [HOOK], pulls=True)
    c = env.client
    c.headers["Authorization"] = "Basic alice"
    c.headers["User-Agent"] = "skopeo/1.15"
    layer, config = b"layer", b"{}"
    for blob in (layer, config):
        env.push_blob("it/app", blob)
    assert _events(env) == []  # blob pushes are the worker's to announce
    doc = image_manifest(config, [layer])
    r = env.push_manifest("it/app", "v1", doc)
    assert r.status_code == 201, r.text
    digest = r.headers["docker-content-digest"]
    assert c.head("/v2/it/app/manifests/v1").status_code == 200  # HEAD: no pull
    assert c.head(f"/v2/it/app/blobs/{sha256(layer)}").status_code == 200
    assert c.get("/v2/it/app/manifests/v1").status_code == 200
    assert c.get(f"/v2/it/app/blobs/{sha256(layer)}").content == layer
    r = c.post(f"/v2/it/other/blobs/uploads/?mount={sha256(layer)}&from=it/app")
    assert r.status_code == 201
    assert c.delete(f"/v2/it/other/blobs/{sha256(layer)}").status_code == 202
    assert c.delete("/v2/it/app/manifests/v1").status_code == 202
    assert c.get("/v2/it/app/manifests/nope").status_code == 404  # no event for a miss

    events = _events(env)
    assert [(e["action"], e["target"]["repository"]) for e in events] == [
        ("push", "it/app"),
        ("pull", "it/app"),
        ("pull", "it/app"),
        ("mount", "it/other"),
        ("delete", "it/other"),
        ("delete", "it/app"),
    ]
    push = events[0]
    assert push["target"] == {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(json.dumps(doc, separators=(",", ":"), sort_keys=True)),
        "length": push["target"]["size"],
        "repository": "it/app",
        "url": f"http://testserver/v2/it/app/manifests/{digest}",
        "tag": "v1",
    }
    assert push["request"]["method"] == "PUT"
    assert push["request"]["useragent"] == "skopeo/1.15"
    assert push["request"]["host"] == "testserver"
    assert push["actor"] == {"name": "alice"}
    assert events[2]["target"]["digest"] == sha256(layer)
    assert events[2]["target"]["size"] == len(layer)
    assert events[3]["target"]["fromRepository"] == "it/app"
    assert events[4]["target"] == {"digest": sha256(layer), "repository": "it/other"}
    assert events[5]["target"] == {"digest": digest, "repository": "it/app", "tag": "v1"}
    assert len({e["request"]["id"] for e in events}) == len(events)


def test_the_debug_listener_counts_deliveries_per_endpoint_and_outcome(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    down = Endpoint("down", "http://127.0.0.1:9/", max_events=1)
    env.ingest.notifier = Notifier(env.driver, [HOOK, down])
    for i in range(3):
        env.ingest.notifier.blob_committed(
            {"repository": "r", "digest": sha256(bytes([i])), "size": i, "task_id": "t"}
        )

    def refuse(ep: Endpoint, body: bytes) -> None:
        raise DeliveryFailed("HTTP 503")

    drain(env.driver, HOOK, lambda ep, body: None)
    drain(env.driver, down, refuse)
    with TestClient(create_debug_app(env.ingest)) as client:
        text = client.get("/metrics").text
    for line in (
        'ingest_notify_events_total{endpoint="hook",outcome="delivered"} 3.0',
        'ingest_notify_events_total{endpoint="down",outcome="dropped"} 2.0',
        'ingest_notify_events_total{endpoint="down",outcome="delivered"} 0.0',
        'ingest_notify_failed_attempts_total{endpoint="down"} 1.0',
        'ingest_notify_consecutive_failures{endpoint="down"} 1.0',
        'ingest_notify_outbox_events{endpoint="down"} 1.0',
        'ingest_notify_outbox_events{endpoint="hook"} 0.0',
    ):
        assert line in text, line
    # Without endpoints, none of it.
    with TestClient(create_debug_app(make_env().ingest)) as client:
        assert "ingest_notify" not in client.get("/metrics").text
