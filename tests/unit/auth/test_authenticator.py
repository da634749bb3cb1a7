"""``backends.authenticator``: the mode INGEST_AUTH names, or no start at all."""

from __future__ import annotations

import logging
from pathlib import Path

import bcrypt
import pytest

from ingest import backends
from ingest.auth import ANONYMOUS_ALL, Access
from ingest.auth.htpasswd import HtpasswdAuth
from ingest.auth.none import NoAuth
from ingest.auth.token import TokenAuth
from ingest.config import ConfigError, Settings
from tests.support.tokens import TestIssuer


def test_an_unset_mode_refuses_to_build() -> None:
    with pytest.raises(ConfigError) as info:
        backends.authenticator(Settings())
    assert str(info.value) == "INGEST_AUTH must be set: none, htpasswd or token"
    assert info.value.field == "auth"


def test_none_lets_everyone_in_and_warns_each_time_it_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(auth="none")
    with caplog.at_level(logging.WARNING, "ingest.backends"):
        auth = backends.authenticator(settings)
        backends.authenticator(settings)
    assert isinstance(auth, NoAuth)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "authentication is OFF: anyone who reaches this port can push, pull and delete" in (
        warnings[0].getMessage()
    )
    assert auth.scheme == ""
    assert auth.authenticate(None) is ANONYMOUS_ALL
    assert auth.authenticate("Basic garbage") is ANONYMOUS_ALL
    assert auth.authenticate(None).allows(Access("repository", "a", frozenset({"delete"})))
    assert auth.challenge([]) == ""


def test_htpasswd_is_built_from_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n")
    auth = backends.authenticator(
        Settings(auth="htpasswd", auth_htpasswd=str(path), auth_realm="my realm")
    )
    assert isinstance(auth, HtpasswdAuth)
    assert auth.challenge([]) == 'Basic realm="my realm", charset="UTF-8"'


def test_a_missing_htpasswd_file_refuses_to_build(tmp_path: Path) -> None:
    settings = Settings(auth="htpasswd", auth_htpasswd=str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as info:
        backends.authenticator(settings)
    assert info.value.field == "auth_htpasswd"


def test_token_is_built_from_its_settings(tmp_path: Path) -> None:
    issuer = TestIssuer("ec")
    certs, jwks = issuer.write(tmp_path)
    environ = {
        "INGEST_AUTH": "token",
        "INGEST_AUTH_TOKEN_REALM": "https://auth.test/token",
        "INGEST_AUTH_TOKEN_SERVICE": "registry.test",
        "INGEST_AUTH_TOKEN_ISSUER": "test-issuer",
        "INGEST_AUTH_TOKEN_CERTS": certs,
        "INGEST_AUTH_TOKEN_JWKS": jwks,
    }
    auth = backends.authenticator(Settings.from_env(environ))
    assert isinstance(auth, TokenAuth)
    token = issuer.mint("alice", "registry.test", [], "test-issuer")
    assert auth.authenticate(f"Bearer {token}").subject == "alice"
    assert auth.challenge([]) == 'Bearer realm="https://auth.test/token",service="registry.test"'
