"""Digest parsing: the OCI grammar, registered algorithms, and safe storage paths."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import paths
from ingest.digests import Digest, new_hasher, new_verifier, parse_digest
from ingest.errors import DigestInvalid
from ingest.storage.base import check_path

HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("algorithm", sorted(HEX_LENGTHS))
def test_a_registered_algorithm_with_lower_hex_of_the_right_length_parses(algorithm: str) -> None:
    encoded = hashlib.new(algorithm, b"abc").hexdigest()
    d = parse_digest(f"{algorithm}:{encoded}")
    assert d == Digest(algorithm, encoded)
    assert str(d) == f"{algorithm}:{encoded}"
    assert not d.is_tarsum


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + EMPTY_SHA256.upper(),
        "sha256:" + EMPTY_SHA256[:-1] + "A",
        "sha256:" + EMPTY_SHA256[:-1],
        "sha256:" + EMPTY_SHA256 + "0",
        "sha384:" + "0" * 64,
        "sha512:" + "0" * 64,
        "sha256:" + "g" * 64,
        "sha256:" + "=" * 64,
    ],
)
def test_registered_algorithm_with_bad_hex_is_malformed(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest(text)
    assert info.value.detail["reason"] == "malformed"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + EMPTY_SHA256,
        "SHA256:" + EMPTY_SHA256,
        "sha256::" + EMPTY_SHA256,
        "sha256 :" + EMPTY_SHA256,
        "sha256:" + EMPTY_SHA256 + "\n",
        " sha256:" + EMPTY_SHA256,
        "sha256:" + EMPTY_SHA256[:32] + "/" + EMPTY_SHA256[32:],
        "sha256:../../etc/passwd",
        "sha256:..",
        "-sha256:" + EMPTY_SHA256,
        "sha256-:" + EMPTY_SHA256,
        "sha+:abc",
        "sha256:" + "a" * 300,
        "x" * 300,
    ],
)
def test_text_outside_the_grammar_is_malformed(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest(text)
    assert info.value.detail["reason"] == "malformed"
    assert len(info.value.detail["digest"]) <= 80


@pytest.mark.parametrize(
    "text",
    [
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "blake3:abc",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
    ],
)
def test_a_well_formed_digest_of_an_unknown_algorithm_is_unsupported(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest(text)
    assert info.value.detail == {"reason": "unsupported", "algorithm": text.split(":")[0]}


@pytest.mark.parametrize(
    ("text", "algorithm"),
    [
        ("tarsum+sha256:" + EMPTY_SHA256, "tarsum+sha256"),
        ("tarsum.v1+sha256:" + EMPTY_SHA256, "tarsum.v1+sha256"),
        ("tarsum.dev+sha512:" + "e" * 128, "tarsum.dev+sha512"),
    ],
)
def test_tarsum_labels_parse(text: str, algorithm: str) -> None:
    d = parse_digest(text)
    assert d.algorithm == algorithm
    assert d.is_tarsum
    assert str(d) == text


@pytest.mark.parametrize("text", ["tarsum.v1+sha256:" + "0" * 63, "tarsum.dev+sha512:" + "E" * 128])
def test_tarsum_labels_with_bad_hex_are_malformed(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest(text)
    assert info.value.detail["reason"] == "malformed"


@pytest.mark.parametrize("algorithm", sorted(HEX_LENGTHS))
def test_new_verifier_computes_the_same_kind_of_digest(algorithm: str) -> None:
    expected = f"{algorithm}:{hashlib.new(algorithm, b'hello world').hexdigest()}"
    h = new_verifier(parse_digest(expected))
    h.update(b"hello ")
    h.update(memoryview(b"world"))
    assert h.result() == expected


def test_new_hasher_defaults_to_sha256_and_rejects_unknown_algorithms() -> None:
    h = new_hasher()
    h.update(b"")
    assert h.result() == "sha256:" + EMPTY_SHA256
    with pytest.raises(DigestInvalid):
        new_hasher("md5")


_DIGEST_ALPHABET = string.ascii_lowercase[:8] + "ABsh0123456789+._-=:/" + "tarsum"


@st.composite
def grammar_digests(draw: st.DrawFn) -> str:
    component = st.text(alphabet="abcdefsh0123456789", min_size=1, max_size=8)
    parts = draw(st.lists(component, min_size=1, max_size=3))
    seps = draw(st.lists(st.sampled_from("+._-"), min_size=len(parts) - 1, max_size=len(parts) - 1))
    algorithm = parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))
    algorithm = draw(st.sampled_from([algorithm, "sha256", "sha512", "tarsum.v1+sha256"]))
    encoded = draw(st.text(alphabet="0123456789abcdefABF=_-.", min_size=0, max_size=130))
    return f"{algorithm}:{encoded}"


def _assert_safe(d: Digest) -> None:
    for path in (paths.blob_data_path(d), paths.layer_link_path("library/ubuntu", d)):
        assert check_path(path) == path
        assert ".." not in path.split("/")


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=300), st.text(alphabet=_DIGEST_ALPHABET, max_size=140), grammar_digests()
    )
)
def test_any_text_is_rejected_or_maps_to_safe_storage_paths(text: str) -> None:
    try:
        d = parse_digest(text)
    except DigestInvalid as exc:
        reason = exc.detail["reason"]
        d = None
    if d is None:
        assert reason in {"malformed", "unsupported"}
        return
    assert str(d) == text
    assert parse_digest(str(d)) == d
    _assert_safe(d)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64), algorithm=st.sampled_from(sorted(HEX_LENGTHS)))
def test_every_real_digest_parses_and_round_trips(data: bytes, algorithm: str) -> None:
    text = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    d = parse_digest(text)
    assert str(d) == text
    _assert_safe(d)
