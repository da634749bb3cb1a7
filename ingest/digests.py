"""Digests: parsing, validation and the verifier registry.

A digest is ``algorithm ":" encoded`` (OCI image-spec grammar)::

    digest     := algorithm ":" encoded
    algorithm  := component (separator component)*
    component  := [a-z0-9]+
    separator  := [+._-]
    encoded    := [a-zA-Z0-9=_-]+

Registered algorithms are sha256, sha384 and sha512 (lower-case hex of 64, 96
and 128 characters). TarSum labels such as ``tarsum.v1+sha256`` are digests of
the same grammar whose verifier lives in :mod:`ingest.tarsum`. A well-formed
digest with an unknown algorithm is :class:`~ingest.errors.DigestInvalid` with
reason ``unsupported``.

:func:`new_verifier` returns a streaming :class:`Hasher` for any supported
digest; the commit path feeds every staged byte to the canonical sha256 and to
the claimed digest's hasher in one pass.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from ingest.errors import DigestInvalid, TarSumUnsupported

__all__ = [
    "CANONICAL_ALGORITHM",
    "Digest",
    "Hasher",
    "VerifierLimits",
    "check_supported",
    "new_hasher",
    "new_verifier",
    "parse_digest",
]

CANONICAL_ALGORITHM = "sha256"

# Hex lengths of the plain algorithms we accept.
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_TARSUM_ALG_RE = re.compile(r"tarsum(?:\.[a-z0-9]+)?\+[a-z0-9]+")
# Keep hostile input from producing huge error messages or paths.
_MAX_DIGEST_LEN = 256


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest. ``str(d)`` is the canonical ``alg:hex`` form."""

    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def is_tarsum(self) -> bool:
        return self.algorithm.startswith("tarsum")


def parse_digest(text: str) -> Digest:
    """Parse and validate ``text``; raise DigestInvalid (malformed/unsupported) otherwise."""
    if not isinstance(text, str) or len(text) > _MAX_DIGEST_LEN or not _DIGEST_RE.fullmatch(text):
        raise DigestInvalid(
            "invalid digest format",
            {"reason": "malformed", "digest": _clip(text)},
        )
    algorithm, encoded = text.split(":", 1)
    if algorithm in _HEX_LENGTHS:
        if len(encoded) != _HEX_LENGTHS[algorithm] or not _is_lower_hex(encoded):
            raise DigestInvalid(
                f"{algorithm} digest must be {_HEX_LENGTHS[algorithm]} lower-case hex characters",
                {"reason": "malformed", "digest": text},
            )
        return Digest(algorithm, encoded)
    if _TARSUM_ALG_RE.fullmatch(algorithm):
        # The label is syntactically TarSum; version/hash support is checked by the
        # verifier (upstream's NewTarSumForLabel), which names the exact problem.
        hash_name = algorithm.split("+", 1)[1]
        expected = _HEX_LENGTHS.get(hash_name)
        if expected is not None and (len(encoded) != expected or not _is_lower_hex(encoded)):
            raise DigestInvalid(
                f"{algorithm} digest must be {expected} lower-case hex characters",
                {"reason": "malformed", "digest": text},
            )
        return Digest(algorithm, encoded)
    raise DigestInvalid(
        f"unsupported digest algorithm {algorithm!r}",
        {"reason": "unsupported", "algorithm": algorithm},
    )


def _is_lower_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def _clip(value: object) -> str:
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


class Hasher(Protocol):
    """A streaming digest computation: feed bytes, then ask for the digest string."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Feed the next bytes of the blob, in order."""

    def result(self) -> str:
        """The full digest (``alg:hex``) of everything fed; call once, at the end."""


class _HashlibHasher:
    __slots__ = ("_algorithm", "_h", "update")

    def __init__(self, algorithm: str) -> None:
        self._algorithm = algorithm
        self._h = hashlib.new(algorithm)
        self.update = self._h.update  # bound method: no Python frame per chunk

    def result(self) -> str:
        return f"{self._algorithm}:{self._h.hexdigest()}"


@dataclass(frozen=True, slots=True)
class VerifierLimits:
    """Bounds on work a verifier may do beyond reading the blob (gzip bombs)."""

    tarsum_max_bytes: int | None = 64 << 30
    tarsum_max_ratio: float | None = 1000.0


class _TarSumHasher:
    __slots__ = ("_ts",)

    def __init__(self, label: str, limits: VerifierLimits) -> None:
        from ingest import tarsum  # local: keeps the engine off the import path of plain digests

        self._ts = tarsum.TarSum(
            label,
            max_decompressed_bytes=limits.tarsum_max_bytes,
            max_ratio=limits.tarsum_max_ratio,
        )

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._ts.update(data)

    def result(self) -> str:
        return self._ts.finish()


def new_verifier(digest: Digest, limits: VerifierLimits | None = None) -> Hasher:
    """A fresh streaming hasher that computes a digest of ``digest``'s kind."""
    if digest.algorithm in _HEX_LENGTHS:
        return _HashlibHasher(digest.algorithm)
    if digest.is_tarsum:
        try:
            return _TarSumHasher(digest.algorithm, limits or VerifierLimits())
        except ImportError as exc:  # engine not installed in this build
            raise TarSumUnsupported(
                "tarsum verification is not available",
                {"reason": "tarsum-unsupported", "label": digest.algorithm},
            ) from exc
    raise DigestInvalid(
        f"unsupported digest algorithm {digest.algorithm!r}",
        {"reason": "unsupported", "algorithm": digest.algorithm},
    )


def check_supported(digest: Digest) -> Digest:
    """``digest`` if this build can verify it, else the error :func:`new_verifier`
    would raise. Builds no hasher: a frontend calls it on every finish."""
    if digest.algorithm in _HEX_LENGTHS:
        return digest
    if digest.is_tarsum:
        try:
            from ingest import tarsum
        except ImportError as exc:  # engine not installed in this build
            raise TarSumUnsupported(
                "tarsum verification is not available",
                {"reason": "tarsum-unsupported", "label": digest.algorithm},
            ) from exc
        tarsum.parse_label(digest.algorithm)
        return digest
    raise DigestInvalid(
        f"unsupported digest algorithm {digest.algorithm!r}",
        {"reason": "unsupported", "algorithm": digest.algorithm},
    )


def new_hasher(algorithm: str = CANONICAL_ALGORITHM) -> Hasher:
    """A plain hashlib-backed hasher (sha256/sha384/sha512)."""
    if algorithm not in _HEX_LENGTHS:
        raise DigestInvalid(
            f"unsupported digest algorithm {algorithm!r}", {"reason": "unsupported"}
        )
    return _HashlibHasher(algorithm)
