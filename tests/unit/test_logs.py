"""Structured logs: JSON lines carrying the upload and task ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ingest import logs
from ingest.auth.none import NoAuth
from ingest.http.app import create_app
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import make_ingest, sha256


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs._ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_bound_ids_appear_on_every_line_and_are_unbound_after(captured: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    with logs.bind(upload_id="u-1", task_id="t-1"):
        log.info("inside %s", "the task", extra={"bytes": 5})
    log.info("outside")
    inside, outside = lines(captured)
    assert inside["msg"] == "inside the task"
    assert inside["upload_id"] == "u-1"
    assert inside["task_id"] == "t-1"
    assert inside["bytes"] == 5
    assert inside["level"] == "info"
    assert "upload_id" not in outside
    assert "task_id" not in outside


def test_exceptions_are_one_json_line_with_the_traceback(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.logs").exception("failed")
    (line,) = lines(captured)
    assert "ValueError: boom" in str(line["exc"])


def test_every_request_line_of_an_upload_carries_its_upload_and_task_id(
    captured: io.StringIO,
) -> None:
    from starlette.testclient import TestClient

    ing, _ = make_ingest(MemoryDriver())
    client = TestClient(create_app(ingest=ing, auth=NoAuth()))
    start = client.post("/v2/logs/repo/blobs/uploads/")
    upload_id = start.headers["docker-upload-uuid"]
    client.patch(start.headers["location"], content=b"data")
    put = client.put(start.headers["location"], params={"digest": sha256(b"data")})
    assert put.status_code == 201
    access = [ln for ln in lines(captured) if ln["logger"] == "ingest.http.access"]
    assert [(ln["method"], ln["status"]) for ln in access] == [
        ("POST", 202),
        ("PATCH", 202),
        ("PUT", 201),
    ]
    assert all(ln["upload_id"] == upload_id for ln in access)
    assert access[-1]["task_id"]
    assert isinstance(access[-1]["duration_ms"], float)


def test_celery_task_lines_outside_the_task_context_get_the_task_id_from_their_data(
    captured: io.StringIO,
) -> None:
    uid = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"
    logging.getLogger("celery.worker.strategy").info(
        "Task %(name)s[%(id)s] received",
        {"name": "ingest.verify_upload", "id": "t-9"},
        extra={"data": {"id": "t-9", "args": f"upload={uid} digest=sha256:ab size=3"}},
    )
    (line,) = lines(captured)
    assert line["task_id"] == "t-9"
    # Nothing is parsed out of the display string: the worker's own line binds them.
    assert "upload_id" not in line


def test_a_received_verification_is_logged_with_its_upload_and_task_ids(
    captured: io.StringIO,
) -> None:
    from workers.app import log_received

    uid = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"

    class Received:
        id = "t-10"
        name = "ingest.verify_upload"
        args = (uid, "sha256:" + "ab" * 32, None)

    class Forged(Received):
        args = ("../../etc", "x", None)

    log_received(request=Received())
    log_received(request=Forged())
    (line,) = lines(captured)
    assert (line["task_id"], line["upload_id"]) == ("t-10", uid)
