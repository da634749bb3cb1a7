"""Real clients against the frontend with authentication on (issue 13).

One stack (Redis database, a worker, the frontend) per mode, for the whole module:

* ``htpasswd``: HTTP Basic against a bcrypt htpasswd file; every user it knows may do
  everything (as in distribution).
* ``token``: Bearer JWTs of the Docker token protocol, from the small issuer in
  ``tests/support/token_server.py``; its users' grants decide what a token carries.

skopeo, oras-py and the ``ingest`` CLI push and pull with credentials in both modes;
the refusals (wrong password, expired / foreign / under-scoped token, a mount without
pull on ``from``, deletes switched off, the catalog without its scope, anonymous
requests) are checked with httpx: status, OCI error code and the
``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.devstack import write_htpasswd
from devtools.localredis import free_port
from tests.integration.conftest import Stack
from tests.integration.test_http_clients import (
    OCI_MANIFEST,
    _oras_client,
    make_oci_layout,
    sha256,
    skopeo,
)
from tests.support.token_server import Rule, TokenServer, User
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.integration

SERVICE = "verified-ingest.test"  # INGEST_AUTH_TOKEN_SERVICE: the tokens' audience
ISSUER = "token-server.test"  # INGEST_AUTH_TOKEN_ISSUER
BASIC_REALM = "verified-ingest-test"  # INGEST_AUTH_REALM

ALL = frozenset({"pull", "push", "delete"})
PASSWORDS = {
    "alice": "alice-s3cret",  # everything on auth/*, and the catalog
    "bob": "bob-s3cret",  # pull only on auth/*
    "carol": "carol-s3cret",  # pull and push, but only on elsewhere/*
    "dave": "dave-s3cret",  # pull and push on auth/mount-dst only
}
USERS = {
    "alice": User(
        PASSWORDS["alice"],
        (Rule("auth/*", ALL), Rule("catalog", frozenset({"*"}), type="registry")),
    ),
    "bob": User(PASSWORDS["bob"], (Rule("auth/*", frozenset({"pull"})),)),
    "carol": User(PASSWORDS["carol"], (Rule("elsewhere/*", frozenset({"pull", "push"})),)),
    "dave": User(PASSWORDS["dave"], (Rule("auth/mount-dst", frozenset({"pull", "push"})),)),
}


# -- the stacks ------------------------------------------------------------------------


@dataclass
class Registry:
    """A running frontend in one auth mode, and how to get credentials for it."""

    mode: str
    stack: Stack
    url: str
    tokens: TokenServer | None = None

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def client(self, user: str | None = None, *scopes: str) -> httpx.Client:
        """An httpx client that sends ``user``'s credentials: Basic (htpasswd), or a
        token from the issuer for ``scopes`` (token); anonymous without a user."""
        headers = {} if user is None else self.authorization(user, *scopes)
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def authorization(self, user: str, *scopes: str) -> dict[str, str]:
        if self.mode == "htpasswd":
            return {"Authorization": basic(user, PASSWORDS[user])}
        return {"Authorization": f"Bearer {self.token(user, *scopes)}"}

    def token(self, user: str | None, *scopes: str) -> str:
        assert self.tokens is not None
        auth = (user, PASSWORDS[user]) if user is not None else None
        params: list[tuple[str, str | int | float | bool | None]] = [("service", SERVICE)]
        params += [("scope", s) for s in scopes]
        got = httpx.get(self.tokens.url, params=params, auth=auth, timeout=10)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["token"] == body["access_token"]
        assert body["expires_in"] == self.tokens.expires_in
        return str(body["token"])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, content: str) -> str:
    path.write_text(content)
    return str(path)


def _start(redis_url: str, root: Path, env: dict[str, str]) -> tuple[Stack, str]:
    stack = Stack(redis_url, root, **env)
    try:
        stack.worker()
        return stack, stack.frontend().url
    except BaseException:
        stack.close()
        raise


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def htpasswd_registry(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("auth-htpasswd")
    env = {
        "INGEST_AUTH": "htpasswd",
        "INGEST_AUTH_REALM": BASIC_REALM,
        # bcrypt at the lowest cost: the file format is what matters, not the work factor.
        "INGEST_AUTH_HTPASSWD": write_htpasswd(root / "htpasswd", PASSWORDS),
    }
    stack, url = _start(redis_url, root, env)
    try:
        yield Registry("htpasswd", stack, url)
    finally:
        stack.close()


@pytest.fixture(scope="module")
def token_registry(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer
) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("auth-token")
    with TokenServer(issuer, service=SERVICE, issuer_name=ISSUER, users=USERS) as tokens:
        env = {
            "INGEST_AUTH": "token",
            "INGEST_AUTH_TOKEN_REALM": tokens.url,
            "INGEST_AUTH_TOKEN_SERVICE": SERVICE,
            "INGEST_AUTH_TOKEN_ISSUER": ISSUER,
            "INGEST_AUTH_TOKEN_CERTS": _write(root / "issuer.pem", issuer.pem_bundle()),
        }
        stack, url = _start(redis_url, root, env)
        try:
            yield Registry("token", stack, url, tokens)
        finally:
            stack.close()


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def registry(request: pytest.FixtureRequest) -> Registry:
    reg: Registry = request.getfixturevalue(f"{request.param}_registry")
    return reg


# -- helpers -----------------------------------------------------------------------------


def challenge(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """The scheme and parameters of the ``WWW-Authenticate`` header."""
    value = response.headers.get("www-authenticate")
    assert value, f"no WWW-Authenticate on {response.status_code} {response.text}"
    scheme, _, params = value.partition(" ")
    return scheme, dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', params))


def expected_challenge(
    reg: Registry, scope: str | None = None, error: str | None = None
) -> tuple[str, dict[str, str]]:
    if reg.mode == "htpasswd":
        return "Basic", {"realm": BASIC_REALM, "charset": "UTF-8"}  # RFC 7617
    assert reg.tokens is not None
    params = {"realm": reg.tokens.url, "service": SERVICE}
    if scope is not None:
        params["scope"] = scope
    if error is not None:
        params["error"] = error
    return "Bearer", params


def error_of(response: httpx.Response) -> dict[str, Any]:
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    return dict(errors[0])


def assert_unauthorized(
    reg: Registry, response: httpx.Response, scope: str | None = None, error: str | None = None
) -> dict[str, Any]:
    assert response.status_code == 401, (response.status_code, response.text)
    assert challenge(response) == expected_challenge(reg, scope, error)
    err = error_of(response)
    assert err["code"] == "UNAUTHORIZED", err
    return err


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """A monolithic POST + PUT; returns the digest."""
    digest = sha256(data)
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    put = client.put(start.headers["location"], params={"digest": digest}, content=data)
    assert put.status_code == 201, put.text
    return digest


def push_manifest(client: httpx.Client, repo: str, tag: str) -> str:
    """An OCI manifest with an empty config and no layers, under ``tag``."""
    config = b"{}"
    push_blob(client, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    put = client.put(
        f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status_code == 201, put.text
    return sha256(manifest)


# -- both modes ------------------------------------------------------------------------


def test_anonymous_requests_get_the_modes_challenge(registry: Registry) -> None:
    with registry.client() as anonymous:
        ping = anonymous.get("/v2/")
        assert_unauthorized(registry, ping)
        assert ping.headers["docker-distribution-api-version"] == "registry/2.0"
        tags = anonymous.get("/v2/auth/anon/tags/list")
        assert_unauthorized(registry, tags, scope="repository:auth/anon:pull")
        start = anonymous.post("/v2/auth/anon/blobs/uploads/")
        assert_unauthorized(registry, start, scope="repository:auth/anon:pull,push")


def test_credentials_open_the_ping_and_a_wrong_password_does_not(registry: Registry) -> None:
    with registry.client("alice") as alice:
        assert alice.get("/v2/").status_code == 200
    if registry.tokens is not None:
        # In token mode the issuer is where a password is checked.
        for user, password in (("alice", "wrong"), ("nobody", PASSWORDS["alice"])):
            refused = httpx.get(
                registry.tokens.url,
                params={"service": SERVICE, "scope": "repository:auth/x:pull"},
                auth=(user, password),
            )
            assert refused.status_code == 401
            assert "token" not in refused.json()
        return
    with httpx.Client(base_url=registry.url) as client:
        for user, password in (("alice", "wrong"), ("nobody", PASSWORDS["alice"]), ("alice", "")):
            wrong = client.get("/v2/", headers={"Authorization": basic(user, password)})
            err = assert_unauthorized(registry, wrong)
            assert err["detail"]["reason"] == "invalid-credentials", err
            assert "s3cret" not in wrong.text
        garbage = client.get("/v2/", headers={"Authorization": "Basic !!not-base64!!"})
        assert assert_unauthorized(registry, garbage)["detail"]["reason"] == "malformed"
        bearer = client.get("/v2/", headers={"Authorization": "Bearer abc.def.ghi"})
        assert assert_unauthorized(registry, bearer)["detail"]["reason"] == "scheme"


def test_skopeo_pushes_and_pulls_back_with_credentials(registry: Registry, tmp_path: Path) -> None:
    image = make_oci_layout(tmp_path / "src", "v1", b"auth-skopeo-" + registry.mode.encode())
    ref = f"docker://{registry.host}/auth/skopeo:v1"
    creds = f"alice:{PASSWORDS['alice']}"
    since = len(registry.tokens.requests) if registry.tokens is not None else 0
    push = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"--dest-creds={creds}",
        f"oci:{tmp_path / 'src'}:v1",
        ref,
    )
    assert push.returncode == 0, push.stderr

    with registry.client("alice", "repository:auth/skopeo:pull") as alice:
        for blob in (*image["layers"], image["config"]):
            head = alice.head(f"/v2/auth/skopeo/blobs/{sha256(blob)}")
            assert head.status_code == 200
            assert head.headers["docker-content-digest"] == sha256(blob)
            assert int(head.headers["content-length"]) == len(blob)
        manifest = alice.get("/v2/auth/skopeo/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200
        assert manifest.headers["docker-content-digest"] == sha256(image["manifest"])
        assert alice.get("/v2/auth/skopeo/tags/list").json() == {
            "name": "auth/skopeo",
            "tags": ["v1"],
        }

    # bob may only pull (token mode); the pull works with exactly that.
    pull = skopeo(
        tmp_path,
        "copy",
        "--src-tls-verify=false",
        f"--src-creds=bob:{PASSWORDS['bob']}",
        ref,
        f"oci:{tmp_path / 'dst'}:v1",
    )
    assert pull.returncode == 0, pull.stderr
    pulled = tmp_path / "dst" / "blobs" / "sha256"
    for blob in (*image["layers"], image["config"], image["manifest"]):
        assert (pulled / sha256(blob)[7:]).read_bytes() == blob
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [sha256(image["manifest"])]

    if registry.tokens is not None:
        # skopeo names the account (the test's own token requests do not): it fetched
        # its tokens with GET and Basic credentials, alice's for pull,push and bob's for
        # pull, and got what it asked for.
        asked = [r for r in registry.tokens.requests[since:] if r.account]
        assert {(r.method, r.authorization, r.status) for r in asked} == {("GET", "Basic", 200)}
        push_scope, pull_scope = "repository:auth/skopeo:pull,push", "repository:auth/skopeo:pull"
        assert any(
            r.user == "alice" and r.scopes == (push_scope,) and r.granted == (push_scope,)
            for r in asked
        ), asked
        assert any(
            r.user == "bob" and r.scopes == (pull_scope,) and r.granted == (pull_scope,)
            for r in asked
        ), asked


def test_skopeo_push_without_the_right_fails_and_nothing_is_tagged(
    registry: Registry, tmp_path: Path
) -> None:
    make_oci_layout(tmp_path / "src", "v1", b"auth-skopeo-refused")
    # htpasswd: a wrong password; token: bob, whose token never carries push.
    creds = "alice:wrong" if registry.mode == "htpasswd" else f"bob:{PASSWORDS['bob']}"
    since = len(registry.tokens.requests) if registry.tokens is not None else 0
    push = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"--dest-creds={creds}",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{registry.host}/auth/skopeo-refused:v1",
    )
    assert push.returncode != 0
    assert re.search(r"unauthorized|authentication required|denied", push.stderr, re.I), push.stderr
    if registry.tokens is not None:
        # bob asked for pull,push; the issuer granted the intersection, pull.
        asked = [r for r in registry.tokens.requests[since:] if r.account == "bob"]
        assert any(
            r.scopes == ("repository:auth/skopeo-refused:pull,push",)
            and r.granted == ("repository:auth/skopeo-refused:pull",)
            for r in asked
        ), asked
    with registry.client("alice", "repository:auth/skopeo-refused:pull") as alice:
        tags = alice.get("/v2/auth/skopeo-refused/tags/list")
        assert tags.status_code == 404, tags.text
        assert error_of(tags)["code"] == "NAME_UNKNOWN"


def test_oras_logs_in_pushes_and_pulls_an_artifact(registry: Registry, tmp_path: Path) -> None:
    oras_client = _oras_client()
    data = os.urandom(300_000)
    (tmp_path / "artifact.bin").write_bytes(data)
    config = str(tmp_path / "docker-config.json")  # never the user's ~/.docker
    backend = "basic" if registry.mode == "htpasswd" else "token"
    target = f"{registry.host}/auth/oras:v1"

    pusher = oras_client.OrasClient(hostname=registry.host, insecure=True, auth_backend=backend)
    login = pusher.login("alice", PASSWORDS["alice"], hostname=registry.host, config_path=config)
    assert login == {"Status": "Login Succeeded"}
    if registry.mode == "token":
        # oras-py 0.2.43 keeps the first token it gets (pull only: the challenge of the
        # HEAD before each upload) and answers every later 401 with that same token, so
        # a push stops at the POST's insufficient_scope (oras-project/oras-py#187). Do
        # what the Go oras does (auth.AppendRepositoryScope): get the push scope up
        # front, from the POST's challenge, through oras-py's own token request.
        probe = httpx.post(f"{registry.url}/v2/auth/oras/blobs/uploads/")
        wanted = _oras_auth_utils().parse_auth_header(probe.headers["www-authenticate"])
        assert wanted.scope == "repository:auth/oras:pull,push"
        pusher.auth.set_token_auth(pusher.auth.request_token(wanted))
    old = Path.cwd()
    os.chdir(tmp_path)  # oras stores relative file names as titles
    try:
        pushed = pusher.push(target=target, files=["artifact.bin"], config_path=config)
        assert pushed.status_code == 201, pushed.text
        # A fresh client, logged in as a user who may only pull (token mode).
        puller = oras_client.OrasClient(hostname=registry.host, insecure=True, auth_backend=backend)
        puller.login("bob", PASSWORDS["bob"], hostname=registry.host, config_path=config)
        files = puller.pull(target=target, outdir=str(tmp_path / "pulled"))
    finally:
        os.chdir(old)
    assert [Path(f).read_bytes() for f in files] == [data]
    assert json.loads(Path(config).read_text())["auths"][registry.host]["auth"]

    with registry.client("bob", "repository:auth/oras:pull") as bob:
        assert bob.head(f"/v2/auth/oras/blobs/{sha256(data)}").status_code == 200
        assert bob.get("/v2/auth/oras/tags/list").json()["tags"] == ["v1"]


def _oras_auth_utils() -> Any:
    _oras_client()  # skips (or fails in CI) the same way when oras-py is missing
    return importlib.import_module("oras.auth.utils")


def test_deletes_are_refused_while_disabled(registry: Registry) -> None:
    scope = "repository:auth/delete:pull,push,delete"
    with registry.client("alice", scope) as alice:
        blob = push_blob(alice, "auth/delete", os.urandom(10_000))
        manifest = push_manifest(alice, "auth/delete", "v1")
        for path in (
            f"/v2/auth/delete/blobs/{blob}",
            f"/v2/auth/delete/manifests/{manifest}",
            "/v2/auth/delete/manifests/v1",
        ):
            refused = alice.delete(path)
            assert refused.status_code == 405, (path, refused.text)
            assert error_of(refused)["code"] == "UNSUPPORTED"
        assert alice.head(f"/v2/auth/delete/blobs/{blob}").status_code == 200
        assert alice.get("/v2/auth/delete/manifests/v1").status_code == 200
        # Cancelling one's own upload session is no delete of content: skopeo does it
        # after a declined mount, so it stays allowed.
        start = alice.post("/v2/auth/delete/blobs/uploads/")
        assert start.status_code == 202
        assert alice.delete(start.headers["location"]).status_code == 204


def test_the_catalog_needs_the_catalog_scope(registry: Registry) -> None:
    catalog = "registry:catalog:*"
    with registry.client("alice", "repository:auth/catalog:pull,push") as alice:
        push_blob(alice, "auth/catalog", b"listed")  # at least one repository
    with registry.client("alice", catalog) as alice:
        got = alice.get("/v2/_catalog")
        assert got.status_code == 200, got.text
        names = got.json()["repositories"]
        assert "auth/catalog" in names
        assert names == sorted(names)
    with registry.client() as anonymous:
        assert_unauthorized(registry, anonymous.get("/v2/_catalog"), scope=catalog)
    if registry.tokens is not None:
        # bob's rules name no registry resource: his token carries no catalog grant.
        with registry.client("bob", catalog) as bob:
            assert registry.tokens.requests[-1].granted == ()
            refused = bob.get("/v2/_catalog")
            assert_unauthorized(registry, refused, scope=catalog, error="insufficient_scope")


# -- token mode only ----------------------------------------------------------------------


def test_a_token_that_does_not_verify_is_refused(
    token_registry: Registry, issuer: TestIssuer
) -> None:
    reg = token_registry
    scope = "repository:auth/tokens:pull"
    access = [{"type": "repository", "name": "auth/tokens", "actions": ["pull"]}]
    stranger = TestIssuer()  # keys the registry does not trust
    bad = {
        "expired": issuer.mint("alice", SERVICE, access, ISSUER, expires_in=-120),
        "wrong-audience": issuer.mint("alice", "another-registry", access, ISSUER),
        "wrong-issuer": issuer.mint("alice", SERVICE, access, "someone-else"),
        "untrusted-key": stranger.mint("alice", SERVICE, access, ISSUER),
        "garbage": "not.a.jwt",
    }
    good = issuer.mint("alice", SERVICE, access, ISSUER)
    with httpx.Client(base_url=reg.url) as client:
        ok = client.get("/v2/auth/tokens/tags/list", headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 404, ok.text  # authorised; the repository has no tags yet
        assert error_of(ok)["code"] == "NAME_UNKNOWN"
        for case, token in bad.items():
            got = client.get(
                "/v2/auth/tokens/tags/list", headers={"Authorization": f"Bearer {token}"}
            )
            err = assert_unauthorized(reg, got, scope=scope, error="invalid_token")
            assert err["detail"]["reason"], (case, err)


def test_basic_credentials_are_no_token(token_registry: Registry) -> None:
    """A Basic header (even with the right password) on a token-mode registry is a
    request without a token: 401 with the plain challenge, so that the client fetches
    one. RFC 6750 section 3.1: no ``error`` for a request that "attempted using an
    unsupported authentication method" (distribution answers it as one without
    credentials; ``ingest.auth.token.bearer_error`` says the same)."""
    reg = token_registry
    with httpx.Client(base_url=reg.url) as client:
        for password in (PASSWORDS["alice"], "wrong"):
            got = client.get("/v2/", headers={"Authorization": basic("alice", password)})
            assert assert_unauthorized(reg, got)["detail"]["reason"] == "scheme"
            tags = client.get(
                "/v2/auth/basic/tags/list", headers={"Authorization": basic("alice", password)}
            )
            assert_unauthorized(reg, tags, scope="repository:auth/basic:pull")


def test_a_token_for_another_repository_has_insufficient_scope(token_registry: Registry) -> None:
    reg = token_registry
    scope = "repository:auth/scoped:pull"
    # carol may only touch elsewhere/*: the issuer grants her nothing on auth/scoped.
    token = reg.token("carol", scope, "repository:elsewhere/x:pull,push")
    assert reg.tokens is not None
    assert reg.tokens.requests[-1].granted == ("repository:elsewhere/x:pull,push",)
    with httpx.Client(base_url=reg.url, headers={"Authorization": f"Bearer {token}"}) as carol:
        got = carol.get("/v2/auth/scoped/tags/list")
        assert_unauthorized(reg, got, scope=scope, error="insufficient_scope")
        assert carol.get("/v2/elsewhere/x/tags/list").status_code == 404  # NAME_UNKNOWN: allowed


def test_pull_only_grants_do_not_allow_a_push(token_registry: Registry) -> None:
    reg = token_registry
    # bob asks for pull and push; the issuer grants the intersection: pull.
    token = reg.token("bob", "repository:auth/pull-only:pull,push")
    assert reg.tokens is not None
    assert reg.tokens.requests[-1].granted == ("repository:auth/pull-only:pull",)
    with httpx.Client(base_url=reg.url, headers={"Authorization": f"Bearer {token}"}) as bob:
        start = bob.post("/v2/auth/pull-only/blobs/uploads/")
        assert_unauthorized(
            reg, start, scope="repository:auth/pull-only:pull,push", error="insufficient_scope"
        )
        assert bob.get("/v2/auth/pull-only/tags/list").status_code == 404  # pull is fine


def test_a_mount_needs_pull_on_the_source_repository(token_registry: Registry) -> None:
    reg = token_registry
    data = os.urandom(50_000)
    with reg.client("alice", "repository:auth/mount-src:pull,push") as alice:
        digest = push_blob(alice, "auth/mount-src", data)
    mount = {"mount": digest, "from": "auth/mount-src"}
    dst_scope = "repository:auth/mount-dst:pull,push"
    src_scope = "repository:auth/mount-src:pull"

    # dave may push to auth/mount-dst but not read auth/mount-src: asked for both (as
    # skopeo does), his token carries only the first; the mount opens a plain session.
    with reg.client("dave", dst_scope, src_scope) as dave:
        assert reg.tokens is not None
        assert reg.tokens.requests[-1].granted == (dst_scope,)
        declined = dave.post("/v2/auth/mount-dst/blobs/uploads/", params=mount)
        assert declined.status_code == 202, declined.text
        assert declined.headers["docker-upload-uuid"]
        assert "/blobs/uploads/" in declined.headers["location"]
        assert dave.head(f"/v2/auth/mount-dst/blobs/{digest}").status_code == 404
        # What skopeo does next: cancel the session and upload the bytes.
        assert dave.delete(declined.headers["location"]).status_code == 204

    # With pull on the source (alice's token for both scopes) the same mount links.
    with reg.client("alice", dst_scope, src_scope) as alice:
        mounted = alice.post("/v2/auth/mount-dst/blobs/uploads/", params=mount)
        assert mounted.status_code == 201, mounted.text
        assert mounted.headers["docker-content-digest"] == digest
        got = alice.get(f"/v2/auth/mount-dst/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == data
    assert hashlib.sha256(data).hexdigest() == digest[7:]


# -- the ingest CLI ------------------------------------------------------------------------


def ingest_cli(
    reg: Registry,
    tmp_path: Path,
    *args: str,
    creds: tuple[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``ingest ARGS`` as a user runs it against ``reg``: the frontend's URL in
    INGEST_URL (no Redis or storage reachable), ``creds`` (user, password) in
    INGEST_USERNAME and INGEST_PASSWORD when given (and none from this shell)."""
    user, password = creds or ("", "")
    env = {
        **os.environ,
        "INGEST_URL": reg.url,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "INGEST_STORAGE_ROOT": str(tmp_path / "not-the-storage"),
        "INGEST_USERNAME": user,
        "INGEST_PASSWORD": password,
    }
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _upload_id(run: subprocess.CompletedProcess[bytes]) -> str:
    return run.stderr.decode().split('"upload_id": "', 1)[1].split('"', 1)[0]


def test_the_cli_pushes_pulls_retries_and_cancels_with_basic_credentials(
    htpasswd_registry: Registry, tmp_path: Path
) -> None:
    reg = htpasswd_registry
    alice = ("alice", PASSWORDS["alice"])
    data = os.urandom(1024 * 1024 + 17)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    chunks = ("--chunk-size", "256KiB")  # five PATCHes, each sent with the credentials
    pushed = ingest_cli(reg, tmp_path, "push", str(f), "--repo", "auth/cli", *chunks, creds=alice)
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert f"committed auth/cli@{sha256(data)}" in pushed.stdout.decode()
    # A pipe: no HEAD, the POST meets the challenge, then the PATCHes stream.
    piped = ingest_cli(
        reg, tmp_path, "push", "-", "--repo", "auth/cli-pipe", *chunks, stdin=data, creds=alice
    )
    assert piped.returncode == 0, piped.stderr.decode()
    assert f"committed auth/cli-pipe@{sha256(data)}" in piped.stdout.decode()

    back = tmp_path / "back.bin"
    pulled = ingest_cli(
        reg,
        tmp_path,
        *("pull", "auth/cli", sha256(data), "-o", str(back), "-u", "alice", "--password-stdin"),
        stdin=f"{PASSWORDS['alice']}\n".encode(),
    )
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert back.read_bytes() == data

    broken = ingest_cli(
        reg,
        tmp_path,
        "push",
        str(f),
        "--repo",
        "auth/cli",
        "--digest",
        sha256(b"typo"),
        creds=alice,
    )
    assert broken.returncode == 3, broken.stderr.decode()
    assert "DIGEST_INVALID" in broken.stderr.decode()
    upload_id = _upload_id(broken)
    seen = ingest_cli(reg, tmp_path, "--json", "status", upload_id, creds=alice)
    assert seen.returncode == 0, seen.stderr.decode()
    assert json.loads(seen.stdout)["error"]["code"] == "DIGEST_INVALID"

    bulk = ingest_cli(
        reg, tmp_path, "--json", "retry", "--failed", "--code", "DIGEST_INVALID", creds=alice
    )
    assert bulk.returncode == 0, bulk.stderr.decode()
    assert upload_id in [q["upload_id"] for q in json.loads(bulk.stdout)["queued"]]
    for _ in range(200):  # the re-queued verification fails the same way
        st = json.loads(
            ingest_cli(reg, tmp_path, "--json", "status", upload_id, creds=alice).stdout
        )
        if (st["attempt"], st["state"]) == (2, "failed"):
            break
        time.sleep(0.05)
    assert (st["attempt"], st["state"]) == (2, "failed"), st
    # --repo (for a token's scope) is accepted with Basic credentials and changes nothing.
    fixed = ingest_cli(
        reg,
        tmp_path,
        *("--json", "retry", upload_id, "--digest", sha256(data), "--repo", "auth/cli"),
        creds=alice,
    )
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert json.loads(fixed.stdout)["status"] == "committed"

    again = ingest_cli(
        reg, tmp_path, "push", str(f), "--repo", "auth/cli", "--digest", sha256(b"x"), creds=alice
    )
    assert again.returncode == 3
    cancelled = ingest_cli(
        reg, tmp_path, "cancel", _upload_id(again), "--repo", "auth/cli", creds=alice
    )
    assert cancelled.returncode == 0, cancelled.stderr.decode()
    assert "hint:" not in cancelled.stderr.decode()


def test_the_cli_with_a_wrong_password_or_none_is_exit_3_unauthorized(
    registry: Registry, tmp_path: Path
) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(100_000))
    push = ("push", str(f), "--repo", "auth/cli-refused")
    wrong = ingest_cli(registry, tmp_path, *push, creds=("alice", "not-her-pw"))
    assert wrong.returncode == 3, wrong.stderr.decode()
    assert "error: UNAUTHORIZED: " in wrong.stderr.decode()
    assert b"not-her-pw" not in wrong.stdout + wrong.stderr
    assert b"Traceback" not in wrong.stderr
    anonymous = ingest_cli(registry, tmp_path, *push)
    assert anonymous.returncode == 3, anonymous.stderr.decode()
    assert "error: UNAUTHORIZED: " in anonymous.stderr.decode()
    assert "no credentials were given" in anonymous.stderr.decode()
    if registry.mode == "htpasswd":
        for args in (("status", "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"), ("retry", "--failed")):
            refused = ingest_cli(registry, tmp_path, *args)
            assert refused.returncode == 3, refused.stderr.decode()
            assert "UNAUTHORIZED" in refused.stderr.decode()
    with registry.client("alice", "repository:auth/cli-refused:pull") as alice:
        assert alice.get("/v2/auth/cli-refused/tags/list").status_code == 404  # nothing landed


def test_the_cli_pushes_and_pulls_with_a_token_it_reuses(
    token_registry: Registry, tmp_path: Path
) -> None:
    reg = token_registry
    assert reg.tokens is not None
    data = os.urandom(1024 * 1024 + 5)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    scope = "repository:auth/cli-token:pull,push"

    since = len(reg.tokens.requests)
    pushed = ingest_cli(
        reg,
        tmp_path,
        *("push", str(f), "--repo", "auth/cli-token", "--chunk-size", "256KiB"),
        creds=("alice", PASSWORDS["alice"]),
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert f"committed auth/cli-token@{sha256(data)}" in pushed.stdout.decode()
    # A HEAD, a POST, five PATCHes, the PUT and the status polls: one token, asked for
    # push from the first challenge on (the HEAD's names pull only).
    asked = reg.tokens.requests[since:]
    assert [(r.method, r.authorization, r.user, r.account, r.scopes, r.granted) for r in asked] == [
        ("GET", "Basic", "alice", "alice", (scope,), (scope,))
    ]

    since = len(reg.tokens.requests)
    piped = ingest_cli(
        reg,
        tmp_path,
        *("push", "-", "--repo", "auth/cli-token", "--chunk-size", "256KiB"),
        creds=("alice", PASSWORDS["alice"]),
        stdin=data[::-1],
    )
    assert piped.returncode == 0, piped.stderr.decode()
    assert [r.scopes for r in reg.tokens.requests[since:]] == [(scope,)]

    since = len(reg.tokens.requests)
    back = tmp_path / "back.bin"
    pulled = ingest_cli(  # bob may only pull
        reg,
        tmp_path,
        *("pull", "auth/cli-token", sha256(data), "-o", str(back), "-u", "bob"),
        "--password-stdin",
        stdin=PASSWORDS["bob"].encode(),
    )
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert back.read_bytes() == data
    pull_scope = "repository:auth/cli-token:pull"
    assert [(r.user, r.scopes, r.granted) for r in reg.tokens.requests[since:]] == [
        ("bob", (pull_scope,), (pull_scope,))
    ]

    refused = ingest_cli(
        reg,
        tmp_path,
        *("push", str(f), "--repo", "auth/cli-token-bob"),
        creds=("bob", PASSWORDS["bob"]),
    )
    assert refused.returncode == 3, refused.stderr.decode()
    assert "error: UNAUTHORIZED: the token does not grant" in refused.stderr.decode()


def _failed_at(reg: Registry, upload_id: str, repository: str, attempt: int) -> dict[str, Any]:
    """The status of ``upload_id`` once its ``attempt`` has failed (polled with a token
    of alice's for ``repository``)."""
    deadline = time.monotonic() + 30
    with reg.client("alice", f"repository:{repository}:pull,push") as alice:
        while True:
            got = alice.get(f"/ingest/v1/uploads/{upload_id}")
            assert got.status_code == 200, got.text
            st: dict[str, Any] = got.json()
            if (st["attempt"], st["state"]) == (attempt, "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert (st["attempt"], st["state"]) == (attempt, "failed"), st
    return st


def test_the_cli_reaches_uploads_by_id_with_a_token_for_repo(
    token_registry: Registry, tmp_path: Path
) -> None:
    """The ingest API's challenge names no scope (it would reveal an upload's
    repository): ``--repo`` has the token cover it, as a push asks for its own."""
    reg = token_registry
    assert reg.tokens is not None
    alice = ("alice", PASSWORDS["alice"])
    repo, other, third = "auth/cli-by-id", "auth/cli-by-id-other", "auth/cli-by-id-cancel"
    scope = {r: f"repository:{r}:pull,push" for r in (repo, other, third)}
    data = os.urandom(200_000)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)

    def failed_push(repository: str) -> str:
        run = ingest_cli(
            reg,
            tmp_path,
            *("push", str(f), "--repo", repository, "--digest", sha256(b"typo")),
            creds=alice,
        )
        assert run.returncode == 3, run.stderr.decode()
        assert "DIGEST_INVALID" in run.stderr.decode()
        return _upload_id(run)

    mine, theirs, doomed = failed_push(repo), failed_push(other), failed_push(third)

    def tokens_since(since: int) -> list[tuple[str | None, tuple[str, ...], tuple[str, ...]]]:
        assert reg.tokens is not None
        return [(r.user, r.scopes, r.granted) for r in reg.tokens.requests[since:]]

    # Without --repo: the token is for nothing, the upload looks unknown, and the
    # message says what to do; the taxonomy's exit code stays.
    for args in (("status", mine), ("retry", mine, "--no-wait"), ("cancel", mine)):
        since = len(reg.tokens.requests)
        run = ingest_cli(reg, tmp_path, *args, creds=alice)
        err = run.stderr.decode()
        assert run.returncode == 3, err
        assert "error: BLOB_UPLOAD_UNKNOWN: " in err
        assert "hint: in token mode, pass --repo REPOSITORY so the token covers it" in err
        assert tokens_since(since) == [("alice", (), ())]
    since = len(reg.tokens.requests)
    nothing = ingest_cli(reg, tmp_path, "--json", "retry", "--failed", creds=alice)
    assert nothing.returncode == 0, nothing.stderr.decode()
    assert json.loads(nothing.stdout) == {"queued": [], "errors": []}
    assert "in token mode, pass --repo REPOSITORY" in nothing.stderr.decode()
    assert tokens_since(since) == [("alice", (), ())]
    assert _failed_at(reg, mine, repo, 1)["error"]["code"] == "DIGEST_INVALID"  # untouched

    # With --repo: one token, asked for push on it, and the upload is found.
    since = len(reg.tokens.requests)
    seen = ingest_cli(reg, tmp_path, "--json", "status", mine, "--repo", repo, creds=alice)
    assert seen.returncode == 0, seen.stderr.decode()
    st = json.loads(seen.stdout)
    assert (st["repository"], st["state"], st["error"]["code"]) == (
        repo,
        "failed",
        "DIGEST_INVALID",
    )
    assert tokens_since(since) == [("alice", (scope[repo],), (scope[repo],))]
    # The wrong repository reveals nothing, and gets no hint: --repo was given.
    wrong = ingest_cli(reg, tmp_path, "status", mine, "--repo", other, creds=alice)
    assert wrong.returncode == 3, wrong.stderr.decode()
    assert "error: BLOB_UPLOAD_UNKNOWN: " in wrong.stderr.decode()
    assert "hint:" not in wrong.stderr.decode()

    # The bulk retry re-queues the failures of the repositories its token covers only.
    since = len(reg.tokens.requests)
    bulk = ingest_cli(
        reg,
        tmp_path,
        *("--json", "retry", "--failed", "--code", "DIGEST_INVALID", "--repo", repo),
        creds=alice,
    )
    assert bulk.returncode == 0, bulk.stderr.decode()
    assert [q["upload_id"] for q in json.loads(bulk.stdout)["queued"]] == [mine]
    assert "hint:" not in bulk.stderr.decode()
    assert tokens_since(since) == [("alice", (scope[repo],), (scope[repo],))]
    _failed_at(reg, mine, repo, 2)  # the same claim fails the same way
    _failed_at(reg, theirs, other, 1)  # not re-queued: still its first attempt
    # One token with several repository scopes: the frontend acts on each of them.
    since = len(reg.tokens.requests)
    both = ingest_cli(
        reg,
        tmp_path,
        *("--json", "retry", "--failed", "--repo", repo, "--repo", other),
        creds=alice,
    )
    assert both.returncode == 0, both.stderr.decode()
    assert sorted(q["upload_id"] for q in json.loads(both.stdout)["queued"]) == sorted(
        [mine, theirs]
    )
    [(user, asked, granted)] = tokens_since(since)
    assert user == "alice"
    assert set(asked) == set(granted) == {scope[repo], scope[other]}
    _failed_at(reg, mine, repo, 3)
    _failed_at(reg, theirs, other, 2)
    _failed_at(reg, doomed, third, 1)  # no token covered its repository

    # retry by id with the right digest commits; status shows it.
    fixed = ingest_cli(
        reg,
        tmp_path,
        *("--json", "retry", mine, "--digest", sha256(data), "--repo", repo),
        creds=alice,
    )
    assert fixed.returncode == 0, fixed.stderr.decode()
    result = json.loads(fixed.stdout)
    assert (result["status"], result["repository"], result["digest"]) == (
        "committed",
        repo,
        sha256(data),
    )
    done = ingest_cli(reg, tmp_path, "--json", "status", mine, "--repo", repo, creds=alice)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["state"] == "committed"
    with reg.client("alice", f"repository:{repo}:pull") as reader:
        assert reader.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data

    # cancel by id, on another upload.
    cancelled = ingest_cli(reg, tmp_path, "cancel", doomed, "--repo", third, creds=alice)
    assert cancelled.returncode == 0, cancelled.stderr.decode()
    assert f"cancelled {doomed}" in cancelled.stdout.decode()
    gone = ingest_cli(reg, tmp_path, "status", doomed, "--repo", third, creds=alice)
    assert gone.returncode == 3, gone.stderr.decode()
    assert "error: BLOB_UPLOAD_UNKNOWN: " in gone.stderr.decode()
