"""Authorisation in the HTTP frontend (ingest.http.access): challenges, scopes, the
mount rule, the delete and read-only switches, the ingest API's upload lookup, and
the audit line of every request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import logs
from ingest.auth import Access, Identity
from ingest.auth.none import NoAuth
from ingest.config import Settings
from ingest.http.access import NEEDS, Resource
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import sha256
from tests.unit.http.conftest import (
    OCI_MANIFEST,
    Env,
    EnvFactory,
    FakeAuth,
    assert_envelope,
    assert_error,
    image_manifest,
    jbytes,
)
from tests.unit.http.test_hostile import Sender

A = "acme/a"
B = "acme/b"
DATA = b"layer bytes " * 10
CATALOG = Access("registry", "catalog", frozenset({"*"}))
REALM = 'Bearer realm="https://auth.test/token",service="registry.test"'


def _repo(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions))


TOKENS = {
    "Bearer nothing": Identity("nobody", ()),
    "Bearer anonymous-pull-a": Identity("", (_repo(A, "pull"),)),  # a token without a subject
    "Bearer pull-a": Identity("alice", (_repo(A, "pull"),)),
    "Bearer push-a": Identity("alice", (_repo(A, "pull", "push"),)),
    "Bearer push-a-pull-b": Identity("alice", (_repo(A, "pull", "push"), _repo(B, "pull"))),
    "Bearer push-b": Identity("bob", (_repo(B, "pull", "push"),)),
    "Bearer push-a-push-b": Identity("alice", (_repo(A, "pull", "push"), _repo(B, "pull", "push"))),
    "Bearer delete-a": Identity("root", (_repo(A, "delete"),)),
    "Bearer admin": Identity("root", (_repo(A, "*"), _repo(B, "*"), CATALOG)),
}
BASIC = {
    "Basic everything": Identity("carol", None),
    "Basic pull-a": Identity("dave", (_repo(A, "pull"),)),
}


def _h(value: str) -> dict[str, str]:
    return {"Authorization": value}


ADMIN = _h("Bearer admin")


@pytest.fixture
def bearer(make_env: EnvFactory) -> Env:
    return make_env(auth=FakeAuth("Bearer", TOKENS))


@pytest.fixture
def basic(make_env: EnvFactory) -> Env:
    return make_env(auth=FakeAuth("Basic", BASIC))


def push_blob(env: Env, repo: str, data: bytes, headers: dict[str, str]) -> str:
    r = env.client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    assert r.status_code == 202, r.text
    r = env.client.put(
        r.headers["location"], params={"digest": sha256(data)}, content=data, headers=headers
    )
    assert r.status_code == 201, r.text
    return sha256(data)


def _challenge(scope: str | None = None, error: str | None = None) -> str:
    value = REALM
    if scope:
        value += f',scope="{scope}"'
    if error:
        value += f',error="{error}"'
    return value


# -- who is asking ---------------------------------------------------------------------

DIGEST = sha256(b"anything")
UID = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"
SCOPED_ROUTES = [
    ("GET", f"/v2/{A}/tags/list", "repository:acme/a:pull"),
    ("HEAD", f"/v2/{A}/blobs/{DIGEST}", "repository:acme/a:pull"),
    ("GET", f"/v2/{A}/blobs/{DIGEST}", "repository:acme/a:pull"),
    ("GET", f"/v2/{A}/manifests/latest", "repository:acme/a:pull"),
    ("HEAD", f"/v2/{A}/manifests/latest", "repository:acme/a:pull"),
    ("GET", f"/v2/{A}/referrers/{DIGEST}", "repository:acme/a:pull"),
    ("POST", f"/v2/{A}/blobs/uploads/", "repository:acme/a:pull,push"),
    ("PATCH", f"/v2/{A}/blobs/uploads/{UID}", "repository:acme/a:pull,push"),
    ("PUT", f"/v2/{A}/blobs/uploads/{UID}", "repository:acme/a:pull,push"),
    ("GET", f"/v2/{A}/blobs/uploads/{UID}", "repository:acme/a:pull,push"),
    ("DELETE", f"/v2/{A}/blobs/uploads/{UID}", "repository:acme/a:pull,push"),
    ("PUT", f"/v2/{A}/manifests/latest", "repository:acme/a:pull,push"),
    ("DELETE", f"/v2/{A}/blobs/{DIGEST}", "repository:acme/a:delete"),
    ("DELETE", f"/v2/{A}/manifests/latest", "repository:acme/a:delete"),
    ("GET", "/v2/_catalog", "registry:catalog:*"),
    ("GET", "/v2/", None),
    ("GET", f"/ingest/v1/uploads/{UID}", None),
    ("POST", f"/ingest/v1/uploads/{UID}/retry", None),
    ("POST", "/ingest/v1/failed-uploads/retry", None),
]


@pytest.mark.parametrize(("method", "path", "scope"), SCOPED_ROUTES)
def test_an_anonymous_request_gets_401_and_the_bearer_challenge_for_its_scope(
    bearer: Env, method: str, path: str, scope: str | None
) -> None:
    r = bearer.client.request(method, path, content=b"x" if method in ("PATCH", "PUT") else None)
    detail = assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == _challenge(scope)
    if method != "HEAD":
        assert detail["reason"] == "anonymous"
        assert detail["scope"] == ([scope] if scope else [])


@pytest.mark.parametrize(("method", "path", "scope"), SCOPED_ROUTES)
def test_an_anonymous_request_gets_the_basic_challenge(
    basic: Env, method: str, path: str, scope: str | None
) -> None:
    r = basic.client.request(method, path)
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == 'Basic realm="test"'


def test_credentials_that_do_not_authenticate_get_401_with_invalid_token(bearer: Env) -> None:
    r = bearer.client.get(f"/v2/{A}/tags/list", headers=_h("Bearer forged"))
    detail = assert_error(r, 401, "UNAUTHORIZED")
    assert detail == {"reason": "invalid"}
    assert r.headers["www-authenticate"] == _challenge("repository:acme/a:pull", "invalid_token")


def test_the_base_endpoint_takes_any_authenticated_identity(bearer: Env, basic: Env) -> None:
    r = bearer.client.get("/v2/", headers=_h("Bearer nothing"))
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert basic.client.get("/v2/", headers=_h("Basic pull-a")).status_code == 200


def test_a_token_without_a_subject_is_not_anonymous(bearer: Env) -> None:
    token = _h("Bearer anonymous-pull-a")
    assert bearer.client.get("/v2/", headers=token).status_code == 200
    assert bearer.client.get(f"/v2/{A}/tags/list", headers=token).status_code == 404
    r = bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=token)
    assert_error(r, 401, "UNAUTHORIZED")
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


def test_with_authentication_off_everyone_passes(env: Env) -> None:
    assert env.client.get("/v2/").status_code == 200
    assert env.client.get("/v2/_catalog").status_code == 200
    assert env.client.post(f"/v2/{A}/blobs/uploads/").status_code == 202


def test_the_openapi_description_is_public(bearer: Env) -> None:
    assert bearer.client.get("/ingest/v1/openapi.json").status_code == 200


def test_every_route_and_method_has_a_need() -> None:
    from ingest.http.app import routes

    for route in routes():
        endpoint = route.endpoint
        resource = next(
            c.cell_contents
            for c in endpoint.__closure__ or ()
            if isinstance(c.cell_contents, Resource)
        )
        for method in route.methods or ():
            assert (resource, "GET" if method == "HEAD" else method) in NEEDS, (route.path, method)


# -- may they --------------------------------------------------------------------------


def test_a_token_without_the_scope_gets_401_insufficient_scope(bearer: Env) -> None:
    r = bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=_h("Bearer pull-a"))
    detail = assert_error(r, 401, "UNAUTHORIZED")
    assert detail == {"reason": "insufficient-scope", "scope": ["repository:acme/a:pull,push"]}
    assert r.headers["www-authenticate"] == _challenge(
        "repository:acme/a:pull,push", "insufficient_scope"
    )
    assert bearer.ingest.staging.list_ids() == []
    # ...and with it, the same request goes through.
    assert bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=_h("Bearer push-a")).is_success


def test_a_basic_user_without_the_access_gets_403_denied(basic: Env) -> None:
    r = basic.client.post(f"/v2/{A}/blobs/uploads/", headers=_h("Basic pull-a"))
    detail = assert_error(r, 403, "DENIED")
    assert detail["scope"] == ["repository:acme/a:pull,push"]
    assert "www-authenticate" not in r.headers
    assert basic.client.get(f"/v2/{A}/tags/list", headers=_h("Basic pull-a")).status_code == 404


def test_scope_on_one_repository_grants_nothing_on_another(bearer: Env) -> None:
    d = push_blob(bearer, B, DATA, ADMIN)
    for method, path in [
        ("HEAD", f"/v2/{B}/blobs/{d}"),
        ("GET", f"/v2/{B}/blobs/{d}"),
        ("GET", f"/v2/{B}/tags/list"),
        ("POST", f"/v2/{B}/blobs/uploads/"),
    ]:
        r = bearer.client.request(method, path, headers=_h("Bearer push-a"))
        assert_error(r, 401, "UNAUTHORIZED")
        assert 'scope="repository:acme/b:' in r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    # push on A says nothing about the upload sessions of B either
    r = bearer.client.post(f"/v2/{B}/blobs/uploads/", headers=_h("Bearer push-b"))
    loc = r.headers["location"]
    assert_error(
        bearer.client.patch(loc, content=b"x", headers=_h("Bearer push-a")), 401, "UNAUTHORIZED"
    )
    assert bearer.client.get(loc, headers=_h("Bearer push-b")).headers["range"] == "0-0"


def test_authorisation_comes_before_the_body_is_read(bearer: Env) -> None:
    r = bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=_h("Bearer push-a"))
    loc = r.headers["location"]
    refused = bearer.client.patch(loc, content=b"x" * 5000, headers=_h("Bearer pull-a"))
    assert_error(refused, 401, "UNAUTHORIZED")
    assert bearer.client.get(loc, headers=_h("Bearer push-a")).headers["range"] == "0-0"
    # Even a body that would be refused for its size: the caller hears 401, not 413.
    big = bearer.client.put(
        f"/v2/{A}/manifests/latest",
        content=b"{}",
        headers={"Content-Length": str(1 << 40), **_h("Bearer pull-a")},
    )
    assert big.status_code == 401


def test_a_malformed_name_is_refused_before_authentication(make_env: EnvFactory) -> None:
    fake = FakeAuth("Bearer", TOKENS)
    r = make_env(auth=fake).client.get("/v2/Not..Valid/tags/list")
    assert_error(r, 400, "NAME_INVALID")
    assert "www-authenticate" not in r.headers
    assert fake.calls == []


def test_a_permitted_push_and_pull_go_through(bearer: Env) -> None:
    push = _h("Bearer push-a")
    d = push_blob(bearer, A, DATA, push)
    doc = image_manifest(DATA, [])
    r = bearer.client.put(
        f"/v2/{A}/manifests/v1",
        content=jbytes(doc),
        headers={"Content-Type": OCI_MANIFEST, **push},
    )
    assert r.status_code == 201, r.text
    pull = _h("Bearer pull-a")
    assert bearer.client.get(f"/v2/{A}/blobs/{d}", headers=pull).content == DATA
    assert bearer.client.get(f"/v2/{A}/manifests/v1", headers=pull).content == jbytes(doc)
    assert bearer.client.get(f"/v2/{A}/tags/list", headers=pull).json()["tags"] == ["v1"]


# -- cross-repository mount ------------------------------------------------------------


def test_a_mount_without_pull_on_its_source_is_a_fresh_upload(bearer: Env) -> None:
    d = push_blob(bearer, B, DATA, ADMIN)
    r = bearer.client.post(
        f"/v2/{A}/blobs/uploads/", params={"mount": d, "from": B}, headers=_h("Bearer push-a")
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith(f"/v2/{A}/blobs/uploads/")
    assert "docker-content-digest" not in r.headers
    # No link was made: A does not hold the blob.
    assert_error(bearer.client.head(f"/v2/{A}/blobs/{d}", headers=ADMIN), 404, "BLOB_UNKNOWN")
    # Exactly what a mount of a blob B does not have looks like.
    unknown = bearer.client.post(
        f"/v2/{A}/blobs/uploads/",
        params={"mount": sha256(b"not in B"), "from": B},
        headers=_h("Bearer push-a"),
    )
    assert unknown.status_code == r.status_code
    assert set(unknown.headers) == set(r.headers)


def test_a_mount_with_pull_on_its_source_links_the_blob(bearer: Env) -> None:
    d = push_blob(bearer, B, DATA, ADMIN)
    r = bearer.client.post(
        f"/v2/{A}/blobs/uploads/",
        params={"mount": d, "from": B},
        headers=_h("Bearer push-a-pull-b"),
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == d
    assert bearer.client.get(f"/v2/{A}/blobs/{d}", headers=ADMIN).content == DATA


# -- deletes ---------------------------------------------------------------------------


@pytest.fixture
def seeded() -> tuple[MemoryDriver, str]:
    """A storage holding one blob and one tagged manifest in A (pushed with auth off)."""
    from starlette.testclient import TestClient

    from ingest.http.app import create_app
    from tests.unit.fakes import make_ingest

    driver = MemoryDriver()
    ing, queue = make_ingest(driver)
    with TestClient(create_app(ingest=ing, auth=NoAuth())) as client:
        env = Env(client, ing, queue, driver)
        d = env.push_blob(A, DATA)
        assert env.push_manifest(A, "v1", image_manifest(DATA, [])).status_code == 201
    return driver, d


def _on(
    make_env: EnvFactory,
    driver: MemoryDriver,
    *,
    delete_enabled: bool = False,
    read_only: bool = False,
) -> Env:
    settings = Settings(delete_enabled=delete_enabled, read_only=read_only)
    return make_env(settings, driver=driver, auth=FakeAuth("Bearer", TOKENS))


@pytest.mark.parametrize("target", ["blob", "manifest-tag", "manifest-digest", "unknown"])
def test_deletes_are_refused_with_405_unless_enabled(
    make_env: EnvFactory, seeded: tuple[MemoryDriver, str], target: str
) -> None:
    driver, d = seeded
    env = _on(make_env, driver)
    manifest = sha256(jbytes(image_manifest(DATA, [])))
    path = {
        "blob": f"/v2/{A}/blobs/{d}",
        "manifest-tag": f"/v2/{A}/manifests/v1",
        "manifest-digest": f"/v2/{A}/manifests/{manifest}",
        "unknown": f"/v2/{A}/blobs/{sha256(b'never pushed')}",
    }[target]
    r = env.client.delete(path, headers=ADMIN)
    detail = assert_error(r, 405, "UNSUPPORTED")
    assert detail == {"reason": "delete-disabled"}
    assert "DELETE" not in r.headers["allow"]
    assert "GET" in r.headers["allow"]
    # Nothing was removed.
    assert env.client.head(f"/v2/{A}/blobs/{d}", headers=ADMIN).status_code == 200
    assert env.client.head(f"/v2/{A}/manifests/v1", headers=ADMIN).status_code == 200
    # Authentication and authorisation come first: they reveal nothing of the switch.
    assert_error(env.client.delete(path), 401, "UNAUTHORIZED")
    assert_error(env.client.delete(path, headers=_h("Bearer push-a")), 401, "UNAUTHORIZED")


def test_with_deletes_enabled_the_delete_scope_deletes(
    make_env: EnvFactory, seeded: tuple[MemoryDriver, str]
) -> None:
    driver, d = seeded
    env = _on(make_env, driver, delete_enabled=True)
    push = env.client.delete(f"/v2/{A}/blobs/{d}", headers=_h("Bearer push-a"))
    assert_error(push, 401, "UNAUTHORIZED")
    assert 'scope="repository:acme/a:delete"' in push.headers["www-authenticate"]
    assert (
        env.client.delete(f"/v2/{A}/manifests/v1", headers=_h("Bearer delete-a")).status_code == 202
    )
    assert env.client.delete(f"/v2/{A}/blobs/{d}", headers=_h("Bearer delete-a")).status_code == 202
    assert_error(env.client.head(f"/v2/{A}/blobs/{d}", headers=ADMIN), 404, "BLOB_UNKNOWN")


def test_cancelling_an_upload_is_not_a_delete(bearer: Env) -> None:
    r = bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=_h("Bearer push-a"))
    assert (
        bearer.client.delete(r.headers["location"], headers=_h("Bearer push-a")).status_code == 204
    )


# -- read-only -------------------------------------------------------------------------


def test_read_only_refuses_every_write_and_serves_every_pull(
    make_env: EnvFactory, seeded: tuple[MemoryDriver, str]
) -> None:
    driver, d = seeded
    # An open upload and a failed one, made before the switch.
    writable = _on(make_env, driver)
    open_loc = writable.client.post(f"/v2/{A}/blobs/uploads/", headers=ADMIN).headers["location"]
    failed = writable.client.post(f"/v2/{A}/blobs/uploads/", headers=ADMIN).headers["location"]
    bad = writable.client.put(
        failed, params={"digest": sha256(b"other")}, content=b"abc", headers=ADMIN
    )
    assert bad.status_code == 400
    failed_id = failed.rsplit("/", 1)[1]

    env = _on(make_env, driver, read_only=True, delete_enabled=True)
    manifest = jbytes(image_manifest(DATA, []))
    writes = [
        ("POST", f"/v2/{A}/blobs/uploads/", None),
        ("POST", f"/v2/{A}/blobs/uploads/?mount={d}&from={A}", None),
        ("PATCH", open_loc, b"more"),
        ("PUT", f"{open_loc}?digest={sha256(b'')}", None),
        ("DELETE", open_loc, None),
        ("PUT", f"/v2/{A}/manifests/v2", manifest),
        ("DELETE", f"/v2/{A}/manifests/v1", None),
        ("DELETE", f"/v2/{A}/blobs/{d}", None),
        ("POST", f"/ingest/v1/uploads/{failed_id}/retry", None),
        ("POST", "/ingest/v1/failed-uploads/retry", None),
    ]
    for method, path, body in writes:
        r = env.client.request(method, path, content=body, headers=ADMIN)
        detail = assert_error(r, 405, "UNSUPPORTED")
        assert detail == {"reason": "read-only"}, (method, path)
        assert "read-only" in r.json()["errors"][0]["message"]
        assert method not in r.headers["allow"].split(", "), (method, path)
    pulls = [
        ("GET", "/v2/"),
        ("GET", "/v2/_catalog"),
        ("HEAD", f"/v2/{A}/blobs/{d}"),
        ("GET", f"/v2/{A}/blobs/{d}"),
        ("GET", f"/v2/{A}/manifests/v1"),
        ("HEAD", f"/v2/{A}/manifests/v1"),
        ("GET", f"/v2/{A}/tags/list"),
        ("GET", f"/v2/{A}/referrers/{sha256(manifest)}"),
        ("GET", f"/ingest/v1/uploads/{failed_id}"),
    ]
    for method, path in pulls:
        r = env.client.request(method, path, headers=ADMIN)
        assert r.status_code == 200, (method, path, r.text)
    assert env.client.get(open_loc, headers=ADMIN).status_code == 204
    # The upload is still there, untouched.
    assert writable.client.get(open_loc, headers=ADMIN).headers["range"] == "0-0"


# -- the ingest API --------------------------------------------------------------------


def _failed_upload(env: Env, repo: str, headers: dict[str, str]) -> str:
    r = env.client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    loc, uid = r.headers["location"], r.headers["docker-upload-uuid"]
    bad = env.client.put(loc, params={"digest": sha256(b"other")}, content=b"abc", headers=headers)
    assert bad.status_code == 400
    return str(uid)


@pytest.mark.parametrize("route", ["status", "retry"])
def test_another_repositorys_upload_is_unknown_to_the_ingest_api(bearer: Env, route: str) -> None:
    theirs = _failed_upload(bearer, B, _h("Bearer push-b"))
    never = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"

    def call(uid: str, token: str) -> httpx.Response:
        url = f"/ingest/v1/uploads/{uid}" + ("/retry" if route == "retry" else "")
        method = "POST" if route == "retry" else "GET"
        r: httpx.Response = bearer.client.request(method, url, headers=_h(token))
        return r

    for token in ("Bearer push-a", "Bearer pull-a", "Bearer nothing"):
        hidden, unknown = call(theirs, token), call(never, token)
        assert_error(hidden, 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(unknown, 404, "BLOB_UPLOAD_UNKNOWN")
        assert hidden.json()["errors"][0]["detail"] == {"upload_id": theirs}
        assert unknown.json()["errors"][0]["detail"] == {"upload_id": never}
        assert hidden.json()["errors"][0]["message"] == unknown.json()["errors"][0]["message"]
        assert set(hidden.headers) == set(unknown.headers)
    # Pull alone on the repository is not enough either.
    assert_error(call(theirs, "Bearer push-a-pull-b"), 404, "BLOB_UPLOAD_UNKNOWN")
    # Anonymous: asked for credentials before anything is looked up.
    for uid in (theirs, never):
        r = bearer.client.request(
            "POST" if route == "retry" else "GET",
            f"/ingest/v1/uploads/{uid}" + ("/retry" if route == "retry" else ""),
        )
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"] == _challenge()
    # The owner's push scope sees it.
    assert call(theirs, "Bearer push-b").status_code == (202 if route == "retry" else 200)


def test_the_ingest_api_status_of_ones_own_upload(bearer: Env) -> None:
    uid = _failed_upload(bearer, A, _h("Bearer push-a"))
    r = bearer.client.get(f"/ingest/v1/uploads/{uid}", headers=_h("Bearer push-a"))
    assert r.status_code == 200
    assert r.json()["repository"] == A
    assert r.json()["state"] == "failed"


def test_the_bulk_retry_acts_only_on_uploads_the_caller_may_push_to(bearer: Env) -> None:
    mine = _failed_upload(bearer, A, _h("Bearer push-a"))
    theirs = _failed_upload(bearer, B, _h("Bearer push-b"))

    def bulk(token: str) -> list[str]:
        r = bearer.client.post("/ingest/v1/failed-uploads/retry", headers=_h(token))
        assert r.status_code == 200, r.text
        assert r.json()["errors"] == []
        return [q["upload_id"] for q in r.json()["queued"]]

    # Pull on B is not push: B's upload is neither retried nor reported.
    assert bulk("Bearer push-a-pull-b") == [mine]
    assert bulk("Bearer pull-a") == []  # pull alone retries nothing
    assert bulk("Bearer push-b") == [theirs]
    assert [c.upload_id for c in bearer.queue.calls] == [mine, theirs, mine, theirs]
    anonymous = bearer.client.post("/ingest/v1/failed-uploads/retry")
    assert_error(anonymous, 401, "UNAUTHORIZED")
    assert anonymous.headers["www-authenticate"] == _challenge()
    assert len(bearer.queue.calls) == 4


def test_the_bulk_retry_with_push_on_several_repositories_acts_on_each(bearer: Env) -> None:
    """One token for several repositories (``ingest retry --failed --repo A --repo B``)."""
    mine = _failed_upload(bearer, A, _h("Bearer push-a"))
    theirs = _failed_upload(bearer, B, _h("Bearer push-b"))
    r = bearer.client.post("/ingest/v1/failed-uploads/retry", headers=_h("Bearer push-a-push-b"))
    assert r.status_code == 200, r.text
    assert r.json()["errors"] == []
    assert sorted(q["upload_id"] for q in r.json()["queued"]) == sorted([mine, theirs])


# -- the audit line --------------------------------------------------------------------


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


def _access_lines(stream: io.StringIO) -> list[dict[str, object]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in found if line["logger"] == "ingest.http.access"]


def test_every_request_leaves_an_audit_line(bearer: Env, captured: io.StringIO) -> None:
    push = _h("Bearer push-a")
    start = bearer.client.post(f"/v2/{A}/blobs/uploads/", headers=push)
    loc = start.headers["location"]
    bearer.client.patch(loc, content=b"x" * 4000, headers=_h("Bearer pull-a"))  # refused
    bearer.client.patch(loc, content=DATA, headers=push)
    bearer.client.put(loc, params={"digest": sha256(DATA)}, headers=push)
    bearer.client.get(f"/v2/{A}/blobs/{sha256(DATA)}", headers=_h("Bearer pull-a"))
    bearer.client.get(f"/v2/{A}/tags/list")  # anonymous
    bearer.client.get("/v2/_catalog", headers=_h("Bearer forged"))
    bearer.client.get("/v2/", headers=_h("Bearer nothing"))

    lines = _access_lines(captured)
    fields = ["method", "status", "subject", "repository", "action", "bytes_in"]
    assert [tuple(line.get(f) for f in fields) for line in lines] == [
        ("POST", 202, "alice", A, "push", 0),
        ("PATCH", 401, "alice", A, "push", 0),  # refused before a byte was read
        ("PATCH", 202, "alice", A, "push", len(DATA)),
        ("PUT", 201, "alice", A, "push", 0),
        ("GET", 200, "alice", A, "pull", 0),
        ("GET", 401, "", A, "pull", 0),
        ("GET", 401, "", None, "catalog", 0),
        ("GET", 200, "nobody", None, "login", 0),
    ]
    for line in lines:
        assert line["client"] == "testclient"
        assert isinstance(line["duration_ms"], float)
        assert isinstance(line["bytes_out"], int)
    assert lines[4]["bytes_out"] == len(DATA)
    assert isinstance(lines[1]["bytes_out"], int)
    assert lines[1]["bytes_out"] > 0  # the error envelope
    assert lines[6]["auth_error"] == "invalid"
    assert "auth_error" not in lines[5]


def test_the_ingest_api_audit_line_names_the_uploads_repository(
    bearer: Env, captured: io.StringIO
) -> None:
    uid = _failed_upload(bearer, B, _h("Bearer push-b"))
    bearer.client.get(f"/ingest/v1/uploads/{uid}", headers=_h("Bearer push-a"))
    line = _access_lines(captured)[-1]
    assert (line["status"], line["subject"], line["repository"], line["action"]) == (
        404,
        "alice",
        B,
        "push",
    )


# -- any Authorization header ----------------------------------------------------------

HEADER_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
header_values = st.one_of(
    st.sampled_from([*TOKENS, *BASIC, "Bearer", "Basic", "", " ", "Bearer  admin", "bearer admin"]),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(
        lambda scheme, rest: scheme + " " + rest,
        st.sampled_from(["Bearer", "Basic", "Digest", "bearer"]),
        st.text(max_size=100),
    ),
)


@pytest.mark.parametrize("mode", ["bearer", "basic", "none"])
def test_no_authorization_header_value_causes_a_500(make_env: EnvFactory, mode: str) -> None:
    auth = {
        "bearer": FakeAuth("Bearer", TOKENS),
        "basic": FakeAuth("Basic", BASIC),
        "none": NoAuth(),
    }[mode]
    env = make_env(auth=auth)
    live = env.client.post(f"/v2/{A}/blobs/uploads/", headers=ADMIN if mode == "bearer" else {})
    uid = live.headers.get("docker-upload-uuid", UID)
    send = Sender(env)

    @HEADER_SETTINGS
    @given(
        value=header_values,
        endpoint=st.sampled_from(
            [
                ("GET", "/v2/"),
                ("GET", "/v2/_catalog"),
                ("GET", f"/v2/{A}/tags/list"),
                ("HEAD", f"/v2/{A}/blobs/{DIGEST}"),
                ("POST", f"/v2/{A}/blobs/uploads/?mount={DIGEST}&from={B}"),
                ("DELETE", f"/v2/{A}/manifests/v1"),
                ("GET", f"/ingest/v1/uploads/{uid}"),
                ("POST", f"/ingest/v1/uploads/{uid}/retry"),
            ]
        ),
    )
    def run(value: str | bytes, endpoint: tuple[str, str]) -> None:
        method, path = endpoint
        r = send(method, path, headers={"Authorization": value})  # type: ignore[dict-item]
        if r is not None and r.status_code == 401 and method != "HEAD":
            assert_envelope(r)
            if mode != "none":
                assert r.headers["www-authenticate"]

    run()
    assert send.sent > 10
