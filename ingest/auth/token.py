"""``INGEST_AUTH=token``: the Docker registry token protocol (Bearer JWTs).

A client that gets 401 with ``Bearer realm=…,service=…,scope=…`` asks the token
server at ``realm`` for a token and retries with ``Authorization: Bearer <jwt>``.
This module verifies such a token the way distribution's ``registry/auth/token``
does (read there, written here), with PyJWT for the signature and the claims:

Signature
    ``alg`` must be RS256, RS384, RS512 (RSA keys of at least 2048 bits) or ES256,
    ES384, ES512 (P-256, P-384, P-521 respectively) and fit the key's type and
    curve. Never ``none``, never HS* (a public key must not double as an HMAC
    secret), and not PS*/EdDSA, which distribution also accepts (kept out
    until an issuer needs them: two more entries in :mod:`ingest.auth.keys`).

Which key (distribution's order; the first that the header names decides, there is
no fallback to the next)
    1. ``x5c``: a certificate chain; the leaf must verify up to a certificate of
       the PEM bundle (``INGEST_AUTH_TOKEN_CERTS``), then the leaf's key verifies
       the token. Like Go's ``x509.Verify`` with ``ExtKeyUsageAny``: signatures,
       validity periods and CA constraints are checked, key usages of the leaf
       are not. A leaf that is itself in the bundle is trusted as is.
    2. ``jwk``: with its own ``x5c``, as above; else the trusted key named by the
       JWK's ``kid`` (or, without one, by its RFC 7638 thumbprint). The key in the
       header itself is never used.
    3. ``kid``: a trusted key by ID (:mod:`ingest.auth.keys`): its libtrust key ID
       (distribution up to 2.8, docker_auth, GitLab), its RFC 7638 thumbprint
       (distribution 3), or the ``kid`` a JWKS file gives it.
    4. none of them: refused. Distribution never tries every trusted key, and
       neither do we: a token must say which key signed it.

Claims
    ``iss`` must equal the configured issuer; ``aud`` (a string or a list) must
    contain the service; ``exp`` is required; ``exp``, ``nbf`` and ``iat`` are
    checked with :data:`LEEWAY` (60 s, distribution's ``Leeway``) for clock skew;
    ``sub`` (a string, may be absent) is the subject; ``access`` is a list of
    ``{"type", "name", "actions"}`` objects (``class`` allowed) that become the
    identity's grants; anything else there refuses the whole token.

Every failure raises :class:`~ingest.errors.Unauthorized` with ``detail["reason"]``:
``scheme`` (not a Bearer header), ``malformed``, ``algorithm``, ``unknown-key`` (no
trusted key named, or a chain that does not verify), ``signature``, ``expired``,
``not-yet-valid``, ``audience`` or ``issuer``. :func:`bearer_error` maps a reason to
the ``error`` of the challenge (RFC 6750 §3.1).

The keys are read once, when the authenticator is built: rotating them means a
restart (as in distribution).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ingest.auth import ANONYMOUS, Access, Identity, bearer_error
from ingest.auth.headers import quoted, split_authorization
from ingest.auth.keys import ALGORITHMS, TrustedKey, TrustedKeys, algorithms_for, jwk_thumbprint_of
from ingest.errors import Unauthorized

__all__ = ["LEEWAY", "MAX_CHAIN", "MAX_TOKEN", "TokenAuth", "bearer_error", "scope_param"]

log = logging.getLogger(__name__)

#: Clock skew allowed on ``exp``, ``nbf`` and ``iat``, in seconds (distribution: 60 s).
LEEWAY = 60.0
#: A longer ``Authorization`` value is malformed. A token with a chain of a few
#: certificates is a few KiB; HTTP servers cap a header line well below this.
MAX_TOKEN = 64 * 1024
#: The longest ``x5c`` chain looked at (leaf, intermediates, maybe the root).
MAX_CHAIN = 8


def _fail(reason: str, message: str) -> Unauthorized:
    return Unauthorized(message, {"reason": reason})


# -- the authenticator ------------------------------------------------------------------


def scope_param(wanted: Iterable[Access]) -> str:
    """The ``scope`` of a challenge: one ``type:name:actions`` per resource (actions of
    the same resource merged, sorted), space-separated, in the order first wanted."""
    merged: dict[tuple[str, str], set[str]] = {}
    for access in wanted:
        merged.setdefault((access.type, access.name), set()).update(access.actions)
    return " ".join(Access(t, n, frozenset(a)).scope for (t, n), a in merged.items())


class TokenAuth:
    """Bearer tokens of the Docker token protocol, signed by trusted keys."""

    scheme = "Bearer"

    def __init__(
        self,
        realm: str,
        service: str,
        issuer: str,
        certs_path: str = "",
        jwks_path: str = "",
        *,
        leeway: float = LEEWAY,
    ) -> None:
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.leeway = leeway
        self._keys = TrustedKeys.load(certs_path, jwks_path)
        self._store = Store(self._keys.roots) if self._keys.roots else None

    # -- Authenticator ----------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> Identity:
        if authorization is None:
            return ANONYMOUS
        try:
            return self._authenticate(authorization)
        except Unauthorized as exc:
            log.info("token refused: %s (%s)", exc.detail.get("reason"), exc.message)
            raise

    def challenge(self, wanted: Sequence[Access], error: str | None = None) -> str:
        parts = [f"Bearer realm={quoted(self.realm)}", f"service={quoted(self.service)}"]
        if scope := scope_param(wanted):
            parts.append(f"scope={quoted(scope)}")
        if error:
            parts.append(f"error={quoted(error)}")
        return ",".join(parts)

    # -- verification -----------------------------------------------------------------
    def _authenticate(self, authorization: str) -> Identity:
        scheme, token = split_authorization(authorization)
        if scheme != "bearer":
            raise _fail("scheme" if scheme else "malformed", "expected a Bearer token")
        if not token or len(token) > MAX_TOKEN or not token.isascii() or " " in token:
            raise _fail("malformed", "the Bearer token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise _fail("malformed", "the Bearer token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _fail("algorithm", f"tokens signed with {str(alg)[:20]!r} are not accepted")
        trusted = self._signing_key(header)
        if alg not in trusted.algorithms:
            raise _fail("algorithm", f"the signing key cannot be used with {alg}")
        claims = self._verified_claims(token, trusted)
        subject = claims.get("sub", "")
        return Identity(subject if isinstance(subject, str) else "", _grants(claims.get("access")))

    def _signing_key(self, header: Mapping[str, Any]) -> TrustedKey:
        """The key the header names, trusted (distribution's order: x5c, jwk, kid)."""
        if "x5c" in header:
            return self._chain_key(header["x5c"])
        if "jwk" in header:
            jwk = header["jwk"]
            if not isinstance(jwk, dict):
                raise _fail("malformed", "the jwk header is not a JSON object")
            if "x5c" in jwk:
                return self._chain_key(jwk["x5c"])
            kid = jwk.get("kid")
            key_id = kid if isinstance(kid, str) else jwk_thumbprint_of(jwk)
            return self._key_by_id(key_id)
        if "kid" in header:
            return self._key_by_id(header["kid"])
        raise _fail("unknown-key", "the token names no key (kid, jwk or x5c)")

    def _key_by_id(self, key_id: object) -> TrustedKey:
        trusted = self._keys.get(key_id)
        if trusted is None:
            raise _fail("unknown-key", "the token is signed by a key that is not trusted")
        return trusted

    def _chain_key(self, x5c: object) -> TrustedKey:
        """The leaf's key of an ``x5c`` chain that verifies up to a trusted certificate."""
        if (
            not isinstance(x5c, list)
            or not 0 < len(x5c) <= MAX_CHAIN
            or not all(isinstance(c, str) for c in x5c)
        ):
            raise _fail("malformed", "x5c is not a list of certificates")
        try:
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c
            ]
        except (ValueError, binascii.Error):
            raise _fail("malformed", "x5c holds something that is not a certificate") from None
        if self._store is None:
            raise _fail("unknown-key", "no certificate is trusted to sign tokens")
        # Built per token: a verifier checks validity periods against its build time.
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),  # Go: ExtKeyUsageAny, no usage checks
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(chain[0], chain[1:])
        except (VerificationError, ValueError) as exc:
            log.info("token: x5c chain does not verify: %s", exc)
            raise _fail("unknown-key", "the token's certificate chain is not trusted") from None
        key = chain[0].public_key()
        algorithms = algorithms_for(key)
        if not algorithms or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise _fail("algorithm", "the certificate's key cannot verify tokens")
        return TrustedKey(key, algorithms, f"x5c {chain[0].subject.rfc4514_string()!r}")

    def _verified_claims(self, token: str, trusted: TrustedKey) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=trusted.key,
                algorithms=sorted(trusted.algorithms),  # fixed by the trusted key's type
                audience=self.service,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            raise _fail("signature", "the token's signature does not verify") from None
        except jwt.ExpiredSignatureError:
            raise _fail("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _fail("not-yet-valid", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise _fail("audience", "the token is for another service") from None
        except jwt.InvalidIssuerError:
            raise _fail("issuer", "the token is from an issuer that is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            reason = {"aud": "audience", "iss": "issuer"}.get(exc.claim, "malformed")
            raise _fail(reason, f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("algorithm", "the token's algorithm is not accepted") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            # The claims' types (exp not a number, sub not a string...), bad JSON.
            raise _fail("malformed", "the token's claims are malformed") from None


def _grants(claim: object) -> tuple[Access, ...]:
    """The ``access`` claim as grants; Unauthorized for anything but a list of
    ``{"type": str, "name": str, "actions": [str, ...]}`` (``class``: a string)."""
    if claim is None:
        return ()
    if not isinstance(claim, list):
        raise _fail("malformed", "the token's access claim is not a list")
    grants = []
    for entry in claim:
        if not isinstance(entry, dict):
            raise _fail("malformed", "an access entry is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if (
            not isinstance(kind, str)
            or not kind
            or not isinstance(name, str)
            or not name
            or not isinstance(actions, list)
            or not all(isinstance(a, str) for a in actions)
            or not isinstance(entry.get("class", ""), str)
        ):
            raise _fail("malformed", "an access entry is malformed")
        grants.append(Access(kind, name, frozenset(actions)))
    return tuple(grants)
