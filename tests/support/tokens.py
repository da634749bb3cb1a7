"""A throwaway token issuer for tests: keys, certificates, a JWKS, and signed JWTs.

    issuer = TestIssuer()                      # RSA 2048 (RS256); TestIssuer("ec"): P-256
    Path("certs.pem").write_text(issuer.pem_bundle())     # INGEST_AUTH_TOKEN_CERTS
    Path("jwks.json").write_text(json.dumps(issuer.jwks()))  # INGEST_AUTH_TOKEN_JWKS
    token = issuer.mint("alice", "registry.test", [{"type": "repository",
                        "name": "library/ubuntu", "actions": ["pull"]}], "test-issuer")

Each issuer has a signing key with a self-signed certificate of its own
(:meth:`pem_bundle`, trusted by ``kid``), and a separate CA that certified the same
key (:meth:`pem_bundle` with ``ca=True``, trusted through an ``x5c`` chain:
``mint(..., x5c=True)``). Key IDs are computed here independently of
``ingest.auth.token``, so tests that use them cross-check it. Nothing here protects
anything: keys are generated per issuer and certificates last a day.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ingest.auth import Access

__all__ = ["TestIssuer", "compact", "libtrust_kid", "thumbprint"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def libtrust_kid(key: PublicKey) -> str:
    """docker/libtrust's key ID: 240 bits of SHA-256(DER SPKI), base32, groups of 4."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def compact(
    header: Mapping[str, Any],
    claims: Mapping[str, Any] | bytes,
    sign: Callable[[bytes], bytes] = lambda _: b"",
) -> str:
    """A compact JWS built by hand (for tokens PyJWT refuses to make): the header and
    the claims as JSON (or the raw claims bytes), signed with ``sign``."""
    body = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(body)}".encode()
    return f"{signing_input.decode()}.{_b64url(sign(signing_input))}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: PublicKey,
    issuer: str,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
    not_before: datetime.datetime | None = None,
) -> x509.Certificate:
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TestIssuer:
    """A token issuer with a fresh key (``"rsa"``: 2048 bits, RS256; ``"ec"``: P-256,
    ES256), its self-signed certificate, and a CA that certified the key too."""

    __test__ = False  # a helper, not a test class, wherever it is imported

    def __init__(self, key_type: Literal["rsa", "ec"] = "rsa", name: str = "test-issuer") -> None:
        self.key_type = key_type
        self.name = name
        self.key: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if key_type == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.algorithm = "RS256" if key_type == "rsa" else "ES256"
        # Self-signed, and a CA: trusted by kid, and also a root of chains of itself.
        self.certificate = _certificate(name, self.public_key, name, self.key, ca=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_certificate = _certificate(
            f"{name} CA", self.ca_key.public_key(), f"{name} CA", self.ca_key, ca=True
        )
        self.leaf_certificate = _certificate(
            f"{name} signer", self.public_key, f"{name} CA", self.ca_key, ca=False
        )

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    @property
    def kid(self) -> str:
        """The key's RFC 7638 thumbprint: the ``kid`` that :meth:`mint` puts in."""
        return thumbprint(self.jwk(kid=None))

    @property
    def libtrust_kid(self) -> str:
        """The key's libtrust ID (the ``kid`` of docker_auth, GitLab, distribution 2)."""
        return libtrust_kid(self.public_key)

    # -- what the registry is configured with ----------------------------------------
    def pem_bundle(self, *, ca: bool = False) -> str:
        """``INGEST_AUTH_TOKEN_CERTS``: the key's certificate (``ca=True``: the CA's)."""
        return _pem(self.ca_certificate if ca else self.certificate)

    def public_key_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwk(self, kid: str | None = "") -> dict[str, Any]:
        """The public key as a JWK; ``kid`` "" (default): :attr:`kid`, None: no kid."""
        public = self.public_key
        jwk: dict[str, Any] = (
            RSAAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, rsa.RSAPublicKey)
            else ECAlgorithm.to_jwk(public, as_dict=True)
        )
        jwk.pop("kid", None)
        if kid is not None:
            jwk["kid"] = kid or thumbprint(jwk)
        return jwk

    def jwks(self, kid: str | None = "", **members: Any) -> dict[str, Any]:
        """``INGEST_AUTH_TOKEN_JWKS``: ``{"keys": [the public JWK]}`` (extra members,
        such as ``alg="RS256"`` or ``use="sig"``, go into the key)."""
        return {"keys": [{**self.jwk(kid), **members}]}

    def write(self, directory: Path) -> tuple[str, str]:
        """Write ``certs.pem`` and ``jwks.json`` into ``directory``; their paths."""
        certs, jwks = directory / "certs.pem", directory / "jwks.json"
        certs.write_text(self.pem_bundle())
        jwks.write_text(json.dumps(self.jwks()))
        return str(certs), str(jwks)

    def x5c(self) -> list[str]:
        """The ``x5c`` header of a token signed by the key: the leaf that the CA
        certified (the CA itself is left out, as the registry must already trust it)."""
        return [
            base64.b64encode(
                self.leaf_certificate.public_bytes(serialization.Encoding.DER)
            ).decode()
        ]

    # -- tokens ------------------------------------------------------------------------
    def claims(
        self,
        subject: str = "",
        service: str = "registry.test",
        access: Iterable[Mapping[str, Any] | Access] | None = (),
        issuer: str = "test-issuer",
        *,
        expires_in: float = 300,
        **overrides: Any,
    ) -> dict[str, Any]:
        """The claim set :meth:`mint` signs; an override of None drops that claim, and
        so does ``access=None`` (any ``access`` that is not a list of entries goes into
        the claim as it is, to test malformed claims)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": subject,
            "aud": service,
            "exp": now + int(expires_in),
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": _access_claim(access),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        subject: str = "",
        service: str = "registry.test",
        access: Iterable[Mapping[str, Any] | Access] | None = (),
        issuer: str = "test-issuer",
        *,
        expires_in: float = 300,
        kid: str | None = "",
        x5c: bool = False,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A signed token for ``service`` from ``issuer``, valid from now for
        ``expires_in`` seconds (negative: already expired), granting ``access``
        (``{"type", "name", "actions"}`` entries or :class:`~ingest.auth.Access`).

        The header names the key by ``kid`` (default :attr:`kid`; None: none), or,
        with ``x5c=True``, by the certificate chain instead. ``headers`` are merged
        last (a None value drops that header); ``overrides`` replace claims (None
        drops one, e.g. ``exp=None``).
        """
        claims = self.claims(subject, service, access, issuer, expires_in=expires_in, **overrides)
        header: dict[str, Any] = {}
        if x5c:
            header["x5c"] = self.x5c()
        elif kid is not None:
            header["kid"] = kid or self.kid
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=algorithm or self.algorithm, headers=header)


def _access_claim(access: Any) -> Any:
    """Entries as dicts (from mappings or :class:`~ingest.auth.Access`); None or
    anything that is not a list of entries is passed through, for malformed claims."""
    if (
        access is None
        or isinstance(access, str | bytes | Mapping)
        or not isinstance(access, Iterable)
    ):
        return access
    return [
        {"type": a.type, "name": a.name, "actions": sorted(a.actions)}
        if isinstance(a, Access)
        else dict(a)
        if isinstance(a, Mapping)
        else a
        for a in access
    ]
