"""Blob and upload endpoints of the OCI distribution API, in process."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from ingest.config import Settings
from tests.unit.fakes import sha256, sha512
from tests.unit.http.conftest import DELETES_ENABLED, UUID4, Env, EnvFactory, assert_error

REPO = "library/ubuntu"
OTHER = "library/debian"
DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- /v2/ ------------------------------------------------------------------------------


def test_version_check(env: Env) -> None:
    r = env.client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.json() == {}
    h = env.client.head("/v2/")
    assert h.status_code == 200
    assert h.content == b""
    assert h.headers["docker-distribution-api-version"] == "registry/2.0"


def test_version_header_on_every_v2_response_only(env: Env) -> None:
    r = env.client.head(f"/v2/{REPO}/blobs/{sha256(b'x')}")
    assert r.status_code == 404
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    r = env.client.get("/ingest/v1/openapi.json")
    assert "docker-distribution-api-version" not in r.headers


# -- POST uploads ----------------------------------------------------------------------


def test_start_upload(env: Env) -> None:
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202
    upload_id = r.headers["docker-upload-uuid"]
    assert UUID4.fullmatch(upload_id)
    assert r.headers["location"] == f"/v2/{REPO}/blobs/uploads/{upload_id}"
    assert r.headers["range"] == "0-0"
    assert r.headers["content-length"] == "0"
    assert r.content == b""


def test_start_upload_digest_algorithm_is_accepted(env: Env) -> None:
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"digest-algorithm": "sha512"})
    assert r.status_code == 202
    assert UUID4.fullmatch(r.headers["docker-upload-uuid"])


def test_start_upload_invalid_name(env: Env) -> None:
    r = env.client.post("/v2/Library/Ubuntu/blobs/uploads/")
    detail = assert_error(r, 400, "NAME_INVALID")
    assert detail["name"] == "Library/Ubuntu"


def test_post_monolithic(env: Env) -> None:
    d = sha256(DATA)
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": d}, content=DATA)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{REPO}/blobs/{d}"
    assert r.headers["docker-content-digest"] == d
    assert env.client.get(f"/v2/{REPO}/blobs/{d}").content == DATA


def test_post_monolithic_wrong_digest(env: Env) -> None:
    wrong = sha256(b"something else")
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": wrong}, content=DATA)
    detail = assert_error(r, 400, "DIGEST_INVALID")
    assert detail["reason"] == "mismatch"
    assert detail["claimed"] == wrong
    assert detail["computed"] == sha256(DATA)
    assert env.client.head(f"/v2/{REPO}/blobs/{wrong}").status_code == 404
    assert env.client.head(f"/v2/{REPO}/blobs/{sha256(DATA)}").status_code == 404


def test_post_monolithic_malformed_digest_opens_no_session(env: Env) -> None:
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": "sha256:xyz"}, content=DATA)
    detail = assert_error(r, 400, "DIGEST_INVALID")
    assert detail["reason"] == "malformed"
    assert env.ingest.staging.list_ids() == []


# -- cross-repository mount ------------------------------------------------------------


def test_mount_linked_in_source(env: Env) -> None:
    d = env.push_blob(OTHER, DATA)
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 404
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": d, "from": OTHER})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{REPO}/blobs/{d}"
    assert r.headers["docker-content-digest"] == d
    h = env.client.head(f"/v2/{REPO}/blobs/{d}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(DATA))
    assert env.ingest.staging.list_ids() != []  # the source's committed session only
    assert len(env.queue.calls) == 1  # no verification for the mount


def test_mount_by_sha512_alias(env: Env) -> None:
    d512 = env.push_blob(OTHER, DATA, sha512(DATA))
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": d512, "from": OTHER})
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == d512
    for d in (d512, sha256(DATA)):
        assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 200


@pytest.mark.parametrize("source", ["not-linked", "missing"])
def test_mount_declined_opens_a_session(env: Env, source: str) -> None:
    d = sha256(DATA)
    if source == "not-linked":
        env.push_blob(OTHER, b"another blob")  # the source repository exists
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": d, "from": OTHER})
    assert r.status_code == 202, r.text
    upload_id = r.headers["docker-upload-uuid"]
    assert r.headers["location"] == f"/v2/{REPO}/blobs/uploads/{upload_id}"
    assert r.headers["range"] == "0-0"
    # skopeo then cancels the unwanted session and expects 204.
    assert env.client.delete(r.headers["location"]).status_code == 204
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 404


def test_mount_without_from_opens_a_session(env: Env) -> None:
    d = env.push_blob(OTHER, DATA)
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": d})
    assert r.status_code == 202
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 404


def test_mount_from_an_invalid_name_falls_back_to_a_session(env: Env) -> None:
    # As distribution does (and the spec suggests): unmountable → a fresh session.
    r = env.client.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": sha256(DATA), "from": "Bad/../Name"}
    )
    assert r.status_code == 202
    assert len(env.ingest.staging.list_ids()) == 1
    assert env.client.head(f"/v2/{REPO}/blobs/{sha256(DATA)}").status_code == 404


def test_mount_of_a_malformed_digest_falls_back_to_a_session(env: Env) -> None:
    r = env.client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": "sha256:zz", "from": OTHER})
    assert r.status_code == 202
    assert r.headers["location"].startswith(f"/v2/{REPO}/blobs/uploads/")


# -- PATCH -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{a}-{b}", "bytes={a}-{b}"])
def test_patch_with_content_range(env: Env, form: str) -> None:
    loc, upload_id = env.start(REPO)
    offset = 0
    for chunk in _chunks(DATA, 300):
        cr = form.format(a=offset, b=offset + len(chunk) - 1)
        r = env.client.patch(
            loc,
            content=chunk,
            headers={"Content-Range": cr, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        assert r.headers["range"] == f"0-{offset - 1}"
        assert r.headers["location"] == f"/v2/{REPO}/blobs/uploads/{upload_id}"
        assert r.headers["docker-upload-uuid"] == upload_id
        assert r.headers["content-length"] == "0"
        loc = r.headers["location"]
    r = env.client.put(loc, params={"digest": sha256(DATA)})
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA


def test_patch_without_content_range_appends(env: Env) -> None:
    loc, _ = env.start(REPO)
    for i, chunk in enumerate(_chunks(DATA, 500)):
        r = env.client.patch(loc, content=chunk)
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{min((i + 1) * 500, len(DATA)) - 1}"
        loc = r.headers["location"]
    assert env.client.put(loc, params={"digest": sha256(DATA)}).status_code == 201


def test_patch_chunked_transfer_encoding(env: Env) -> None:
    """skopeo's on-the-fly gzip path: one PATCH, Transfer-Encoding: chunked, no length."""
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=_chunks(DATA, 100))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 202, r.text
    assert r.headers["range"] == f"0-{len(DATA) - 1}"
    assert env.client.put(r.headers["location"], params={"digest": sha256(DATA)}).status_code == 201
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA


def test_patch_empty_body_keeps_range(env: Env) -> None:
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=b"")
    assert r.status_code == 202
    assert r.headers["range"] == "0-0"


@pytest.mark.parametrize("start", [0, 1, 6, 99])
def test_patch_wrong_start_is_range_invalid(env: Env, start: int) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=b"12345")
    r = env.client.patch(loc, content=b"abc", headers={"Content-Range": f"{start}-{start + 2}"})
    detail = assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["range"] == "0-4"
    assert r.headers["docker-upload-uuid"] == upload_id
    assert detail["offset"] == 5
    assert detail["requested"] == start
    # nothing was appended
    assert env.client.get(loc).headers["range"] == "0-4"


def test_patch_wrong_start_on_empty_upload(env: Env) -> None:
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=b"abc", headers={"Content-Range": "3-5"})
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["range"] == "0-0"


def test_patch_content_range_length_mismatch(env: Env) -> None:
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=b"abcd", headers={"Content-Range": "0-9"})
    detail = assert_error(r, 416, "RANGE_INVALID")
    assert detail["offset"] == 0
    assert r.headers["range"] == "0-0"
    assert env.ingest.staging.size(loc.rsplit("/", 1)[1]) == 0


@pytest.mark.parametrize("crange", ["abc", "5-3", "0-", "-5", "bytes 0-3/4", "0-3,4-5", ""])
def test_patch_malformed_content_range(env: Env, crange: str) -> None:
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=b"abcd", headers={"Content-Range": crange})
    assert_error(r, 416, "RANGE_INVALID")


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", " 4x"])
def test_patch_invalid_content_length(env: Env, length: str) -> None:
    loc, _ = env.start(REPO)
    r = env.client.patch(loc, content=b"abcd", headers={"Content-Length": length})
    assert_error(r, 400, "SIZE_INVALID")


def test_patch_body_shorter_than_content_length(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    r = env.client.patch(loc, content=b"abcd", headers={"Content-Length": "10"})
    detail = assert_error(r, 400, "SIZE_INVALID")
    assert detail == {"content_length": 10, "received": 4}
    # A small chunk is taken whole or not at all; the client learns the offset
    # (unchanged) from a GET on the session and sends the chunk again.
    assert env.ingest.staging.size(upload_id) == 0
    assert env.client.get(loc).headers["range"] == "0-0"


def test_patch_unknown_upload(env: Env) -> None:
    r = env.client.patch(env.upload_url(REPO, str(uuid.uuid4())), content=b"x")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    "upload_id",
    ["not-a-uuid", "...", "%2e%2e", "ABCDEF00-0000-4000-8000-000000000000", "0" * 36],
)
@pytest.mark.parametrize("method", ["PATCH", "PUT", "GET", "DELETE"])
def test_upload_id_not_a_uuid(env: Env, upload_id: str, method: str) -> None:
    r = env.client.request(
        method,
        env.upload_url(REPO, upload_id),
        params={"digest": sha256(b"")},
        content=b"x" if method in ("PATCH", "PUT") else None,
    )
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("method", ["PATCH", "PUT", "GET", "DELETE"])
def test_upload_of_another_repository(env: Env, method: str) -> None:
    _, upload_id = env.start(OTHER)
    env.client.patch(env.upload_url(OTHER, upload_id), content=b"abc")
    r = env.client.request(
        method,
        env.upload_url(REPO, upload_id),
        params={"digest": sha256(b"abc")},
        content=b"x" if method == "PATCH" else None,
    )
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    # the session in its own repository is untouched
    g = env.client.get(env.upload_url(OTHER, upload_id))
    assert g.status_code == 204
    assert g.headers["range"] == "0-2"


def test_patch_after_finish_is_upload_invalid(env: Env) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=b"abc")
    r = env.client.put(loc, params={"digest": sha256(b"abc")}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    r = env.client.patch(loc, content=b"more")
    detail = assert_error(r, 400, "BLOB_UPLOAD_INVALID")
    assert detail["state"] == "finishing"


# -- PUT -------------------------------------------------------------------------------


def test_put_empty_body_finishes(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    d = sha256(DATA)
    r = env.client.put(loc, params={"digest": d}, headers={"Content-Length": "0"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{REPO}/blobs/{d}"
    assert r.headers["docker-content-digest"] == d
    assert r.headers["content-length"] == "0"
    assert [c.upload_id for c in env.queue.calls] == [upload_id]
    h = env.client.head(f"/v2/{REPO}/blobs/{d}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(DATA))


def test_put_with_whole_body(env: Env) -> None:
    """oras-py's monolithic push: POST, then PUT with the whole body."""
    loc, _ = env.start(REPO)
    r = env.client.put(
        loc,
        params={"digest": sha256(DATA)},
        content=DATA,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA


def test_put_with_final_chunk(env: Env) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=DATA[:1000], headers={"Content-Range": "0-999"})
    r = env.client.put(
        loc,
        params={"digest": sha256(DATA)},
        content=DATA[1000:],
        headers={"Content-Range": f"1000-{len(DATA) - 1}"},
    )
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA


def test_put_with_chunked_final_chunk(env: Env) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=DATA[:10])
    r = env.client.put(loc, params={"digest": sha256(DATA)}, content=_chunks(DATA[10:], 64))
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA


def test_put_final_chunk_wrong_start(env: Env) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=b"abc")
    r = env.client.put(
        loc, params={"digest": sha256(b"abcdef")}, content=b"def", headers={"Content-Range": "4-6"}
    )
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["range"] == "0-2"
    assert env.queue.calls == []


def test_put_wrong_digest_keeps_upload_then_succeeds(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    wrong = sha256(b"not it")
    r = env.client.put(loc, params={"digest": wrong})
    detail = assert_error(r, 400, "DIGEST_INVALID")
    assert detail["reason"] == "mismatch"
    assert detail["claimed"] == wrong
    assert detail["computed"] == sha256(DATA)
    # nothing is linked under either digest
    assert env.client.head(f"/v2/{REPO}/blobs/{wrong}").status_code == 404
    assert env.client.head(f"/v2/{REPO}/blobs/{sha256(DATA)}").status_code == 404
    # the session and its bytes are kept
    assert env.ingest.staging.size(upload_id) == len(DATA)
    g = env.client.get(loc)
    assert g.status_code == 204
    assert g.headers["range"] == f"0-{len(DATA) - 1}"
    # ... but it takes no more data: it is "failed", not "open"
    p = env.client.patch(loc, content=b"x")
    assert assert_error(p, 400, "BLOB_UPLOAD_INVALID")["state"] == "failed"
    # a second PUT with the right digest commits the kept bytes
    r = env.client.put(loc, params={"digest": sha256(DATA)})
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/blobs/{sha256(DATA)}").content == DATA
    assert len(env.queue.calls) == 2


def test_put_without_digest(env: Env) -> None:
    loc, _ = env.start(REPO)
    detail = assert_error(env.client.put(loc), 400, "DIGEST_INVALID")
    assert detail["reason"] == "missing"
    detail = assert_error(env.client.put(loc, params={"digest": ""}), 400, "DIGEST_INVALID")
    assert env.queue.calls == []


@pytest.mark.parametrize(
    ("digest", "reason"),
    [
        ("sha256:abc", "malformed"),
        ("sha256:" + "A" * 64, "malformed"),
        ("sha256" + "a" * 64, "malformed"),
        ("md5:" + "a" * 32, "unsupported"),
        ("../../etc:passwd", "malformed"),
    ],
)
def test_put_malformed_digest(env: Env, digest: str, reason: str) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=b"abc")
    detail = assert_error(env.client.put(loc, params={"digest": digest}), 400, "DIGEST_INVALID")
    assert detail["reason"] == reason
    assert env.queue.calls == []


def test_put_twice_is_idempotent(env: Env) -> None:
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=DATA)
    d = sha256(DATA)
    assert env.client.put(loc, params={"digest": d}).status_code == 201
    r = env.client.put(loc, params={"digest": d})
    assert r.status_code == 201
    assert r.headers["docker-content-digest"] == d
    assert len(env.queue.calls) == 1
    # another digest for the committed upload is refused
    r = env.client.put(loc, params={"digest": sha256(b"other")})
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")


def test_put_unknown_upload(env: Env) -> None:
    r = env.client.put(env.upload_url(REPO, str(uuid.uuid4())), params={"digest": sha256(b"")})
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_put_respond_async(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=DATA)
    d = sha256(DATA)
    r = env.client.put(loc, params={"digest": d}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    assert r.headers["location"] == f"/ingest/v1/uploads/{upload_id}"
    assert r.headers["docker-upload-uuid"] == upload_id
    assert r.content == b""
    # enqueued, not yet verified: nothing is linked
    (call,) = env.queue.calls
    assert (call.upload_id, call.digest) == (upload_id, d)
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 404
    # the worker runs: now it is there
    env.queue.wait(call.task_id, 1.0)
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 200


def test_empty_blob(env: Env) -> None:
    d = env.push_blob(REPO, b"")
    r = env.client.get(f"/v2/{REPO}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    r = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */0"


# -- GET / DELETE upload ---------------------------------------------------------------


def test_get_upload_status(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    r = env.client.get(loc)
    assert r.status_code == 204
    assert r.headers["range"] == "0-0"
    assert r.headers["docker-upload-uuid"] == upload_id
    assert r.headers["location"] == loc
    assert r.content == b""
    env.client.patch(loc, content=b"0123456789")
    assert env.client.get(loc).headers["range"] == "0-9"


def test_delete_upload(env: Env) -> None:
    loc, upload_id = env.start(REPO)
    env.client.patch(loc, content=b"abc")
    r = env.client.delete(loc)
    assert r.status_code == 204
    assert r.content == b""
    assert_error(env.client.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(env.client.delete(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(env.client.patch(loc, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(env.client.put(loc, params={"digest": sha256(b"abc")}), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_id not in env.ingest.staging.list_ids()


# -- HEAD / GET / DELETE blob ----------------------------------------------------------


def test_head_and_get_blob(env: Env) -> None:
    d = env.push_blob(REPO, DATA)
    for method in ("HEAD", "GET"):
        r = env.client.request(method, f"/v2/{REPO}/blobs/{d}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(DATA))
        assert r.headers["docker-content-digest"] == d
        assert r.headers["etag"] == f'"{d}"'
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.content == (DATA if method == "GET" else b"")


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_unknown_blob(env: Env, method: str) -> None:
    r = env.client.request(method, f"/v2/{REPO}/blobs/{sha256(b'nope')}")
    assert_error(r, 404, "BLOB_UNKNOWN")
    if method == "HEAD":
        assert r.headers["content-length"] == "0"


@pytest.mark.parametrize("method", ["HEAD", "GET", "DELETE"])
@DELETES_ENABLED
def test_blob_linked_only_in_another_repo(env: Env, method: str) -> None:
    d = env.push_blob(OTHER, DATA)
    assert_error(env.client.request(method, f"/v2/{REPO}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert env.client.head(f"/v2/{OTHER}/blobs/{d}").status_code == 200


@pytest.mark.parametrize("method", ["HEAD", "GET", "DELETE"])
@DELETES_ENABLED
def test_blob_malformed_digest(env: Env, method: str) -> None:
    r = env.client.request(method, f"/v2/{REPO}/blobs/sha256:nothex")
    assert_error(r, 400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    ("range_", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=10-", 10, len(DATA) - 1),
        ("bytes=1000-99999", 1000, len(DATA) - 1),
        ("bytes=-99999", 0, len(DATA) - 1),
        (f"bytes={len(DATA) - 1}-{len(DATA) - 1}", len(DATA) - 1, len(DATA) - 1),
    ],
)
def test_get_blob_range(env: Env, range_: str, first: int, last: int) -> None:
    d = env.push_blob(REPO, DATA)
    r = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": range_})
    assert r.status_code == 206
    assert r.content == DATA[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["docker-content-digest"] == d


@pytest.mark.parametrize("range_", [f"bytes={len(DATA)}-", "bytes=5000-6000", "bytes=-0"])
def test_get_blob_unsatisfiable_range(env: Env, range_: str) -> None:
    d = env.push_blob(REPO, DATA)
    r = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": range_})
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "range_", ["bytes=0-1,5-6", "items=0-5", "bytes=-", "bytes=a-b", "x", "bytes=9-3"]
)
def test_get_blob_range_served_whole(env: Env, range_: str) -> None:
    d = env.push_blob(REPO, DATA)
    r = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": range_})
    assert r.status_code == 200
    assert r.content == DATA
    assert "content-range" not in r.headers


@DELETES_ENABLED
def test_delete_blob(env: Env) -> None:
    d = env.push_blob(REPO, DATA)
    env.push_blob(OTHER, DATA)
    r = env.client.delete(f"/v2/{REPO}/blobs/{d}")
    assert r.status_code == 202
    assert r.content == b""
    assert_error(env.client.head(f"/v2/{REPO}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert_error(env.client.get(f"/v2/{REPO}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert env.client.head(f"/v2/{OTHER}/blobs/{d}").status_code == 200
    assert env.client.get(f"/v2/{OTHER}/blobs/{d}").content == DATA
    assert_error(env.client.delete(f"/v2/{REPO}/blobs/{d}"), 404, "BLOB_UNKNOWN")


@DELETES_ENABLED
def test_delete_canonical_removes_aliases(env: Env) -> None:
    d512 = env.push_blob(REPO, DATA, sha512(DATA))
    assert env.client.delete(f"/v2/{REPO}/blobs/{sha256(DATA)}").status_code == 202
    assert env.client.head(f"/v2/{REPO}/blobs/{d512}").status_code == 404


@DELETES_ENABLED
def test_delete_alias_keeps_canonical(env: Env) -> None:
    d512 = env.push_blob(REPO, DATA, sha512(DATA))
    assert env.client.delete(f"/v2/{REPO}/blobs/{d512}").status_code == 202
    assert env.client.head(f"/v2/{REPO}/blobs/{d512}").status_code == 404
    assert env.client.head(f"/v2/{REPO}/blobs/{sha256(DATA)}").status_code == 200


# -- sha512 ----------------------------------------------------------------------------


def test_sha512_addressed_blob(env: Env) -> None:
    d512 = sha512(DATA)
    loc, _ = env.start(REPO)
    env.client.patch(loc, content=DATA)
    r = env.client.put(loc, params={"digest": d512})
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == d512
    assert r.headers["location"] == f"/v2/{REPO}/blobs/{d512}"
    for d in (d512, sha256(DATA)):
        h = env.client.head(f"/v2/{REPO}/blobs/{d}")
        assert h.status_code == 200
        assert h.headers["docker-content-digest"] == d
        assert h.headers["content-length"] == str(len(DATA))
        g = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": "bytes=0-3"})
        assert g.status_code == 206
        assert g.content == DATA[:4]
        assert env.client.get(f"/v2/{REPO}/blobs/{d}").content == DATA


def test_sha512_monolithic_post_wrong(env: Env) -> None:
    r = env.client.post(
        f"/v2/{REPO}/blobs/uploads/", params={"digest": sha512(b"other")}, content=DATA
    )
    detail = assert_error(r, 400, "DIGEST_INVALID")
    assert detail["computed"] == sha512(DATA)


# -- size limits -----------------------------------------------------------------------

LIMIT = 1000


@pytest.fixture
def small(make_env: EnvFactory) -> Env:
    return make_env(Settings(max_blob_size=LIMIT))


def test_patch_content_length_over_limit(small: Env) -> None:
    loc, upload_id = small.start(REPO)
    r = small.client.patch(loc, content=b"x" * (LIMIT + 1))
    detail = assert_error(r, 413, "SIZE_INVALID")
    assert detail["limit"] == LIMIT
    assert small.ingest.staging.size(upload_id) == 0


def test_patch_over_limit_across_chunks(small: Env) -> None:
    loc, upload_id = small.start(REPO)
    assert small.client.patch(loc, content=b"x" * 600).status_code == 202
    assert_error(small.client.patch(loc, content=b"x" * 401), 413, "SIZE_INVALID")
    assert small.ingest.staging.size(upload_id) == 600
    # exactly at the limit is fine
    assert small.client.patch(loc, content=b"x" * 400).status_code == 202
    r = small.client.put(loc, params={"digest": sha256(b"x" * LIMIT)})
    assert r.status_code == 201, r.text


def test_patch_chunked_over_limit(small: Env) -> None:
    loc, upload_id = small.start(REPO)
    r = small.client.patch(loc, content=_chunks(b"y" * (LIMIT * 3), 256))
    assert_error(r, 413, "SIZE_INVALID")
    assert small.ingest.staging.size(upload_id) <= LIMIT


def test_put_final_chunk_over_limit(small: Env) -> None:
    loc, _ = small.start(REPO)
    data = b"z" * (LIMIT + 1)
    assert_error(
        small.client.put(loc, params={"digest": sha256(data)}, content=data), 413, "SIZE_INVALID"
    )
    assert small.queue.calls == []


def test_post_monolithic_over_limit(small: Env) -> None:
    data = b"z" * (LIMIT + 1)
    r = small.client.post(
        f"/v2/{REPO}/blobs/uploads/", params={"digest": sha256(data)}, content=data
    )
    assert_error(r, 413, "SIZE_INVALID")
    assert small.queue.calls == []


# -- both drivers ----------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["memory", "filesystem"])
def test_round_trip_on_each_driver(make_env: EnvFactory, driver: str) -> None:
    env = make_env(Settings(delete_enabled=True), driver=driver)
    d = env.push_blob(REPO, DATA)
    r = env.client.get(f"/v2/{REPO}/blobs/{d}", headers={"Range": "bytes=4-7"})
    assert r.status_code == 206
    assert r.content == DATA[4:8]
    assert re.fullmatch(r"bytes 4-7/\d+", r.headers["content-range"])
    assert env.client.delete(f"/v2/{REPO}/blobs/{d}").status_code == 202
    assert env.client.head(f"/v2/{REPO}/blobs/{d}").status_code == 404
