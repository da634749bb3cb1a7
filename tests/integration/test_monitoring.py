"""Monitoring against a real frontend, real workers and a real Redis: outcomes are
counted by the workers (async finishes included, once per attempt however often a
task is delivered) and exported by the frontend's debug listener with the HTTP server
metrics; a worker that leaves a routed queue unconsumed says so when it starts."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

import httpx
import pytest

from devtools.devstack import Frontend, Worker
from ingest.queue import QUEUE_VERIFY, TASK_VERIFY
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

COMMITTED = 'ingest_verification_outcomes_total{code="",outcome="committed"}'
REJECTED = 'ingest_verification_outcomes_total{code="DIGEST_INVALID",outcome="rejected"}'


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def scrape(fe: Frontend) -> str:
    assert fe.debug_url is not None
    return httpx.get(f"{fe.debug_url}/metrics", timeout=10).text


def value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def poll(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for: {what}")


def push_async(client: httpx.Client, repo: str, data: bytes, digest: str) -> str:
    """POST, PATCH, then the finishing PUT with ``Prefer: respond-async`` (the CLI's
    path): 202 at once, the outcome decided later by a worker. The upload id."""
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = client.patch(r.headers["location"], content=data)
    assert r.status_code == 202, r.text
    upload_id = r.headers["docker-upload-uuid"]
    r = client.put(
        r.headers["location"], params={"digest": digest}, headers={"Prefer": "respond-async"}
    )
    assert r.status_code == 202, r.text
    return upload_id


def test_async_finishes_are_counted_by_the_workers_once_per_attempt(stack: Stack) -> None:
    worker = stack.worker()
    fe = stack.frontend()
    good, bad = b"counted although nobody waited", b"claimed to be something else"
    with httpx.Client(base_url=fe.url, timeout=30) as client:
        assert value(scrape(fe), COMMITTED) == 0  # the series is there from the start

        committed_id = push_async(client, "monitor/async", good, sha256(good))
        poll("the async commit is counted", lambda: value(scrape(fe), COMMITTED) == 1)
        rejected_id = push_async(client, "monitor/async", bad, sha256(b"not these bytes"))
        poll("the async rejection is counted", lambda: value(scrape(fe), REJECTED) == 1)

        # The commit's task delivered again under its id, as after a worker died
        # before acknowledging it: it runs, and counts nothing new.
        status = client.get(f"/ingest/v1/uploads/{committed_id}").json()
        assert status["state"] == "committed", status
        stack.ingest.queue.app.send_task(  # type: ignore[attr-defined]
            TASK_VERIFY,
            args=(committed_id, sha256(good), None),
            kwargs={"staged_size": len(good)},
            task_id=status["task_id"],
            queue=QUEUE_VERIFY,
        )
        done = f"{TASK_VERIFY}[{status['task_id']}] succeeded"
        poll("the redelivery ran", lambda: worker.log().count(done) == 2)

        # A retry is a new attempt: the rejected upload, retried with the right claim.
        r = client.post(f"/ingest/v1/uploads/{rejected_id}/retry", json={"digest": sha256(bad)})
        assert r.status_code in (201, 202), r.text
        poll("the retry's commit is counted", lambda: value(scrape(fe), COMMITTED) == 2)

    text = scrape(fe)
    assert value(text, COMMITTED) == 2
    assert value(text, REJECTED) == 1
    # The HTTP server metrics of the same requests, by route template.
    put = (
        'ingest_http_requests_total{method="PUT",'
        'route="/v2/{name}/blobs/uploads/{upload_id}",status="202"}'
    )
    assert value(text, put) == 2
    assert 'ingest_build_info{commit="' in text
    assert "monitor/async" not in text  # no repository, upload id or digest in a label
    assert committed_id not in text


def test_a_worker_on_too_few_queues_warns_at_start_naming_each_unconsumed_queue(
    stack: Stack,
) -> None:
    verify_only = stack.worker(queues="verify")
    poll(
        "the start-up warning",
        lambda: (
            "no live worker consumes queue 'prehash'" in verify_only.log()
            and "no live worker consumes queue 'maintenance'" in verify_only.log()
        ),
        15,
    )
    assert "ingest.purge_uploads" in verify_only.log()
    assert "no live worker consumes queue 'verify'" not in verify_only.log()

    # A worker on every queue (what `ingest worker` runs) finds nothing missing.
    full: Worker = stack.worker()
    poll("the all-clear", lambda: "every routed queue has a live consumer" in full.log(), 15)
    assert "no live worker consumes" not in full.log()
