"""The keys trusted to sign tokens (``INGEST_AUTH_TOKEN_CERTS``, ``INGEST_AUTH_TOKEN_JWKS``),
by every ID a token may name them with.

Each key answers to its **libtrust key ID** (what distribution up to 2.8 and token
servers such as docker_auth and GitLab put in ``kid``: SHA-256 of the DER public key,
240 bits in base32, ``ABCD:EFGH:…``), its **RFC 7638 JWK thumbprint** (what
distribution 3 computes; for EC keys also its variant with unpadded coordinates), and,
for a JWKS key, its ``kid``. One ID naming two different keys is a configuration error.

Only keys that can verify an accepted algorithm are kept (RSA of at least 2048 bits:
RS256/384/512; EC on P-256, P-384, P-521: ES256, ES384, ES512 respectively); others
are skipped with a warning. A JWK's ``alg`` narrows its key to that algorithm, and a
JWK whose ``use`` is not ``sig`` is skipped. The certificates of the PEM bundle are
also the roots of ``x5c`` chains.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ingest.config import ConfigError

__all__ = [
    "ALGORITHMS",
    "MIN_RSA_BITS",
    "PublicKey",
    "TrustedKey",
    "TrustedKeys",
    "algorithms_for",
    "jwk_thumbprint",
    "jwk_thumbprint_of",
    "libtrust_key_id",
]

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_RSA = frozenset({"RS256", "RS384", "RS512"})
_EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
#: The members of a JWK that its RFC 7638 thumbprint covers.
_JWK_REQUIRED = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
#: Every ``alg`` a token may use.
ALGORITHMS = _RSA | frozenset(_EC_BY_CURVE.values())
#: Smallest RSA key accepted (NIST SP 800-131A; PyJWT warns below it as well).
MIN_RSA_BITS = 2048

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?\r?\n-----END \1-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A key that may sign tokens, and the ``alg`` values it may verify."""

    key: PublicKey
    algorithms: frozenset[str]  # the ``alg`` values it may verify
    origin: str  # where it came from, for logs


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length if length is not None else max(1, (n.bit_length() + 7) // 8), "big")


def _thumbprint_members(members: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(members), separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def jwk_thumbprint(key: PublicKey, *, padded: bool = True) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256) of ``key``.

    ``padded=False`` gives distribution 3's variant: it writes EC coordinates
    without leading zero bytes (Go's ``big.Int.Bytes``), which differs from RFC 7638
    for about one P-256 key in 128.
    """
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return _thumbprint_members(
            {"e": _b64url(_int_bytes(numbers.e)), "kty": "RSA", "n": _b64url(_int_bytes(numbers.n))}
        )
    point = key.public_numbers()
    size = (key.curve.key_size + 7) // 8 if padded else None
    return _thumbprint_members(
        {
            "crv": _JWK_CURVES.get(key.curve.name, key.curve.name),
            "kty": "EC",
            "x": _b64url(_int_bytes(point.x, size)),
            "y": _b64url(_int_bytes(point.y, size)),
        }
    )


def libtrust_key_id(key: PublicKey) -> str:
    """The libtrust key ID of ``key``: SHA-256 of its DER SubjectPublicKeyInfo, cut to
    240 bits, base32 in twelve groups of four (``PYYO:TEWU:…:Z7Q6``)."""
    text = base64.b32encode(hashlib.sha256(_der(key)).digest()[:30]).decode("ascii")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def jwk_thumbprint_of(jwk: Mapping[str, Any]) -> str | None:
    """The RFC 7638 thumbprint of a JWK as given (its required members), or None."""
    kty = jwk.get("kty")
    required = _JWK_REQUIRED.get(kty) if isinstance(kty, str) else None
    if required is None or not all(isinstance(jwk.get(m), str) for m in required):
        return None
    return _thumbprint_members({m: jwk[m] for m in required})


def algorithms_for(key: object) -> frozenset[str]:
    """The ``alg`` values ``key`` can verify: none for a key of another type, an RSA
    key under :data:`MIN_RSA_BITS`, or an EC key on another curve."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA if key.key_size >= MIN_RSA_BITS else frozenset()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_BY_CURVE.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    return frozenset()


def _der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TrustedKeys:
    """The trusted keys by every ID they answer to, and the certificates of the bundle."""

    def __init__(self) -> None:
        self.by_id: dict[str, TrustedKey] = {}
        self.roots: list[x509.Certificate] = []
        self.count = 0  # distinct keys added

    @classmethod
    def load(cls, certs_path: str = "", jwks_path: str = "") -> TrustedKeys:
        """The keys of a PEM bundle and/or a JWKS file; ConfigError (naming the setting)
        if a file cannot be read or parsed, or if they hold no usable key at all."""
        keys = cls()
        if certs_path:
            _load_pem(certs_path, keys)
        if jwks_path:
            _load_jwks(jwks_path, keys)
        if not keys.count:
            raise ConfigError(
                "INGEST_AUTH=token: no usable key to verify tokens with in "
                "INGEST_AUTH_TOKEN_CERTS or INGEST_AUTH_TOKEN_JWKS",
                "auth_token_certs" if certs_path else "auth_token_jwks",
            )
        return keys

    def get(self, key_id: object) -> TrustedKey | None:
        """The key ``key_id`` names (None for an unknown ID or one that is not text)."""
        return self.by_id.get(key_id) if isinstance(key_id, str) else None

    def add(
        self, key: object, origin: str, field: str, kid: str | None = None, alg: str | None = None
    ) -> None:
        algorithms = algorithms_for(key)
        if alg is not None:
            algorithms &= {alg}
        if not algorithms or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            log.warning(
                "token keys: ignoring %s: only RSA keys of %d bits or more and EC keys on "
                "P-256, P-384 or P-521 can verify tokens (RS256/384/512, ES256/384/512)%s",
                origin,
                MIN_RSA_BITS,
                f", and it is for {alg}" if alg else "",
            )
            return
        trusted = TrustedKey(key, algorithms, origin)
        ids = [libtrust_key_id(key), jwk_thumbprint(key)]
        if isinstance(key, ec.EllipticCurvePublicKey):
            ids.append(jwk_thumbprint(key, padded=False))
        if kid is not None:
            ids.append(kid)
        for key_id in dict.fromkeys(ids):
            known = self.by_id.get(key_id)
            if known is None:
                self.by_id[key_id] = trusted
            elif _der(known.key) == _der(key):  # the same key twice: either use allowed
                self.by_id[key_id] = TrustedKey(key, known.algorithms | algorithms, known.origin)
            else:
                raise ConfigError(
                    f"key ID {key_id!r} names two different keys ({known.origin}, {origin})",
                    field,
                )
        self.count += 1


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(
            f"INGEST_{field.upper()}: cannot read {path!r}: {exc.strerror or exc}", field
        ) from None


def _load_pem(path: str, keys: TrustedKeys) -> None:
    field = "auth_token_certs"
    data = _read(path, field)
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise ConfigError(f"INGEST_AUTH_TOKEN_CERTS: no PEM block in {path!r}", field)
    for number, block in enumerate(blocks, 1):
        kind = block.group(1).decode("ascii")
        origin = f"{path} block {number} ({kind})"
        try:
            if kind == "CERTIFICATE":
                cert = x509.load_pem_x509_certificate(block.group(0))
                keys.roots.append(cert)
                origin = f"{path} certificate {cert.subject.rfc4514_string()!r}"
                key: object = cert.public_key()
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = serialization.load_pem_public_key(block.group(0))
            else:
                log.warning("token keys: ignoring %s: give certificates or public keys", origin)
                continue
        except ValueError as exc:
            raise ConfigError(f"INGEST_AUTH_TOKEN_CERTS: {origin}: {exc}", field) from None
        keys.add(key, origin, field)


def _load_jwks(path: str, keys: TrustedKeys) -> None:
    field = "auth_token_jwks"
    try:
        document = json.loads(_read(path, field))
    except ValueError as exc:
        raise ConfigError(f"INGEST_AUTH_TOKEN_JWKS: {path!r} is not JSON: {exc}", field) from None
    found = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(found, list):
        raise ConfigError(f'INGEST_AUTH_TOKEN_JWKS: {path!r} has no "keys" list', field)
    for number, jwk in enumerate(found, 1):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        origin = f"{path} key {number}" + (f" (kid {kid!r})" if isinstance(kid, str) else "")
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC"):
            log.warning("token keys: ignoring %s: not an RSA or EC key", origin)
            continue
        if jwk.get("use", "sig") != "sig":
            log.warning("token keys: ignoring %s: its use is %r, not sig", origin, jwk.get("use"))
            continue
        try:
            parsed: Any = (RSAAlgorithm if jwk["kty"] == "RSA" else ECAlgorithm).from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"INGEST_AUTH_TOKEN_JWKS: {origin}: {exc}", field) from None
        if isinstance(parsed, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            parsed = parsed.public_key()  # a private JWK: only its public half is needed
        alg = jwk.get("alg")
        kid = kid if isinstance(kid, str) else None
        keys.add(parsed, origin, field, kid, alg if isinstance(alg, str) else None)
