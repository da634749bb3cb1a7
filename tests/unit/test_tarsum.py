"""TarSum engine: shared upstream vectors, chunking, legacy-reader edge cases, gzip."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import DigestInvalid, TarSumUnsupported
from ingest.tarsum import (
    META_RECORD_CAP,
    TARSUM_VERSIONS,
    TarSum,
    _go_clean,
    _is_clean,
    _legacy_sort,
    get_version_from_tarsum,
    parse_label,
    tarsum_file,
    version_label_for_checksum,
)
from tests.data import TARSUM_VECTORS

VECTOR_DIR = TARSUM_VECTORS


def _load_vectors() -> dict[str, Any]:
    # The vectors are part of the repository: missing ones are a broken checkout.
    data: dict[str, Any] = json.loads((VECTOR_DIR / "vectors.json").read_text())
    return data


VECTORS = _load_vectors()
# Indexed, not .get(..., []): a renamed or missing list is a KeyError when the module is
# collected, never a parametrisation that quietly runs nothing (pyproject also makes an
# empty parameter set a collection error).
MAIN: list[dict[str, Any]] = VECTORS["vectors"]
DERIVED: list[dict[str, Any]] = VECTORS["derived"]["vectors"]
LABEL_ERRORS: list[dict[str, Any]] = VECTORS["label_errors"]


def test_every_vector_list_is_populated() -> None:
    # At least what the vectors held when these tests were written.
    assert len(MAIN) >= 30
    assert len(DERIVED) >= 42
    assert len(LABEL_ERRORS) >= 4
    # The optional flag that test_vector_expected checks: still spelled as it reads it.
    assert sum(v.get("label_accepted_by_NewTarSumForLabel") is False for v in MAIN) >= 4
    assert len(VECTORS["file_sha256"]) >= 21
    version_parsing = VECTORS["version_parsing"]
    for key in ("VersionLabelForChecksum", "GetVersionFromTarsum_ok", "GetVersionFromTarsum_error"):
        assert version_parsing[key], key


def _read(rel: str) -> bytes:
    return (VECTOR_DIR / rel).read_bytes()


def _vector_input(v: dict[str, Any]) -> tuple[bytes, bytes]:
    """(stored file bytes, extra)."""
    extra = _read(v["extra_file"]) if v["extra_file"] is not None else b""
    return _read(v["file"]), extra


def _new(label: str, extra: bytes = b"") -> TarSum:
    """TarSum for any vector label (md5/sha1/... go through the NewTarSumHash analogue)."""
    version, _, hash_name = label.partition("+")
    if hash_name in ("sha256", "sha512"):
        return TarSum(label, extra=extra)
    return TarSum.with_hash(version, hash_name, extra=extra)


def _sum(label: str, data: bytes, extra: bytes = b"", chunks: list[int] | None = None) -> str:
    ts = _new(label, extra)
    if chunks is None:
        ts.update(data)
    else:
        pos = 0
        for size in chunks:
            ts.update(data[pos : pos + size])
            pos += size
        ts.update(memoryview(data)[pos:])
    return ts.finish()


# ------------------------------------------------------------------------ vectors


def test_vector_files_intact() -> None:
    checksums: dict[str, str] = VECTORS["file_sha256"]
    used = {v["file"] for v in MAIN + DERIVED} | {
        v["extra_file"] for v in MAIN + DERIVED if v["extra_file"] is not None
    }
    assert used <= set(checksums), sorted(used - set(checksums))  # every input is checked
    for rel, digest in checksums.items():
        assert hashlib.sha256(_read(rel)).hexdigest() == digest, rel


@pytest.mark.parametrize("v", MAIN, ids=[v["id"] for v in MAIN])
def test_vector_expected(v: dict[str, Any]) -> None:
    data, extra = _vector_input(v)
    assert _sum(v["label"], data, extra) == v["expected"]
    if v["input_transform"] is not None:
        # The stored file is gzip-wrapped: the plain tar gives the same sum.
        assert _sum(v["label"], gzip.decompress(data), extra) == v["expected"]
    if v.get("label_accepted_by_NewTarSumForLabel") is False:
        with pytest.raises(TarSumUnsupported):
            TarSum(v["label"])


@pytest.mark.parametrize("v", MAIN, ids=[v["id"] for v in MAIN])
def test_vector_chunk_independent(v: dict[str, Any]) -> None:
    data, extra = _vector_input(v)
    rng = random.Random(v["id"])
    splittings: list[list[int]] = [[511, 2, 511, 1024], [3] * 40]
    if len(data) <= 16 << 10:
        splittings.append([1] * len(data))
    for _ in range(3):
        splittings.append([rng.randint(0, 700) for _ in range(30)])
    for chunks in splittings:
        assert _sum(v["label"], data, extra, chunks) == v["expected"]


@pytest.mark.parametrize(
    "v", DERIVED, ids=[f"{Path(v['file']).parent.name[:8]}-{v['label']}" for v in DERIVED]
)
def test_derived(v: dict[str, Any]) -> None:
    data, extra = _vector_input(v)
    assert _sum(v["label"], data, extra) == v["expected"]
    assert _sum(v["label"], data, extra, [1] * min(len(data), 3000)) == v["expected"]


@pytest.mark.parametrize("case", LABEL_ERRORS, ids=lambda c: c["label"])
def test_label_errors(case: dict[str, Any]) -> None:
    for call in (lambda: TarSum(case["label"]), lambda: parse_label(case["label"])):
        with pytest.raises(TarSumUnsupported) as info:
            call()
        assert info.value.message == case["error"]
        assert info.value.detail == {"reason": "tarsum-unsupported", "label": case["label"]}
        assert isinstance(info.value, DigestInvalid)


def test_version_parsing() -> None:
    vp = VECTORS["version_parsing"]
    for checksum, label in vp["VersionLabelForChecksum"]:
        assert version_label_for_checksum(checksum) == label
    for text, version in vp["GetVersionFromTarsum_ok"]:
        assert get_version_from_tarsum(text) == version
    for text, message in vp["GetVersionFromTarsum_error"]:
        with pytest.raises(TarSumUnsupported, match=message):
            get_version_from_tarsum(text)


def test_parse_label_exact() -> None:
    assert parse_label("tarsum.v1+sha512") == ("tarsum.v1", "sha512")
    assert set(TARSUM_VERSIONS) == {"tarsum", "tarsum.v1", "tarsum.dev"}
    for bad in ("TARSUM+sha256", " tarsum+sha256", "tarsum+SHA256", "tarsum.v1+sha256:ab", ""):
        with pytest.raises(TarSumUnsupported):
            parse_label(bad)
    with pytest.raises(TarSumUnsupported) as info:
        parse_label('tarsum.v2"\n+sha256')
    assert info.value.message == 'unknown TarSum version name: "tarsum.v2\\"\\n"'


# --------------------------------------------------------- synthetic archive helpers


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def block(
    name: bytes = b"file.txt",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    typeflag: bytes = b"0",
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes = b"",
    raw: dict[int, bytes] | None = None,
    signed_checksum: bool = False,
) -> bytes:
    """One 512-byte header with a valid checksum; ``raw`` patches bytes at offsets."""
    b = bytearray(512)
    b[0:100] = name.ljust(100, b"\0")
    b[100:108] = _octal(mode, 8)
    b[108:116] = _octal(uid, 8)
    b[116:124] = _octal(gid, 8)
    b[124:136] = _octal(size, 12)
    b[136:148] = _octal(mtime, 12)
    b[156:157] = typeflag
    b[157:257] = linkname.ljust(100, b"\0")
    b[257:265] = magic.ljust(8, b"\0")
    b[265:297] = uname.ljust(32, b"\0")
    b[297:329] = gname.ljust(32, b"\0")
    b[329:337] = _octal(devmajor, 8)
    b[337:345] = _octal(devminor, 8)
    b[345:500] = prefix.ljust(155, b"\0")
    for offset, patch in (raw or {}).items():
        b[offset : offset + len(patch)] = patch
    b[148:156] = b" " * 8
    total = sum(b) if not signed_checksum else sum(x - 256 if x >= 128 else x for x in b)
    b[148:156] = b"%06o\x00 " % total
    return bytes(b)


def member(body: bytes = b"", **kw: Any) -> bytes:
    kw.setdefault("size", len(body))
    return block(**kw) + body + b"\0" * (-len(body) % 512)


def pax(records: dict[bytes, bytes], typeflag: bytes = b"x") -> bytes:
    text = b""
    for key, value in records.items():
        rec = b" " + key + b"=" + value + b"\n"
        n = len(rec) + 1
        while len(b"%d" % n) + len(rec) != n:
            n = len(b"%d" % n) + len(rec)
        text += b"%d" % n + rec
    return member(text, name=b"PaxHeader", typeflag=typeflag)


EOA = bytes(1024)


def entry_hex(
    version: str,
    *,
    name: bytes,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    typeflag: bytes = b"0",
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[bytes, bytes] | None = None,
    body: bytes = b"",
) -> str:
    """Independent model of the per-entry sum (spec §4), sha256."""
    fields: list[tuple[bytes, bytes]] = [
        (b"name", name),
        (b"mode", b"%d" % mode),
        (b"uid", b"%d" % uid),
        (b"gid", b"%d" % gid),
        (b"size", b"%d" % size),
        (b"mtime", b"%d" % mtime),
        (b"typeflag", typeflag),
        (b"linkname", linkname),
        (b"uname", uname),
        (b"gname", gname),
        (b"devmajor", b"%d" % devmajor),
        (b"devminor", b"%d" % devminor),
    ]
    if version != "tarsum":
        fields = [f for f in fields if f[0] != b"mtime"]
        fields += sorted((xattrs or {}).items())
    return hashlib.sha256(b"".join(k + v for k, v in fields) + body).hexdigest()


def final(version: str, sums: list[str], extra: bytes = b"") -> str:
    digest = hashlib.sha256(extra + "".join(sorted(sums)).encode()).hexdigest()
    return f"{version}+sha256:{digest}"


def ts(data: bytes, label: str = "tarsum.v1+sha256", extra: bytes = b"") -> str:
    t = TarSum(label, extra=extra)
    t.update(data)
    return t.finish()


def feed(t: TarSum, data: bytes, step: int | None = None) -> str:
    """Feed ``data`` whole or in ``step``-sized pieces and finish."""
    step = step or max(len(data), 1)
    for i in range(0, len(data), step):
        t.update(data[i : i + step])
    return t.finish()


def tar_error(data: bytes, label: str = "tarsum.v1+sha256", **kw: Any) -> str:
    t = TarSum(label, **kw)
    with pytest.raises(DigestInvalid) as info:
        feed(t, data)
    assert info.value.detail["reason"] == "tar-error"
    assert not isinstance(info.value, TarSumUnsupported)
    error: str = info.value.detail["error"]
    return error


# ------------------------------------------------------------------ archive edges

H_EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("data", [b"", bytes(512), bytes(1024), bytes(10240)])
def test_empty_archives(data: bytes) -> None:
    assert ts(data, "tarsum+sha256") == f"tarsum+sha256:{H_EMPTY}"
    assert ts(data, "tarsum.v1+sha256", extra=b"{}") == final("tarsum.v1", [], b"{}")


def test_entry_kinds_and_end_markers() -> None:
    body = b"hello\n"
    arc = (
        member(body, name=b"./a.txt", uname=b"root", gname=b"wheel", mtime=1_400_000_000)
        + member(name=b"dir/", typeflag=b"5", mode=0o755)
        + member(name=b"hard", typeflag=b"1", linkname=b"./a.txt")
        + member(name=b"sym", typeflag=b"2", linkname=b"a.txt")
        + member(name=b"dev", typeflag=b"3", devmajor=1, devminor=3)
        + member(name=b"fifo", typeflag=b"6")
    )
    for version in ("tarsum", "tarsum.v1", "tarsum.dev"):
        sums = [
            entry_hex(version, name=b"./a.txt", size=6, body=body, uname=b"root",
                      gname=b"wheel", mtime=1_400_000_000),
            entry_hex(version, name=b"dir/", typeflag=b"5", mode=0o755),
            entry_hex(version, name=b"hard", typeflag=b"1", linkname=b"./a.txt"),
            entry_hex(version, name=b"sym", typeflag=b"2", linkname=b"a.txt"),
            entry_hex(version, name=b"dev", typeflag=b"3", devmajor=1, devminor=3),
            entry_hex(version, name=b"fifo", typeflag=b"6"),
        ]  # fmt: skip
        want = final(version, sums)
        label = f"{version}+sha256"
        assert ts(arc + EOA, label) == want
        assert ts(arc, label) == want  # no end-of-archive blocks
        assert ts(arc + bytes(512), label) == want  # a single zero block
        assert ts(arc + EOA + b"trailing junk is never read", label) == want
        # EOF inside the padding after the last entry: the legacy reader stops cleanly.
        assert ts(member(body)[: 512 + 6 + 100], label) == final(
            version, [entry_hex(version, name=b"file.txt", size=6, body=body)]
        )


def test_legacy_reader_rows() -> None:
    """The five rows of spec §9, legacy column."""
    # typeflag NUL is hashed as NUL, even for a name ending in '/'.
    arc = member(b"x", name=b"d/", typeflag=b"\0")
    assert ts(arc) == final("tarsum.v1", [
        entry_hex("tarsum.v1", name=b"d/", typeflag=b"\0", size=1, body=b"x")])  # fmt: skip
    # A PAX global header is an ordinary entry, its record text is the body.
    g = pax({b"comment": b"hi"}, typeflag=b"g")
    text = g[512 : 512 + 14]
    assert ts(g + member()) == final("tarsum.v1", [
        entry_hex("tarsum.v1", name=b"PaxHeader", typeflag=b"g", size=14, body=text),
        entry_hex("tarsum.v1", name=b"file.txt"),
    ])  # fmt: skip
    # Empty PAX values are applied: an empty xattr is hashed, an empty path empties the name.
    arc = pax({b"SCHILY.xattr.user.empty": b"", b"path": b""}) + member()
    assert ts(arc) == final("tarsum.v1", [
        entry_hex("tarsum.v1", name=b"", xattrs={b"user.empty": b""})])  # fmt: skip
    # devmajor/devminor are read only for char/block devices.
    arc = member(name=b"f", devmajor=7, devminor=9)
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"f")])
    # Bad octal there is ignored too (the field is never parsed).
    arc = member(name=b"f", raw={329: b"zz"})
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"f")])


def test_pax_and_gnu_meta_records() -> None:
    long = b"d/" + b"n" * 200
    xattrs = {b"user.b": b"\x00\xff", b"security.capability": b"\x01\x02", b"user.a": b"v"}
    arc = (
        pax({b"path": long, b"uid": b"70000000", b"mtime": b"1400000000.987654321",
             b"uname": b"\xc3\xa9l\xc3\xa8ve", b"comment": b"ignored", b"hdrcharset": b"BINARY",
             **{b"SCHILY.xattr." + k: v for k, v in xattrs.items()}})
        + member(b"abc", name=b"short")
        + member(name=b"././@LongLink", typeflag=b"L", size=len(long) + 1)[:512]
        + (long + b"\0").ljust(512, b"\0")
        + member(name=b"x", typeflag=b"K", size=4)[:512] + b"tgt\0".ljust(512, b"\0")
        + member(name=b"trunc", typeflag=b"2", linkname=b"short")
    )  # fmt: skip
    for version in ("tarsum", "tarsum.v1"):
        sums = [
            entry_hex(version, name=long, uid=70000000, mtime=1_400_000_000, size=3,
                      uname="élève".encode(), xattrs=xattrs, body=b"abc"),
            entry_hex(version, name=long, typeflag=b"2", linkname=b"tgt"),
        ]  # fmt: skip
        assert ts(arc, f"{version}+sha256") == final(version, sums)


def test_meta_chain_precedence() -> None:
    def longname(value: bytes, flag: bytes = b"L") -> bytes:
        return member(value + b"\0", name=b"././@LongLink", typeflag=flag)

    # GNU L wraps the rest of the chain: it beats a PAX path, and the first L wins.
    arc = longname(b"first") + longname(b"second") + pax({b"path": b"pax"}) + member()
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"first")])
    # After a PAX header the next header is taken raw: an L there is an entry.
    arc = pax({b"path": b"p"}) + longname(b"body") + member()
    assert ts(arc) == final("tarsum.v1", [
        entry_hex("tarsum.v1", name=b"p", typeflag=b"L", size=5, body=b"body\0"),
        entry_hex("tarsum.v1", name=b"file.txt"),
    ])  # fmt: skip


def test_numbers_and_formats() -> None:
    # GNU base-256: negative 12-byte mtime, large uid (v0 hashes mtime).
    neg = (-(2**33)).to_bytes(12, "big", signed=True)
    big_uid = b"\x80" + (2**40).to_bytes(7, "big")
    arc = member(name=b"n", magic=b"ustar  \x00", raw={136: neg, 108: big_uid})
    assert ts(arc, "tarsum+sha256") == final("tarsum", [
        entry_hex("tarsum", name=b"n", mtime=-(2**33), uid=2**40)])  # fmt: skip
    # Octal with spaces / NULs, and the trim-then-cut-at-NUL quirk.
    arc = member(name=b"n", raw={100: b" 755 \x00\x00\x00", 116: b"\x0012\x003\x00\x00"})
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"n", mode=0o755, gid=10)])
    # Mode with file-type bits is hashed unmasked.
    arc = member(name=b"m", mode=0o100644)
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"m", mode=33188)])
    # V7 header (no magic): uname/gname are not read; USTAR prefix is joined.
    arc = member(name=b"v7", magic=b"", uname=b"root") + member(name=b"n", prefix=b"pre/fix")
    assert ts(arc) == final("tarsum.v1", [
        entry_hex("tarsum.v1", name=b"v7"), entry_hex("tarsum.v1", name=b"pre/fix/n")])  # fmt: skip
    # star format: prefix is 131 bytes, then atime/ctime.
    arc = member(name=b"s", prefix=b"p", raw={476: _octal(5, 12), 508: b"tar\x00"})
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"p/s")])
    # A signed checksum is accepted too.
    arc = member(name=b"\xe9t\xe9", signed_checksum=True)
    assert ts(arc) == final("tarsum.v1", [entry_hex("tarsum.v1", name=b"\xe9t\xe9")])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1400000000.987654321", 1400000000), (b"-1.5", -1), (b"1.-5", 0), (b"7.", 7),
     (b"+3", 3), (b"12", 12)],
)  # fmt: skip
def test_pax_mtime(value: bytes, seconds: int) -> None:
    arc = pax({b"mtime": value}) + member()
    assert ts(arc, "tarsum+sha256") == final("tarsum", [
        entry_hex("tarsum", name=b"file.txt", mtime=seconds)])  # fmt: skip


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (member(b"abc")[:300], "unexpected-eof"),
        (member(b"abc")[:514], "unexpected-eof"),
        (b"F" + member(b"abc")[1:], "bad-checksum"),
        (member(raw={100: b"0009\0"}), "bad-number"),
        (member(raw={124: b"1 2\0"}), "bad-number"),
        (bytes(512) + member(), "data-after-zero-block"),
        (bytes(512) + b"\0" * 100, "unexpected-eof"),
        (member(b"name\0", typeflag=b"L"), "eof-after-meta"),
        (member(b"name\0", typeflag=b"L")[:514], "unexpected-eof"),
        (member(b"name\0", typeflag=b"L")[:520], "eof-after-meta"),
        (pax({b"path": b"p"}), "eof-after-meta"),
        (pax({b"path": b"p"}) + EOA, "eof-after-meta"),
        (member(b"x" * 8, typeflag=b"x"), "bad-pax-record"),
        (member(b"99 path=p\n", typeflag=b"x") + member(), "bad-pax-record"),
        (member(b"2 a=b\n", typeflag=b"x") + member(), "bad-pax-record"),
        (pax({b"uid": b"12x"}) + member(), "bad-pax-number"),
        (pax({b"atime": b".5"}) + member(), "bad-pax-number"),
        (pax({b"size": b"3"}) + member(), "pax-size-mismatch"),
        (member(typeflag=b"L", size=META_RECORD_CAP + 1)[:512], "meta-too-large"),
        (member(raw={124: b"\xff" * 12}), "negative-size"),
        (
            member(raw={100: b"\x80" + bytes(6) + b"\x01"})
            + member(raw={100: b"\x80" + b"\x01" + bytes(6)}),
            "mode-too-large",
        ),
        (_gz(member(b"abc"))[:-9], "gzip-truncated"),
        (_gz(member(b"abc")) + b"junk", "gzip-trailing-garbage"),
        (b"\x1f\x8b" + b"\x00" * 600, "gzip-error"),
        (b"BZh91AY&SY" + bytes(600), "unsupported-compression"),
        (b"\x01", "unexpected-eof"),
    ],
)
def test_tar_errors(data: bytes, error: str) -> None:
    assert tar_error(data) == error
    # And the same in tiny chunks.
    t = TarSum()
    with pytest.raises(DigestInvalid) as info:
        feed(t, data, 7)
    assert info.value.detail == {"reason": "tar-error", "error": error}
    # The failure is sticky.
    with pytest.raises(DigestInvalid):
        t.finish()
    with pytest.raises(DigestInvalid):
        t.update(b"more")


def test_gzip_input() -> None:
    arc = member(b"abc", name=b"a") + member(b"defg", name=b"b") + EOA
    want = ts(arc)
    assert ts(_gz(arc)) == want
    # multi-member gzip, split mid-entry, plus trailing zero padding
    multi = _gz(arc[:700]) + _gz(arc[700:]) + bytes(100)
    assert ts(multi) == want
    assert feed(TarSum(), multi, 1) == want
    # gzip of a tar without end blocks needs the whole stream
    assert ts(_gz(arc[:-1024])) == want


def test_gzip_bomb_is_capped_quickly() -> None:
    raw = member(name=b"zeros", size=512 << 20)[:512]
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(raw)]
    zeros = bytes(1 << 20)
    for _ in range(512):
        parts.append(comp.compress(zeros))
    parts.append(comp.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 1 << 20
    start = time.perf_counter()
    assert tar_error(bomb, max_decompressed_bytes=64 << 20) == "decompression-limit"
    assert tar_error(bomb, max_ratio=100.0) == "decompression-limit"
    assert time.perf_counter() - start < 5
    # Within the caps the same kind of stream is fine.
    small = gzip.compress(member(bytes(4 << 20)), mtime=0)
    assert ts(small) == ts(gzip.decompress(small))
    t = TarSum(max_decompressed_bytes=8 << 20, max_ratio=2000.0)
    t.update(small)
    t.finish()


# --------------------------------------------------------------- duplicates / sort


@pytest.mark.parametrize(
    ("name", "clean"),
    [(b"", b"."), (b".", b"."), (b"./a", b"a"), (b"a/", b"a"), (b"/a", b"/a"),
     (b"//a//b/", b"/a/b"), (b"a/../b", b"b"), (b"../../x", b"../../x"), (b"/../x", b"/x"),
     (b"a/b/..", b"a"), (b"a/./b/.", b"a/b"), (b"..", b".."), (b"a/..", b"."), (b"/", b"/")],
)  # fmt: skip
def test_go_clean(name: bytes, clean: bytes) -> None:
    assert _go_clean(name) == clean
    if _is_clean(name):
        assert name == clean


def test_duplicate_names_keep_all_copies() -> None:
    a1 = member(b"one", name=b"./dup")
    a2 = member(b"two", name=b"dup")
    s1 = entry_hex("tarsum.v1", name=b"./dup", size=3, body=b"one")
    s2 = entry_hex("tarsum.v1", name=b"dup", size=3, body=b"two")
    digest = hashlib.sha256((s1 + s2).encode()).hexdigest()  # archive order, not by sum
    assert ts(a1 + a2) == f"tarsum.v1+sha256:{digest}"
    digest = hashlib.sha256((s2 + s1).encode()).hexdigest()
    assert ts(a2 + a1) == f"tarsum.v1+sha256:{digest}"


def _insertion(items: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
    out = list(items)
    for i in range(1, len(out)):
        j = i
        while j > 0 and (
            out[j][2] < out[j - 1][2] if out[j][1] == out[j - 1][1] else out[j][0] < out[j - 1][0]
        ):
            out[j], out[j - 1] = out[j - 1], out[j]
            j -= 1
    return out


_item = st.tuples(st.sampled_from("0123456789abcdef"), st.sampled_from([b"a", b"b", b"c", b"d"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_item, max_size=120))
def test_legacy_sort_properties(raw: list[tuple[str, bytes]]) -> None:
    items = [(s, n, i) for i, (s, n) in enumerate(raw)]
    got = list(items)
    _legacy_sort(got)
    assert sorted(got) == sorted(items)  # a permutation
    if len(items) <= 7:  # Go sorts these with a plain insertion sort
        assert got == _insertion(items)
    unique = [(f"{i:04x}", b"n%d" % i, i) for i in random.Random(len(raw)).sample(range(999), 60)]
    _legacy_sort(unique)
    assert unique == sorted(unique)


# ---------------------------------------------------------------------- API bits


def test_api_lifecycle(tmp_path: Path) -> None:
    arc = member(b"data") + EOA
    path = tmp_path / "layer.tar"
    path.write_bytes(arc)
    want = ts(arc)
    assert tarsum_file(path) == want
    assert tarsum_file(str(path), chunk_size=5) == want
    assert tarsum_file(io.BytesIO(arc), "tarsum.v1+sha256") == want
    assert tarsum_file(io.BytesIO(_gz(arc)), extra=b"e") == ts(arc, extra=b"e")
    t = TarSum("tarsum.dev+sha512")
    t.update(bytearray(arc))
    out = t.finish()
    assert out.startswith("tarsum.dev+sha512:")
    assert len(out) == len("tarsum.dev+sha512:") + 128
    assert t.finish() == out
    with pytest.raises(RuntimeError):
        t.update(b"")
    assert t.label == "tarsum.dev+sha512"
