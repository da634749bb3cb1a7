"""The ingest JSON API (/ingest/v1) and the app-wide error rendering."""

from __future__ import annotations

import uuid

import pytest

from ingest.errors import DigestInvalid
from tests.unit.fakes import sha256
from tests.unit.http.conftest import UUID4, Env, assert_envelope, assert_error

REPO = "team/service"
DATA = b"payload " * 200


def _status(env: Env, upload_id: str) -> dict[str, object]:
    r = env.client.get(f"/ingest/v1/uploads/{upload_id}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert isinstance(doc, dict)
    return doc


def _failed_upload(env: Env) -> tuple[str, str]:
    """An upload whose PUT failed verification; returns (Location, id)."""
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    r = env.client.put(loc, params={"digest": sha256(b"wrong")})
    assert_error(r, 400, "DIGEST_INVALID")
    return loc, upload_id


# -- status ----------------------------------------------------------------------------


def test_status_open(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA[:100])
    doc = _status(env, upload_id)
    assert set(doc) == {
        "upload_id",
        "repository",
        "started_at",
        "last_activity",
        "state",
        "offset",
        "claimed_digest",
        "task_id",
        "attempt",
        "task_state",
        "progress",
        "result",
        "error",
    }
    assert doc["upload_id"] == upload_id
    assert doc["repository"] == REPO
    assert doc["state"] == "open"
    assert doc["offset"] == 100
    assert doc["attempt"] == 0
    assert doc["error"] is None
    assert doc["result"] is None


def test_status_finishing(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    r = env.client.put(loc, params={"digest": sha256(DATA)}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    assert r.headers["location"] == f"/ingest/v1/uploads/{upload_id}"
    doc = _status(env, upload_id)
    assert doc["state"] == "finishing"
    assert doc["claimed_digest"] == sha256(DATA)
    assert doc["task_id"] == env.queue.calls[0].task_id
    assert doc["task_state"] == "PENDING"
    assert doc["attempt"] == 1


def test_status_committed(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    assert env.client.put(loc, params={"digest": sha256(DATA)}).status_code == 201
    doc = _status(env, upload_id)
    assert doc["state"] == "committed"
    assert doc["offset"] == len(DATA)
    result = doc["result"]
    assert isinstance(result, dict)
    assert result["digest"] == sha256(DATA)
    assert result["size"] == len(DATA)
    assert result["repository"] == REPO


def test_status_failed(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    doc = _status(env, upload_id)
    assert doc["state"] == "failed"
    assert doc["offset"] == len(DATA)
    error = doc["error"]
    assert isinstance(error, dict)
    assert error["code"] == "DIGEST_INVALID"
    assert error["detail"]["reason"] == "mismatch"
    assert error["detail"]["computed"] == sha256(DATA)


@pytest.mark.parametrize("upload_id", [str(uuid.uuid4()), "nope", "%2e%2e", "A" * 36])
def test_status_unknown(env: Env, upload_id: str) -> None:
    assert_error(env.client.get(f"/ingest/v1/uploads/{upload_id}"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_status_after_cancel(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    assert env.client.delete(loc).status_code == 204
    assert_error(env.client.get(f"/ingest/v1/uploads/{upload_id}"), 404, "BLOB_UPLOAD_UNKNOWN")


# -- retry -----------------------------------------------------------------------------


def test_retry_same_digest_fails_again(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry")
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["upload_id"] == upload_id
    assert doc["state"] == "finishing"
    assert UUID4.fullmatch(doc["task_id"])
    assert r.headers["location"] == f"/ingest/v1/uploads/{upload_id}"
    call = env.queue.call(doc["task_id"])
    assert call.digest == sha256(b"wrong")
    assert _status(env, upload_id)["state"] == "finishing"
    with pytest.raises(DigestInvalid):
        env.queue.wait(doc["task_id"], 1.0)  # the worker runs the attempt
    status = _status(env, upload_id)
    assert status["state"] == "failed"
    assert status["attempt"] == 2


def test_retry_with_corrected_digest_commits(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry", json={"digest": sha256(DATA)})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert env.queue.call(task_id).digest == sha256(DATA)
    result = env.queue.wait(task_id, 1.0)
    assert result["digest"] == sha256(DATA)
    status = _status(env, upload_id)
    assert status["state"] == "committed"
    h = env.client.head(f"/v2/{REPO}/blobs/{sha256(DATA)}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(DATA))


def test_retry_with_empty_digest_uses_recorded_claim(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry", json={"digest": ""})
    assert r.status_code == 202
    assert env.queue.call(r.json()["task_id"]).digest == sha256(b"wrong")


def test_retry_committed(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    assert env.client.put(loc, params={"digest": sha256(DATA)}).status_code == 201
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry")
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")


@pytest.mark.parametrize("state", ["open", "finishing"])
def test_retry_not_failed(env: Env, state: str) -> None:
    loc, upload_id = env.start(REPO)
    if state == "finishing":
        env.client.put(loc, params={"digest": sha256(b"")}, headers={"Prefer": "respond-async"})
    detail = assert_error(
        env.client.post(f"/ingest/v1/uploads/{upload_id}/retry"), 400, "BLOB_UPLOAD_INVALID"
    )
    assert detail["state"] == state


@pytest.mark.parametrize("upload_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_retry_unknown(env: Env, upload_id: str) -> None:
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "BLOB_UPLOAD_INVALID"),
        (b"[1]", "BLOB_UPLOAD_INVALID"),
        (b'{"digest": 5}', "BLOB_UPLOAD_INVALID"),
        (b'{"digest": "sha256:zz"}', "DIGEST_INVALID"),
        (b'{"digest": "md5:' + b"a" * 32 + b'"}', "DIGEST_INVALID"),
    ],
)
def test_retry_bad_body(env: Env, body: bytes, code: str) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(
        f"/ingest/v1/uploads/{upload_id}/retry",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, code)
    assert _status(env, upload_id)["state"] == "failed"
    assert len(env.queue.calls) == 1


def test_retry_with_an_oversized_body_is_refused_not_ignored(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    body = b'{"digest": "' + sha256(DATA).encode() + b'", "pad": "' + b"x" * 5000 + b'"}'
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry", content=body)
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")
    assert len(env.queue.calls) == 1  # only the original, failed attempt


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", " 2x"])
def test_retry_with_a_malformed_content_length_is_size_invalid_and_queues_nothing(
    env: Env, length: str
) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(
        f"/ingest/v1/uploads/{upload_id}/retry", content=b"{}", headers={"Content-Length": length}
    )
    detail = assert_error(r, 400, "SIZE_INVALID")
    assert detail == {"content_length": length}
    assert _status(env, upload_id)["state"] == "failed"
    assert len(env.queue.calls) == 1  # only the original, failed attempt


# -- bulk retry ------------------------------------------------------------------------


def test_bulk_retry_requeues_every_failed_upload_and_nothing_else(env: Env) -> None:
    _, first = _failed_upload(env)
    _, second = _failed_upload(env)
    env.start(REPO)  # open
    env.push_blob(REPO, b"committed")
    r = env.client.post("/ingest/v1/failed-uploads/retry")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["errors"] == []
    assert sorted(q["upload_id"] for q in doc["queued"]) == sorted([first, second])
    for q in doc["queued"]:
        assert env.queue.call(q["task_id"]).upload_id == q["upload_id"]
        assert _status(env, q["upload_id"])["state"] == "finishing"


def test_bulk_retry_filters_by_code_and_age(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    calls = len(env.queue.calls)
    r = env.client.post("/ingest/v1/failed-uploads/retry", json={"code": "UNAVAILABLE"})
    assert r.json() == {"queued": [], "errors": []}
    r = env.client.post(
        "/ingest/v1/failed-uploads/retry", json={"code": "DIGEST_INVALID", "since": 3600}
    )
    assert [q["upload_id"] for q in r.json()["queued"]] == [upload_id]
    assert len(env.queue.calls) == calls + 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1]",
        b'{"since": -1}',
        b'{"since": "2h"}',
        b'{"since": true}',
        b'{"code": 5}',
    ],
)
def test_bulk_retry_with_a_bad_body_queues_nothing(env: Env, body: bytes) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post("/ingest/v1/failed-uploads/retry", content=body)
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")
    assert _status(env, upload_id)["state"] == "failed"
    assert len(env.queue.calls) == 1


# -- OpenAPI ---------------------------------------------------------------------------


def test_openapi(env: Env) -> None:
    r = env.client.get("/ingest/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    paths = doc["paths"]
    assert {
        "/ingest/v1/uploads/{upload_id}",
        "/ingest/v1/uploads/{upload_id}/retry",
        "/v2/",
    } <= set(paths)
    assert "get" in paths["/ingest/v1/uploads/{upload_id}"]
    assert "post" in paths["/ingest/v1/uploads/{upload_id}/retry"]
    for ops in paths.values():
        for op in ops.values():
            assert op["responses"]
            for param in op.get("parameters", []):
                assert param["in"] in ("path", "query", "header")
                assert param["name"] in ("upload_id",)
    schemas = doc["components"]["schemas"]
    assert {"Errors", "UploadStatus"} <= set(schemas)
    # every $ref resolves
    refs: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    refs.append(v)
                else:
                    collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas
    # the documented status fields are the ones the endpoint returns
    _, upload_id = env.start(REPO)
    assert set(_status(env, upload_id)) == set(schemas["UploadStatus"]["properties"])
    assert set(schemas["UploadStatus"]["properties"]["state"]["enum"]) >= {
        "open",
        "finishing",
        "failed",
        "committed",
    }


# -- routing errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/", "/v2/foo", "/v2/foo/bar/baz", "/ingest/v1/", "/ingest/v1/uploads/", "/nope"],
)
def test_unknown_route(env: Env, path: str) -> None:
    r = env.client.get(path)
    assert_error(r, 404, "UNSUPPORTED")
    h = env.client.head(path)
    assert h.status_code == 404
    assert h.content == b""


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v2/", {"GET", "HEAD"}),
        pytest.param(
            "PUT",
            f"/v2/{REPO}/blobs/{sha256(b'x')}",
            {"GET", "HEAD", "DELETE"},
        ),
        pytest.param(
            "POST",
            f"/v2/{REPO}/blobs/uploads/{uuid.uuid4()}",
            {"GET", "HEAD", "PATCH", "PUT", "DELETE"},
        ),
        pytest.param(
            "POST",
            f"/v2/{REPO}/manifests/latest",
            {"GET", "HEAD", "PUT", "DELETE"},
        ),
        ("GET", f"/v2/{REPO}/blobs/uploads/", {"POST"}),
        ("POST", f"/v2/{REPO}/tags/list", {"GET", "HEAD"}),
        ("DELETE", "/ingest/v1/openapi.json", {"GET", "HEAD"}),
        ("GET", f"/ingest/v1/uploads/{uuid.uuid4()}/retry", {"POST"}),
    ],
)
def test_wrong_method(env: Env, method: str, path: str, allowed: set[str]) -> None:
    r = env.client.request(method, path)
    assert_error(r, 405, "UNSUPPORTED")
    assert "allow" in r.headers
    assert set(r.headers["allow"].replace(" ", "").split(",")) == allowed


def test_error_envelope_helper_rejects_tracebacks(env: Env) -> None:
    # sanity check of the shared assertion on a real error body
    r = env.client.get(f"/v2/{REPO}/blobs/{sha256(b'none')}")
    (err,) = assert_envelope(r)
    assert err["code"] == "BLOB_UNKNOWN"
    assert err["message"]


def test_retry_deeply_nested_body(env: Env) -> None:
    _, upload_id = _failed_upload(env)
    r = env.client.post(f"/ingest/v1/uploads/{upload_id}/retry", content=b"[" * 4000)
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")
