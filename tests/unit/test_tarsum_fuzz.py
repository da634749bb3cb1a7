"""Fuzzing TarSum: any input bytes end in a sum or DigestInvalid, quickly."""

from __future__ import annotations

import gzip
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import DigestInvalid
from ingest.tarsum import TarSum
from tests.data import TARSUM_VECTORS

VECTOR_DIR = TARSUM_VECTORS


def _seeds() -> list[bytes]:
    tars = sorted(p for p in VECTOR_DIR.glob("**/*.tar") if p.stat().st_size)
    out = [p.read_bytes() for p in tars]
    gz = VECTOR_DIR / "generated" / "sized-1mib-zeros.tar.gz"
    if gz.is_file():
        out.append(gz.read_bytes())
    return out


SEEDS = _seeds()
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _run(data: bytes, cuts: list[int], label: str = "tarsum.v1+sha256") -> None:
    start = time.perf_counter()
    ts = TarSum(label, max_decompressed_bytes=32 << 20, max_ratio=1000.0)
    out: str | None = None
    failure: DigestInvalid | None = None
    try:
        pos = 0
        for cut in sorted(cuts):
            ts.update(data[pos:cut])
            pos = max(pos, cut)
        ts.update(data[pos:])
        out = ts.finish()
    except DigestInvalid as exc:  # any other exception type fails the test
        failure = exc
    if failure is None:
        assert out is not None
        assert out.startswith(label + ":")
    else:
        assert failure.detail["reason"] == "tar-error"
        assert isinstance(failure.detail["error"], str)
    assert time.perf_counter() - start < 2.0


def _fix_checksums(data: bytearray) -> bytearray:
    # Re-seal every 512-byte block so mutations get past the checksum check.
    for off in range(0, len(data) - 511, 512):
        blk = data[off : off + 512]
        if not any(blk):
            continue
        blk[148:156] = b" " * 8
        data[off + 148 : off + 156] = b"%06o\x00 " % sum(blk)
    return data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    if not SEEDS:
        base = bytearray(draw(st.binary(min_size=512, max_size=2048)))
    else:
        base = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not base:
            break
        at = draw(st.integers(0, len(base) - 1))
        if kind == "flip":
            base[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            base[at] = draw(st.sampled_from([0, 0x20, 0x30, 0x37, 0x38, 0x80, 0xFF, 0x78, 0x4C]))
        elif kind == "truncate":
            del base[at:]
        elif kind == "insert":
            base[at:at] = draw(st.binary(min_size=1, max_size=600))
        else:
            del base[at : at + draw(st.integers(1, 600))]
    if draw(st.booleans()):
        base = _fix_checksums(base)
    data = bytes(base)
    if draw(st.integers(0, 9)) == 0:
        data = gzip.compress(data, mtime=0)
    return data


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=5))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    _run(data, cuts)


@FUZZ
@given(
    st.binary(max_size=1500).map(lambda b: b"\x1f\x8b" + b),
    st.lists(st.integers(0, 1500), max_size=3),
)
def test_random_gzip_like(data: bytes, cuts: list[int]) -> None:
    _run(data, cuts)


@FUZZ
@given(mutated(), st.lists(st.integers(0, 20000), max_size=4), st.sampled_from(
    ["tarsum+sha256", "tarsum.v1+sha256", "tarsum.dev+sha512"]))  # fmt: skip
def test_mutated_vectors(data: bytes, cuts: list[int], label: str) -> None:
    _run(data, cuts, label)


@FUZZ
@given(st.binary(min_size=0, max_size=1200), st.sampled_from([b"x", b"L", b"K", b"g", b"0"]))
def test_random_meta_bodies(body: bytes, typeflag: bytes) -> None:
    hdr = bytearray(512)
    hdr[0:9] = b"PaxHeader"
    hdr[100:108] = b"0000644\0"
    hdr[124:136] = b"%011o\0" % len(body)
    hdr[156:157] = typeflag
    hdr[257:265] = b"ustar\x0000"
    data = bytes(_fix_checksums(hdr)) + body + bytes(-len(body) % 512)
    follower = bytearray(512)
    follower[0:4] = b"next"
    follower[257:265] = b"ustar\x0000"
    _run(data + bytes(_fix_checksums(follower)), [])


def test_seeds_available() -> None:
    assert len(SEEDS) >= 10
