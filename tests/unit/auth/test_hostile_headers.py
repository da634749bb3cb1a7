"""Whatever ``Authorization`` value arrives, every mode returns an Identity or raises
Unauthorized with a reason -- never anything else (which the frontend would turn
into a 500)."""

from __future__ import annotations

import base64
import json
import time

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from ingest.auth import Authenticator, Identity
from ingest.auth.htpasswd import HtpasswdAuth
from ingest.auth.none import NoAuth
from ingest.auth.token import TokenAuth
from ingest.errors import Unauthorized
from tests.support.tokens import TestIssuer

SERVICE = "registry.test"
ISSUER = "test-issuer"


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer("ec")


@pytest.fixture(scope="module", params=["none", "htpasswd", "token"])
def auth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer
) -> Authenticator:
    root = tmp_path_factory.mktemp("auth")
    if request.param == "none":
        return NoAuth()
    if request.param == "htpasswd":
        path = root / "htpasswd"
        path.write_bytes(b"alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)) + b"\n")
        return HtpasswdAuth(str(path), "registry")
    certs = root / "certs.pem"
    certs.write_text(issuer.pem_bundle() + issuer.pem_bundle(ca=True))
    return TokenAuth("https://auth.test/token", SERVICE, ISSUER, str(certs))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_names = st.sampled_from(["alg", "kid", "x5c", "jwk", "typ", "crit", "b64", "cty"])
jose_headers = st.dictionaries(
    header_names,
    json_values | st.sampled_from(["RS256", "ES256", "HS256", "none", "ES512"]),
    max_size=5,
)
claim_sets = st.dictionaries(
    st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "access", "jti"]),
    json_values,
    max_size=8,
)


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    """Three base64url segments: a JOSE header and claims of arbitrary JSON, and bytes."""
    header = json.dumps(draw(jose_headers)).encode()
    claims = json.dumps(draw(claim_sets)).encode()
    signature = draw(st.binary(max_size=80))
    return f"{_b64url(header)}.{_b64url(claims)}.{_b64url(signature)}"


def _huge(unit: str) -> st.SearchStrategy[str]:
    return st.integers(1, 300_000).map(lambda n: unit * n)


authorization_values = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("latin-1")),  # what a server makes of raw header bytes
    st.tuples(
        st.sampled_from(["Basic", "Bearer", "basic", "BEARER", "Digest", ""]),
        st.sampled_from([" ", "  ", "\t", ""]),
        st.one_of(
            st.text(),
            st.binary().map(lambda b: base64.b64encode(b).decode()),
            st.binary().map(lambda b: b.decode("latin-1")),
            jwt_shaped(),
            _huge("A"),
            _huge("é"),
            _huge("."),
        ),
    ).map("".join),
    _huge("Bearer "),
)


def outcome(auth: Authenticator, value: str) -> Identity | Unauthorized:
    try:
        return auth.authenticate(value)
    except Unauthorized as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(value=authorization_values)
def test_any_header_value_yields_an_identity_or_unauthorized(
    auth: Authenticator, value: str
) -> None:
    result = outcome(auth, value)
    if isinstance(result, Unauthorized):
        assert isinstance(result.detail["reason"], str)
        assert result.http_status == 401
        json.dumps(result.to_dict())  # the error renders as JSON
    else:
        assert isinstance(result, Identity)


@pytest.fixture(scope="module")
def token_auth(issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory) -> TokenAuth:
    certs = tmp_path_factory.mktemp("signed") / "certs.pem"
    certs.write_text(issuer.pem_bundle())
    return TokenAuth("https://auth.test/token", SERVICE, ISSUER, str(certs))


access_entries = st.fixed_dictionaries(
    {},
    optional={
        "type": st.just("repository") | json_values,
        "name": st.just("library/a") | json_values,
        "actions": st.lists(st.sampled_from(["pull", "push", "*"]) | json_values, max_size=3),
        "class": json_values,
    },
)
signed_claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.just("alice") | json_values,
        "access": st.lists(access_entries, max_size=3) | json_values,
        "nbf": st.integers(0, 2**40) | json_values,
        "iat": st.integers(0, 2**40) | json_values,
        "exp": json_values,
        "aud": st.just([SERVICE, "x"]) | json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(header=jose_headers, claims=signed_claims)
def test_any_header_and_claims_signed_by_a_trusted_key_yield_an_identity_or_unauthorized(
    issuer: TestIssuer, token_auth: TokenAuth, header: dict[str, object], claims: dict[str, object]
) -> None:
    """Signed for real, so the claim checks and the access parsing are reached too."""
    head = json.dumps({"alg": "ES256", "kid": issuer.kid, **header}).encode()
    base = {"iss": ISSUER, "aud": SERVICE, "exp": int(time.time()) + 600}
    body = json.dumps({**base, **claims}).encode()
    signing_input = f"{_b64url(head)}.{_b64url(body)}".encode()
    assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, issuer.key)
    result = outcome(token_auth, f"Bearer {signing_input.decode()}.{_b64url(signature)}")
    if isinstance(result, Unauthorized):
        assert isinstance(result.detail["reason"], str)
    else:
        assert isinstance(result, Identity)
        assert result.grants is not None
        assert all(g.type and g.name for g in result.grants)
