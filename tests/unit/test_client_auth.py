"""RegistryClient authenticating as docker does, against a fake frontend that wants
credentials: Basic, or Bearer tokens from its own token server (``auth.test``, served
by the same transport). The real frontend and token server: test_auth_clients.py."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ingest import client as client_module
from ingest.cli import cli
from ingest.client import SLICE, Credentials, RegistryClient
from ingest.errors import NameInvalid, StorageUnavailable, TooManyRequests, Unauthorized, Unknown
from tests.unit.fakes import sha256
from tests.unit.test_cli import UPLOAD_ID, FakeRegistry

ALICE = Credentials("alice", "pa55-w0rd")
REALM = "http://auth.test/token"
SERVICE = "registry.test"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Issued:
    grants: set[tuple[str, str]]  # (repository, action)
    expires: float


class AuthRegistry:
    """FakeRegistry behind authentication. ``mode`` ``basic``: alice's password opens
    everything. ``bearer``: a token from ``GET http://auth.test/token`` opens what it was
    granted (alice: what she asked for; anonymous: pull only), until it expires on
    :attr:`now`. Records every request to the frontend (``seen``: method, path, the
    ``Authorization`` sent, the status) and to the token server (``token_requests``)."""

    def __init__(self, mode: str, *, expires_in: float | None = 300, realm: str = REALM) -> None:
        self.mode = mode
        self.inner = FakeRegistry()
        self.expires_in = expires_in
        self.realm = realm
        self.now = 1000.0
        self.seen: list[tuple[str, str, str | None, int]] = []
        self.token_requests: list[httpx.Request] = []
        self.issued: dict[str, Issued] = {}
        self.token_reply: Callable[[httpx.Request], httpx.Response] | None = None
        self.upload_repository = ""

    def clock(self) -> float:
        return self.now

    def transport(self) -> httpx.BaseTransport:
        registry = self

        class Transport(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.host == "auth.test":
                    registry.token_requests.append(request)
                    return (registry.token_reply or registry.token)(request)
                resp = registry.check(request)
                if resp is None:
                    if request.method == "POST":  # a new upload: FakeRegistry has one
                        registry.inner.staged = bytearray()
                    resp = registry.inner.handle(request)
                authorization = request.headers.get("authorization")
                registry.seen.append(
                    (request.method, request.url.path, authorization, resp.status_code)
                )
                return resp

        return Transport()

    def client(
        self, credentials: Credentials | None = ALICE, repositories: Iterable[str] = ()
    ) -> RegistryClient:
        return RegistryClient(
            "http://registry.test",
            credentials=credentials,
            repositories=repositories,
            transport=self.transport(),
            clock=self.clock,
        )

    # -- the frontend --------------------------------------------------------------------
    def needs(self, request: httpx.Request) -> tuple[str, tuple[str, ...], bool]:
        """(repository, actions, whether a challenge names the scope)."""
        path = request.url.path
        if m := re.fullmatch(r"/v2/(.+?)/blobs/uploads/.*", path):
            self.upload_repository = m[1]
            return m[1], ("pull", "push"), True
        if m := re.fullmatch(r"/v2/(.+?)/blobs/[^/]+", path):
            return m[1], ("pull",), True
        return self.upload_repository, ("pull", "push"), False  # the ingest API

    def check(self, request: httpx.Request) -> httpx.Response | None:
        authorization = request.headers.get("authorization", "")
        if self.mode == "basic":
            if authorization == basic(ALICE.username, ALICE.password):
                return None
            return self.refuse('Basic realm="fake", charset="UTF-8"')
        repository, actions, named = self.needs(request)
        scope = f"repository:{repository}:{','.join(actions)}"
        challenge = f'Bearer realm="{self.realm}",service="{SERVICE}"'
        if named:
            challenge += f',scope="{scope}"'
        scheme, _, value = authorization.partition(" ")
        issued = self.issued.get(value) if scheme == "Bearer" else None
        if issued is None or self.now >= issued.expires:
            error = ',error="invalid_token"' if scheme == "Bearer" else ""
            return self.refuse(challenge + error)
        if all((repository, a) in issued.grants for a in actions):
            return None
        return self.refuse(challenge + ',error="insufficient_scope"')

    def refuse(self, challenge: str) -> httpx.Response:
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return httpx.Response(401, json=body, headers={"WWW-Authenticate": challenge})

    # -- the token server --------------------------------------------------------------
    def token(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization")
        user = None
        if authorization is not None:
            if authorization != basic(ALICE.username, ALICE.password):
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            user = "alice"
        grants = set()
        for scope in request.url.params.get_list("scope"):
            _, name_actions = scope.split(":", 1)
            name, _, actions = name_actions.rpartition(":")
            grants |= {(name, a) for a in actions.split(",") if user or a == "pull"}
        token = f"token-{len(self.issued)}"
        lifetime = 60 if self.expires_in is None else self.expires_in
        self.issued[token] = Issued(grants, self.now + lifetime)
        body: dict[str, Any] = {"token": token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def scopes_asked(self) -> list[list[str]]:
        return [r.url.params.get_list("scope") for r in self.token_requests]

    def statuses(self) -> list[int]:
        return [status for *_, status in self.seen]


def push(client: RegistryClient, repository: str, data: bytes) -> dict[str, Any]:
    """A push as the CLI makes it of a file: digest known, HEAD first, 1-slice chunks."""
    return client.push(repository, io.BytesIO(data), digest=sha256(data), chunk_size=SLICE)


DATA = os.urandom(SLICE * 3 + 5)  # four PATCHes


# -- Basic -------------------------------------------------------------------------------


def test_basic_is_sent_after_the_first_challenge_and_with_every_request_after(
    tmp_path: Path,
) -> None:
    reg = AuthRegistry("basic")
    with reg.client() as client:
        result = push(client, "r/p", DATA)
        pulled = client.pull("r/p", sha256(DATA), tmp_path / "pulled.bin")
    assert result["status"] == "committed"
    assert reg.inner.staged == DATA
    assert pulled["size"] == len(DATA)
    methods = [m for m, *_ in reg.seen]
    assert methods[:2] == ["HEAD", "HEAD"]  # anonymous, then again with the credentials
    assert reg.statuses()[0] == 401
    assert 401 not in reg.statuses()[1:]  # pre-emptive from then on: every PATCH too
    assert methods.count("PATCH") == 4
    assert all(auth == ALICE.basic() for _, _, auth, _ in reg.seen[1:])


def test_a_wrong_password_is_unauthorized_and_never_shown() -> None:
    reg = AuthRegistry("basic")
    wrong = Credentials("alice", "not-the-s3cret")
    with reg.client(wrong) as client, pytest.raises(Unauthorized) as caught:
        push(client, "r/p", DATA)
    assert caught.value.exit_code == 3
    assert "s3cret" not in f"{caught.value} {caught.value!r} {caught.value.detail}"
    assert "s3cret" not in repr(wrong)
    assert [m for m, *_ in reg.seen] == ["HEAD", "HEAD", "POST"]  # nothing streamed


def test_without_credentials_a_401_says_none_were_given() -> None:
    reg = AuthRegistry("basic")
    with reg.client(None) as client, pytest.raises(Unauthorized, match="no credentials"):
        push(client, "r/p", DATA)
    assert all(auth is None for _, _, auth, _ in reg.seen)


def test_a_user_name_with_a_colon_cannot_be_sent_as_basic() -> None:
    with pytest.raises(ValueError, match="':'"):
        Credentials("al:ice", "pw")


# -- Bearer ------------------------------------------------------------------------------


def test_a_push_gets_one_token_for_pull_and_push_and_streams_every_patch_with_it(
    tmp_path: Path,
) -> None:
    reg = AuthRegistry("bearer")
    with reg.client() as client:
        assert push(client, "r/p", DATA)["status"] == "committed"
        # The same scopes again, and a pull (covered): no new token.
        assert push(client, "r/p", DATA)["status"] == "exists"
        client.pull("r/p", sha256(DATA), tmp_path / "pulled.bin")
    assert reg.scopes_asked() == [["repository:r/p:pull,push"]]
    [asked] = reg.token_requests
    assert asked.headers["authorization"] == ALICE.basic()
    assert asked.url.params["service"] == SERVICE
    assert asked.url.params["account"] == "alice"
    assert reg.statuses().count(401) == 1  # the first HEAD's, answered with the token
    patches = [auth for method, _, auth, _ in reg.seen if method == "PATCH"]
    assert patches == ["Bearer token-0"] * 4


def test_a_401_naming_another_scope_gets_another_token_and_kept_ones_are_reused(
    tmp_path: Path,
) -> None:
    reg = AuthRegistry("bearer")
    with reg.client() as client:
        push(client, "r/a", DATA)
        push(client, "r/b", DATA)
        client.pull("r/a", sha256(DATA), tmp_path / "pulled.bin")
    assert reg.scopes_asked() == [["repository:r/a:pull,push"], ["repository:r/b:pull,push"]]
    # The pull of r/a went out with r/b's token, was refused, and was sent again with
    # the r/a token kept from before, without asking the token server.
    pulls = [(auth, status) for method, path, auth, status in reg.seen if method == "GET"]
    assert pulls[-2:] == [("Bearer token-1", 401), ("Bearer token-0", 200)]


def test_a_token_is_renewed_before_it_expires_so_no_request_meets_a_401() -> None:
    reg = AuthRegistry("bearer", expires_in=None)  # the specification's default: 60 s
    with reg.client() as client:
        push(client, "r/p", DATA)
        reg.now += 49  # renewed 10 s before the 60 s are over
        client.status("0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e")
        assert len(reg.token_requests) == 1
        reg.now += 2
        client.status("0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e")
        assert len(reg.token_requests) == 2
    assert reg.scopes_asked()[1] == ["repository:r/p:pull,push"]  # the same scopes
    assert reg.statuses().count(401) == 1  # only the very first request's


def test_a_streamed_patch_is_never_sent_twice() -> None:
    reg = AuthRegistry("bearer")
    real_check = reg.check

    def revoke_on_patch(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            reg.issued.clear()  # e.g. the token server's keys rotated mid-push
        return real_check(request)

    reg.check = revoke_on_patch  # type: ignore[method-assign]
    with reg.client() as client, pytest.raises(Unauthorized):
        push(client, "r/p", DATA)
    assert [m for m, *_ in reg.seen].count("PATCH") == 1


def test_the_ingest_apis_challenge_names_no_scope_so_repositories_give_the_token_one() -> None:
    reg = AuthRegistry("bearer")
    with reg.client() as client:
        push(client, "r/p", DATA)  # the upload the fake's ingest API answers for
    reg.token_requests.clear()
    with reg.client() as client, pytest.raises(Unauthorized):
        client.status(UPLOAD_ID)
    assert client.unscoped_challenge
    assert reg.scopes_asked() == [[]]  # the challenge named nothing to ask for
    reg.token_requests.clear()
    with reg.client(repositories=["r/q", "r/p", "r/p"]) as client:
        assert client.status(UPLOAD_ID)["state"] == "committed"
        assert client.unscoped_challenge  # met, and answered with the token
        client.status(UPLOAD_ID)
        assert not client.unscoped_challenge  # the kept token went out from the start
    assert reg.scopes_asked() == [["repository:r/p:pull,push", "repository:r/q:pull,push"]]


def test_a_token_servers_refusal_or_a_bad_token_is_no_unscoped_challenge() -> None:
    reg = AuthRegistry("bearer")
    reg.upload_repository = "r/p"
    with reg.client(Credentials("alice", "wrong")) as client:
        with pytest.raises(Unauthorized, match="token server"):
            client.status(UPLOAD_ID)
        assert not client.unscoped_challenge  # the credentials are at fault, not the scope
    reg.token_reply = lambda request: httpx.Response(200, json={"token": "forged"})
    with reg.client(repositories=["r/p"]) as client:
        with pytest.raises(Unauthorized):
            client.status(UPLOAD_ID)
        assert not client.unscoped_challenge  # error="invalid_token": the token is at fault


def test_repositories_must_be_valid_names() -> None:
    with pytest.raises(NameInvalid):
        RegistryClient("http://registry.test", repositories=["r/p", "r/p:push"])


def test_without_credentials_the_token_is_asked_for_anonymously(tmp_path: Path) -> None:
    reg = AuthRegistry("bearer")
    reg.inner.blobs[("r/p", sha256(DATA))] = DATA
    with reg.client(None) as client:
        client.pull("r/p", sha256(DATA), tmp_path / "pulled.bin")
        with pytest.raises(Unauthorized):  # anonymous tokens carry pull only
            client.push("r/p", io.BytesIO(b"x"))
    first = reg.token_requests[0]
    assert "authorization" not in first.headers
    assert "account" not in first.url.params


@pytest.mark.parametrize(
    "realm",
    [
        "ftp://auth.test/token",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "/token",
        "auth.test/token",
        "http://user:secret@auth.test/token",
    ],
)
def test_a_realm_that_is_not_an_http_url_is_never_followed(realm: str) -> None:
    reg = AuthRegistry("bearer", realm=realm)
    with reg.client() as client, pytest.raises(Unknown, match="realm") as caught:
        push(client, "r/p", DATA)
    assert reg.token_requests == []
    assert "secret" not in f"{caught.value} {caught.value.detail}"


def _reply(status: int, body: bytes | Iterable[bytes]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, content=body)


class Huge:
    """A valid token answer padded to 4 MiB, sent in 64 KiB pieces; ``sent`` counts
    the pieces the client pulled."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"token": "fine", "padding": "'
        for _ in range(64):
            self.sent += 1
            yield b" " * 65536
        yield b'"}'


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (_reply(401, b"{}"), Unauthorized, "refused the credentials"),
        (_reply(403, b"{}"), Unauthorized, "refused the credentials"),
        (_reply(429, b"{}"), TooManyRequests, "rate-limiting"),
        (_reply(503, b"{}"), StorageUnavailable, "HTTP 503"),
        (_reply(404, b"{}"), Unknown, "HTTP 404"),
        (_reply(200, b"<html>"), Unknown, "no usable token"),
        (_reply(200, b'{"token": 42}'), Unknown, "no usable token"),
        (_reply(200, b'{"token": "two words"}'), Unknown, "no usable token"),
        (_reply(200, b'{"token": "a\\r\\nX-Evil: 1"}'), Unknown, "no usable token"),
        (_reply(200, b"[]"), Unknown, "no usable token"),
    ],
)
def test_a_failing_token_server_is_a_clear_error(
    reply: Callable[[httpx.Request], httpx.Response], error: type[Exception], words: str
) -> None:
    reg = AuthRegistry("bearer")
    reg.token_reply = reply
    with reg.client() as client, pytest.raises(error, match=words) as caught:
        push(client, "r/p", DATA)
    assert type(caught.value) is error
    assert "pa55" not in str(caught.value)


def test_a_huge_token_answer_is_refused_after_reading_1_mib() -> None:
    reg = AuthRegistry("bearer")
    huge = Huge()
    reg.token_reply = _reply(200, huge)
    with reg.client() as client, pytest.raises(Unknown, match="no usable token"):
        push(client, "r/p", DATA)
    assert huge.sent <= 17  # MAX_TOKEN_RESPONSE, and one piece more


def test_access_token_serves_when_there_is_no_token_and_a_bad_lifetime_is_60_s() -> None:
    reg = AuthRegistry("bearer")
    real = reg.token

    def access_token_only(request: httpx.Request) -> httpx.Response:
        body = json.loads(real(request).content)
        return httpx.Response(200, json={"access_token": body["token"], "expires_in": "soon"})

    reg.token_reply = access_token_only
    with reg.client() as client:
        assert push(client, "r/p", DATA)["status"] == "committed"
        reg.now += 51
        client.status("0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e")
    assert len(reg.token_requests) == 2


def test_an_unreachable_token_server_is_unavailable() -> None:
    reg = AuthRegistry("bearer")

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    reg.token_reply = down
    with reg.client() as client, pytest.raises(StorageUnavailable, match="token server"):
        push(client, "r/p", DATA)


# -- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], AuthRegistry]:
    """The CLI's RegistryClient talks to an AuthRegistry of the given mode."""

    def make(mode: str) -> AuthRegistry:
        reg = AuthRegistry(mode)

        class Wired(RegistryClient):
            def __init__(self, base_url: str, **kwargs: Any) -> None:
                super().__init__(base_url, transport=reg.transport(), **kwargs)

        monkeypatch.setattr(client_module, "RegistryClient", Wired)
        return reg

    return make


def invoke(*args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> Any:
    base = {"INGEST_USERNAME": "", "INGEST_PASSWORD": ""}  # none from the caller's shell
    return CliRunner().invoke(cli, list(args), input=input, env={**base, **(env or {})})


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_cli_push_with_the_password_on_stdin(
    wired: Callable[[str], AuthRegistry], mode: str, tmp_path: Path
) -> None:
    reg = wired(mode)
    f = tmp_path / "blob.bin"
    f.write_bytes(DATA)
    run = invoke(
        "push", str(f), "--repo", "r/p", "-u", "alice", "--password-stdin", input=b"pa55-w0rd\n"
    )
    assert run.exit_code == 0, run.output
    assert f"committed r/p@{sha256(DATA)}" in run.stdout
    assert "pa55" not in run.output
    assert reg.inner.staged == DATA


def test_cli_credentials_from_the_environment(
    wired: Callable[[str], AuthRegistry], tmp_path: Path
) -> None:
    wired("basic")
    f = tmp_path / "blob.bin"
    f.write_bytes(DATA)
    ok = invoke("push", str(f), env={"INGEST_USERNAME": "alice", "INGEST_PASSWORD": "pa55-w0rd"})
    assert ok.exit_code == 0, ok.output
    wrong = invoke("push", str(f), env={"INGEST_USERNAME": "alice", "INGEST_PASSWORD": "nope"})
    assert wrong.exit_code == 3, wrong.output
    assert "UNAUTHORIZED" in wrong.stderr
    assert "nope" not in wrong.output
    none = invoke("push", str(f))
    assert none.exit_code == 3
    assert "no credentials were given" in none.stderr


def test_cli_a_failing_token_server_is_one_line_and_exit_4(
    wired: Callable[[str], AuthRegistry], tmp_path: Path
) -> None:
    reg = wired("bearer")
    reg.token_reply = _reply(502, b"bad gateway")
    f = tmp_path / "blob.bin"
    f.write_bytes(DATA)
    run = invoke("push", str(f), env={"INGEST_USERNAME": "alice", "INGEST_PASSWORD": "pa55-w0rd"})
    assert run.exit_code == 4, run.output
    assert "error: UNAVAILABLE: the token server http://auth.test/token failed" in run.stderr
    assert "Traceback" not in run.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["push", "-", "-u", "alice", "--password-stdin"], {}, "standard input is the blob"),
        (
            ["pull", "r/p", "sha256:" + "0" * 64, "-o", "x", "--password-stdin"],
            {},
            "needs --username",
        ),
        (["status", "u", "--url", "http://r", "-u", "alice"], {}, "needs a password"),
        (["status", "u", "--url", "http://r"], {"INGEST_PASSWORD": "pw"}, "no user name"),
        (["cancel", "u", "--url", "http://r", "-u", "al:ice"], {"INGEST_PASSWORD": "pw"}, "':'"),
        (["push", "f", "--password", "pw"], {}, "No such option"),  # never on the command line
    ],
)
def test_cli_credential_usage_errors_are_exit_2(
    wired: Callable[[str], AuthRegistry],
    args: list[str],
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wired("basic")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_bytes(b"x")
    run = invoke(*args, input=b"blob bytes", env=env)
    assert run.exit_code == 2, run.output
    assert message in run.stderr


ALICE_ENV = {"INGEST_USERNAME": "alice", "INGEST_PASSWORD": "pa55-w0rd"}


def test_cli_by_upload_id_in_token_mode_takes_repo_and_hints_without_it(
    wired: Callable[[str], AuthRegistry],
) -> None:
    reg = wired("bearer")
    with reg.client() as client:
        push(client, "r/p", DATA)
    url = ("--url", "http://registry.test")
    bare = invoke("status", UPLOAD_ID, *url, env=ALICE_ENV)
    assert bare.exit_code == 3, bare.output
    assert "error: UNAUTHORIZED: " in bare.stderr
    assert "hint: in token mode, pass --repo REPOSITORY so the token covers it" in bare.stderr
    scoped = invoke("--json", "status", UPLOAD_ID, *url, "--repo", "r/p", env=ALICE_ENV)
    assert scoped.exit_code == 0, scoped.output
    assert json.loads(scoped.stdout)["state"] == "committed"
    assert reg.scopes_asked()[-1] == ["repository:r/p:pull,push"]


def test_cli_gives_no_token_hint_for_a_wrong_password(
    wired: Callable[[str], AuthRegistry],
) -> None:
    for mode in ("basic", "bearer"):
        reg = wired(mode)
        reg.upload_repository = "r/p"
        env = {**ALICE_ENV, "INGEST_PASSWORD": "wrong"}
        run = invoke("status", UPLOAD_ID, "--url", "http://registry.test", env=env)
        assert run.exit_code == 3, run.output
        assert "error: UNAUTHORIZED: " in run.stderr
        assert "hint:" not in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", UPLOAD_ID, "--repo", "r/p"], "give the frontend with --url"),
        (["retry", "--failed", "--repo", "r/p"], "give the frontend with --url"),
        (["cancel", UPLOAD_ID, "--url", "http://r", "--repo", "R/P"], "Invalid value for '--repo'"),
        (["retry", "--failed", "--url", "http://r", "--repo", "r/p", "--repo", ""], "'--repo'"),
    ],
)
def test_cli_repo_usage_errors_are_exit_2(
    wired: Callable[[str], AuthRegistry], args: list[str], message: str
) -> None:
    wired("bearer")
    run = invoke(*args, env={**ALICE_ENV, "INGEST_URL": ""})
    assert run.exit_code == 2, run.output
    assert message in run.stderr
    assert "Traceback" not in run.output
