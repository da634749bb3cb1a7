"""The frontend with each real authentication mode (none, htpasswd, token), built the
way ``ingest serve`` builds it: ``create_app`` asks ``backends.authenticator``."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.auth import Access
from ingest.auth.htpasswd import HtpasswdAuth
from ingest.auth.none import NoAuth
from ingest.auth.token import TokenAuth
from ingest.config import ConfigError, Settings
from ingest.http.app import create_app
from ingest.storage.memory import MemoryDriver
from tests.support.tokens import TestIssuer
from tests.unit.fakes import make_ingest, sha256
from tests.unit.http.conftest import Env, EnvFactory, assert_error
from tests.unit.http.test_hostile import Sender

A = "acme/a"
DATA = b"some layer"
BASIC_OK = {"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="}  # alice:wonderland
BASIC_BAD = {"Authorization": "Basic YWxpY2U6bm9wZQ=="}  # alice:nope


def _push(env: Env, headers: dict[str, str]) -> int:
    r = env.client.post(f"/v2/{A}/blobs/uploads/", headers=headers)
    if r.status_code == 202:
        r = env.client.put(
            r.headers["location"], params={"digest": sha256(DATA)}, content=DATA, headers=headers
        )
    status: int = r.status_code
    return status


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer("ec")


@pytest.fixture
def htpasswd_file(tmp_path: Path) -> str:
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)) + b"\n")
    return str(path)


@pytest.fixture
def token_env(make_env: EnvFactory, tmp_path: Path, issuer: TestIssuer) -> Env:
    certs, _ = issuer.write(tmp_path)
    return make_env(
        auth=TokenAuth("https://auth.test/token", "registry.test", "test-issuer", certs)
    )


def test_create_app_builds_the_configured_authenticator() -> None:
    ing, _ = make_ingest(MemoryDriver())
    app = create_app(Settings(auth="none"), ingest=ing)
    assert isinstance(app.state.policy.authenticator, NoAuth)


def test_create_app_refuses_to_start_without_an_authentication_mode() -> None:
    ing, _ = make_ingest(MemoryDriver())
    with pytest.raises(ConfigError, match="INGEST_AUTH"):
        create_app(Settings(), ingest=ing)


def test_the_switches_come_from_the_settings() -> None:
    ing, _ = make_ingest(MemoryDriver())
    app = create_app(Settings(auth="none", read_only=True, delete_enabled=True), ingest=ing)
    assert (app.state.policy.read_only, app.state.policy.delete_enabled) == (True, True)


def test_htpasswd(make_env: EnvFactory, htpasswd_file: str) -> None:
    env = make_env(auth=HtpasswdAuth(htpasswd_file, "registry"))
    r = env.client.get("/v2/")
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == 'Basic realm="registry", charset="UTF-8"'
    assert_error(env.client.get("/v2/", headers=BASIC_BAD), 401, "UNAUTHORIZED")
    assert env.client.get("/v2/", headers=BASIC_OK).status_code == 200
    assert _push(env, {}) == 401
    assert _push(env, BASIC_OK) == 201
    assert env.client.get(f"/v2/{A}/blobs/{sha256(DATA)}", headers=BASIC_OK).content == DATA
    assert env.client.get("/v2/_catalog", headers=BASIC_OK).json() == {"repositories": [A]}


def test_token(token_env: Env, issuer: TestIssuer) -> None:
    env = token_env
    r = env.client.post(f"/v2/{A}/blobs/uploads/")
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == (
        'Bearer realm="https://auth.test/token",service="registry.test",'
        'scope="repository:acme/a:pull,push"'
    )
    pull = issuer.mint("alice", access=[Access("repository", A, frozenset({"pull"}))])
    r = env.client.post(f"/v2/{A}/blobs/uploads/", headers={"Authorization": f"Bearer {pull}"})
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"].endswith(
        'scope="repository:acme/a:pull,push",error="insufficient_scope"'
    )
    push = issuer.mint("alice", access=[Access("repository", A, frozenset({"pull", "push"}))])
    assert _push(env, {"Authorization": f"Bearer {push}"}) == 201
    expired = issuer.mint("alice", access=[], expires_in=-3600)
    r = env.client.get("/v2/", headers={"Authorization": f"Bearer {expired}"})
    assert_error(r, 401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    anything = issuer.mint("", access=[])
    assert env.client.get("/v2/", headers={"Authorization": f"Bearer {anything}"}).is_success


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_no_authorization_value_causes_a_500_in_a_real_mode(
    make_env: EnvFactory, mode: str, htpasswd_file: str, tmp_path: Path, issuer: TestIssuer
) -> None:
    if mode == "htpasswd":
        env = make_env(auth=HtpasswdAuth(htpasswd_file, "registry"))
    else:
        certs, _ = issuer.write(tmp_path)
        env = make_env(
            auth=TokenAuth("https://auth.test/token", "registry.test", "test-issuer", certs)
        )
    send = Sender(env)
    valid = issuer.mint("alice", access=[Access("repository", A, frozenset({"*"}))])

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        value=st.one_of(
            st.text(max_size=120),
            st.binary(max_size=120),
            st.builds(
                lambda s, rest: f"{s} {rest}",
                st.sampled_from(["Bearer", "Basic", "bearer", "BASIC"]),
                st.text(max_size=120) | st.sampled_from([valid, valid[:-3], valid + "."]),
            ),
        ),
        endpoint=st.sampled_from(
            [("GET", "/v2/"), ("POST", f"/v2/{A}/blobs/uploads/"), ("GET", "/v2/_catalog")]
        ),
    )
    def run(value: str | bytes, endpoint: tuple[str, str]) -> None:
        r = send(*endpoint, headers={"Authorization": value})  # type: ignore[dict-item]
        if r is not None and r.status_code == 401:
            assert r.headers["www-authenticate"]

    run()
    assert send.sent > 10
