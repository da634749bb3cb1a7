"""Registry events end to end: a skopeo push through the real frontend and a real
worker, delivered over HTTP to receivers on loopback, in order; and receivers that are
down (not listening, or answering 503) get the same events, in order, once they are
back."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from devtools.localredis import free_port
from ingest.notify import MEDIA_TYPE, EndpointStats
from tests.integration.conftest import Stack
from tests.integration.test_http_clients import make_oci_layout, sha256, skopeo

pytestmark = pytest.mark.integration

TOKEN = "Bearer integration-token"  # noqa: S105 - a test receiver's expected header
REPO = "it/notify"


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records the events it accepts. It answers
    ``fail_first`` requests with 503 (recording nothing), then 200."""

    def __init__(self, port: int = 0, fail_first: int = 0) -> None:
        self.port = port
        self.fail_first = fail_first
        self.refused = 0
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    if receiver.refused < receiver.fail_first:
                        receiver.refused += 1
                        status = 503
                    else:
                        receiver.headers.append(dict(self.headers))
                        receiver.accepted.extend(json.loads(body)["events"])
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.accepted)


def wait_for(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.1)
    pytest.fail("timed out")


@dataclass
class Pushed:
    stack: Stack
    live: Receiver
    late: Receiver
    flaky: Receiver
    image: dict[str, Any]

    def stats(self, name: str) -> EndpointStats:
        (found,) = [s for s in self.stack.ingest.notification_stats() if s.endpoint == name]
        return found


def _endpoint(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "headers": {"Authorization": TOKEN},
        "timeout": "2s",
        "backoff": "200ms",
        "max_backoff": "1s",
    }


@pytest.fixture(scope="module")
def pushed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """A stack with three endpoints (one up, one not listening yet, one answering 503
    three times), and one skopeo push of a three-layer image through it."""
    tmp = tmp_path_factory.mktemp("notify")
    live = Receiver().start()
    late = Receiver(port=free_port())  # started by a test: connection refused until then
    flaky = Receiver(fail_first=3).start()
    endpoints = [
        _endpoint("live", live.url),
        _endpoint("late", late.url),
        _endpoint("flaky", flaky.url),
    ]
    stack = Stack(redis_url, tmp, INGEST_NOTIFY_ENDPOINTS=json.dumps(endpoints))
    try:
        stack.worker(concurrency=2)
        host = stack.frontend().url.removeprefix("http://")
        image = make_oci_layout(tmp / "src", "v1", b"notify")
        push = skopeo(
            tmp,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{tmp / 'src'}:v1",
            f"docker://{host}/{REPO}:v1",
        )
        assert push.returncode == 0, push.stderr
        yield Pushed(stack, live, late, flaky, image)
    finally:
        stack.close()
        for r in (live, late, flaky):
            r.stop()


def _check_push_sequence(events: list[dict[str, Any]], image: dict[str, Any]) -> None:
    blobs = {sha256(b): len(b) for b in (*image["layers"], image["config"])}
    assert [e["action"] for e in events] == ["push"] * 5, events
    *blob_events, manifest_event = events
    # Every blob before the manifest that names them, with its digest and size.
    assert {e["target"]["digest"]: e["target"]["size"] for e in blob_events} == blobs
    for e in blob_events:
        assert e["target"]["repository"] == REPO
        assert e["target"]["length"] == e["target"]["size"]
        assert e["target"]["mediaType"] == "application/octet-stream"
        # Emitted by the worker, yet naming the request that finished the upload.
        assert e["request"]["method"] == "PUT"
        assert e["request"]["useragent"].startswith("skopeo/")
        assert e["request"]["addr"].startswith("127.0.0.1:")
        assert e["target"]["url"].endswith(f"/v2/{REPO}/blobs/{e['target']['digest']}")
    target = manifest_event["target"]
    assert target["digest"] == sha256(image["manifest"])
    assert target["size"] == len(image["manifest"])
    assert target["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert (target["repository"], target["tag"]) == (REPO, "v1")
    assert target["url"].endswith(f"/v2/{REPO}/manifests/{target['digest']}")
    assert manifest_event["request"]["method"] == "PUT"
    # The client that pushed, as it named itself.
    assert manifest_event["request"]["useragent"].startswith("skopeo/")
    assert len({e["id"] for e in events}) == 5


def test_a_receiver_gets_a_skopeo_push_in_order(pushed: Pushed) -> None:
    wait_for(lambda: len(pushed.live.events()) >= 5)
    time.sleep(0.5)  # nothing more may come
    events = pushed.live.events()
    _check_push_sequence(events, pushed.image)
    for headers in pushed.live.headers:
        assert headers["Content-Type"] == MEDIA_TYPE
        assert headers["Authorization"] == TOKEN
    wait_for(lambda: pushed.stats("live").state.delivered == 5)
    assert pushed.stats("live").waiting == 0


def test_an_endpoint_that_was_down_gets_the_same_events_in_order_once_back(
    pushed: Pushed,
) -> None:
    wait_for(lambda: len(pushed.live.events()) >= 5)
    # Down: the attempts fail and are counted, the events wait.
    wait_for(lambda: pushed.stats("late").state.failed_attempts >= 2)
    stats = pushed.stats("late")
    assert stats.state.delivered == 0
    assert stats.waiting == 5
    assert "ConnectError" in stats.state.last_error
    # Visible where Flower looks: the delivery task is in RETRY, naming the endpoint.
    with redis.Redis.from_url(pushed.stack.redis_url) as r:
        metas = [json.loads(r.get(k) or b"{}") for k in r.scan_iter("celery-task-meta-*")]
    retrying = [
        m
        for m in metas
        if m.get("status") == "RETRY" and "endpoint late" in json.dumps(m.get("result"))
    ]
    assert retrying, [m.get("status") for m in metas]

    pushed.late.start()
    wait_for(lambda: len(pushed.late.events()) >= 5, timeout=30)
    time.sleep(1.5)  # a duplicate would arrive within a backoff or two
    late = pushed.late.events()
    assert [e["id"] for e in late] == [e["id"] for e in pushed.live.events()]
    _check_push_sequence(late, pushed.image)
    wait_for(lambda: pushed.stats("late").state.delivered == 5)
    assert pushed.stats("late").state.failures == 0


def test_an_endpoint_answering_503_gets_every_event_after_it_recovers(pushed: Pushed) -> None:
    wait_for(lambda: len(pushed.flaky.events()) >= 5)
    time.sleep(0.5)
    assert pushed.flaky.refused == 3
    flaky = pushed.flaky.events()
    assert [e["id"] for e in flaky] == [e["id"] for e in pushed.live.events()]
    stats = pushed.stats("flaky")
    assert (stats.state.failed_attempts, stats.state.delivered, stats.waiting) == (3, 5, 0)
    assert stats.state.last_error == "HTTP 503"


def test_the_blob_events_name_the_verification_that_committed_them(pushed: Pushed) -> None:
    wait_for(lambda: len(pushed.live.events()) >= 5)
    *blobs, _ = pushed.live.events()
    task_ids = {e["request"]["id"] for e in blobs}
    # request.id is the id of the verification task that committed the blob: its
    # upload's recorded result says so.
    results = [
        json.loads(p.read_text()) for p in (pushed.stack.storage / "uploads").glob("*/result.json")
    ]
    committed = {r["task_id"] for r in results if r["repository"] == REPO}
    assert len(task_ids) == 4
    assert task_ids <= committed
    for e in blobs:
        assert e["source"]["addr"]
        assert e["source"]["instanceID"]
