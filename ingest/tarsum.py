"""Bit-exact, streaming Docker TarSum (``tarsum``, ``tarsum.v1``, ``tarsum.dev``).

Implements the algorithm described in ``shared/specs/tarsum.md`` with this project's
decisions (spec §10):

* **Legacy tar-reader semantics**: the archive is read the way docker's vendored
  Go 1.3-era ``archive/tar`` read it (the reader behind every published v1-era sum):
  a NUL typeflag is hashed as NUL, a PAX ``g`` header is an ordinary entry, empty PAX
  values are applied, devmajor/devminor are read only for types ``3``/``4``, there is
  no sparse expansion, and bytes 345..500 of a GNU header are a name prefix.
* **Duplicate names** are ordered by a port of Go's pre-1.6 ``sort.Sort``; duplicate
  detection uses Go ``path.Clean`` (docker 1.12 - 17.x).
* **gzip input is decompressed first** (magic ``1f 8b``, multi-member), with caps.
* Only ``sha256`` and ``sha512`` labels are accepted; uname/gname are hashed (the
  2014-2017 algorithm, not the 2018 one).

Where the legacy Go code would have panicked or produced a map-order-dependent
result, a ``tar-error`` is raised instead; see :class:`TarSum` for the list.
The tar headers are parsed here from 512-byte blocks: :mod:`tarfile` changes exactly
the values TarSum hashes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from typing import IO, Final, Protocol

from ingest.errors import DigestInvalid, TarSumUnsupported

__all__ = [
    "TARSUM_HASHES",
    "TARSUM_VERSIONS",
    "TarSum",
    "get_version_from_tarsum",
    "parse_label",
    "tarsum_file",
    "version_label_for_checksum",
]

#: Every TarSum version name; ``tarsum.dev`` computes exactly what ``tarsum.v1`` does.
TARSUM_VERSIONS: Final[tuple[str, ...]] = ("tarsum", "tarsum.v1", "tarsum.dev")
#: Hash names a label may carry (upstream's label parser knows only these two).
TARSUM_HASHES: Final[tuple[str, ...]] = ("sha256", "sha512")

#: Largest PAX ``x`` / GNU ``L``/``K`` record we buffer (Go >= 1.10 uses the same cap).
META_RECORD_CAP: Final = 1 << 20

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
_GZIP_MAGIC: Final = b"\x1f\x8b"
_OTHER_COMPRESSION_MAGIC: Final = (b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
# Below this much output the ratio cap is not applied: the first inflated block of
# any archive (headers, zero-filled files) can have a huge momentary ratio.
_RATIO_GRACE: Final = 1 << 20
_INFLATE_CHUNK: Final = 1 << 20
_NUM_CACHE_MAX: Final = 4096

_U64: Final = 1 << 64
_I64_MIN: Final = -(1 << 63)
_I64_LIMIT: Final = 1 << 63

# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix(345..500); the last 12 bytes are only read for "star".
_HEADER: Final = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")

# Parser states.
_S_HEADER: Final = 0
_S_BODY: Final = 1
_S_PAD: Final = 2
_S_META: Final = 3
_S_ZERO: Final = 4  # saw one zero block; the next block decides
_S_END: Final = 5

_META_PAX: Final = 1
_META_LONGNAME: Final = 2
_META_LONGLINK: Final = 3

_ERR_HEADER: Final = "archive/tar: invalid tar header"
_ERR_EOF: Final = "unexpected EOF"


class _Hash(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


_HashFactory = Callable[[bytes], _Hash]


class _TarError(Exception):
    """Internal: malformed input; becomes ``DigestInvalid(reason="tar-error")``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


# --------------------------------------------------------------------------- labels


def _go_quote(s: str) -> str:
    """Render ``s`` like Go's ``%q`` (strconv.Quote), for upstream's error texts."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif 0xDC80 <= o <= 0xDCFF:  # surrogateescape'd raw byte: Go shows \xNN
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _unsupported(label: str, message: str) -> TarSumUnsupported:
    return TarSumUnsupported(message, {"reason": "tarsum-unsupported", "label": label})


def parse_label(label: str) -> tuple[str, str]:
    """Split ``"<version>+<hash>"`` into ``(version, hash)`` like ``NewTarSumForLabel``.

    Raises :class:`~ingest.errors.TarSumUnsupported` with upstream's error text for a
    label without ``+``, an unknown version or a hash other than sha256/sha512.
    Matching is exact: no trimming, no case folding, no ``:hex`` suffix allowed.
    """
    version, sep, hash_name = label.partition("+")
    if not sep:
        raise _unsupported(
            label, "tarsum label string should be of the form: {tarsum_version}+{hash_name}"
        )
    if version not in TARSUM_VERSIONS:
        raise _unsupported(label, f"unknown TarSum version name: {_go_quote(version)}")
    if hash_name not in TARSUM_HASHES:
        raise _unsupported(label, f"unknown TarSum hash name: {_go_quote(hash_name)}")
    return version, hash_name


def version_label_for_checksum(checksum: str) -> str:
    """The text before the first ``+``, or ``""`` (upstream ``VersionLabelForChecksum``)."""
    version, sep, _ = checksum.partition("+")
    return version if sep else ""


def get_version_from_tarsum(tarsum: str) -> str:
    """The version name of a label or digest (upstream ``GetVersionFromTarsum``).

    Takes the text before the first ``+`` (or the whole string); raises
    :class:`~ingest.errors.TarSumUnsupported` if it is not a known version.
    """
    version = tarsum.partition("+")[0]
    if version not in TARSUM_VERSIONS:
        raise _unsupported(tarsum, "string does not include a TarSum Version")
    return version


# ------------------------------------------------------------------ Go-compatible parsing


def _go_parse_int(s: bytes) -> int | None:
    """Go ``strconv.ParseInt(s, 10, 64)``: optional sign, ASCII digits, int64 range."""
    digits = s[1:] if s[:1] in (b"+", b"-") else s
    if not digits or not digits.isdigit():
        return None
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > 19:  # also keeps int() clear of its max-digits guard
        return None
    value = -int(digits) if s[:1] == b"-" else int(digits)
    if not _I64_MIN <= value < _I64_LIMIT:
        return None
    return value


def _wrap64(x: int) -> int:
    x &= _U64 - 1
    return x - _U64 if x >= _I64_LIMIT else x


def _parse_numeric(field: bytes) -> int:
    """A header number as the legacy reader read it (octal text or GNU base-256)."""
    if field[0] & 0x80:
        # Base-256: the legacy reader drops the marker bit and keeps the low 64 bits,
        # which still gives negative values for 12-byte two's-complement fields.
        x = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return _wrap64(x)
    s = field.strip(b" \x00")
    if not s:
        return 0
    nul = s.find(0)  # trimmed first, then cut at the first NUL: "12\x0034" is 12
    if nul >= 0:
        s = s[:nul]
    if not s.isdigit():
        raise _TarError("bad-number", _ERR_HEADER)
    try:
        x = int(s, 8)
    except ValueError:  # digits 8 or 9
        raise _TarError("bad-number", _ERR_HEADER) from None
    if x >= _U64:
        raise _TarError("bad-number", _ERR_HEADER)
    return _wrap64(x)


def _cstr(b: bytes) -> bytes:
    nul = b.find(0)
    return b if nul < 0 else b[:nul]


def _parse_pax(buf: bytes) -> dict[bytes, bytes]:
    """PAX ``x`` records as the legacy reader parsed them (later keys win)."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(buf)
    while pos < end:
        sp = buf.find(b" ", pos)
        if sp < 0:
            raise _TarError("bad-pax-record", _ERR_HEADER)
        length = _go_parse_int(buf[pos:sp])
        # Lengths the Go code would have sliced out of range (a panic there).
        if length is None or length < sp - pos + 2 or pos + length > end:
            raise _TarError("bad-pax-record", _ERR_HEADER)
        record = buf[sp + 1 : pos + length - 1]  # the final byte (newline) is not checked
        pos += length
        eq = record.find(b"=")
        if eq < 0:
            raise _TarError("bad-pax-record", _ERR_HEADER)
        records[record[:eq]] = record[eq + 1 :]
    return records


def _parse_pax_time(v: bytes) -> int | None:
    """Whole seconds of a PAX time, as ``time.Unix(sec, nsec).Unix()`` gave them."""
    dot = v.find(b".")
    if dot < 0:
        return _go_parse_int(v)
    sec = _go_parse_int(v[:dot])
    if sec is None:
        return None
    nsec = _go_parse_int((v[dot + 1 :] + b"000000000")[:9])
    if nsec is None:
        return None
    # nsec is in (-1e8, 1e9): time.Unix normalises a negative one by borrowing a second.
    return _wrap64(sec - 1) if nsec < 0 else sec


def _go_clean(p: bytes) -> bytes:
    """Go ``path.Clean`` on bytes (``posixpath.normpath`` differs: it keeps ``//``)."""
    if not p:
        return b"."
    rooted = p[:1] == b"/"
    stack: list[bytes] = []
    for part in p.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if stack and stack[-1] != b"..":
                stack.pop()
            elif not rooted:
                stack.append(part)
            continue
        stack.append(part)
    body = b"/".join(stack)
    if rooted:
        return b"/" + body
    return body or b"."


def _is_clean(p: bytes) -> bool:
    # Cheap test that path.Clean would return p unchanged (false negatives are fine).
    return (
        p not in (b"", b".", b"..")
        and b"//" not in p
        and b"./" not in p
        and not p.endswith((b"/", b"/.", b"/.."))
    )


# ------------------------------------------------------------------- pre-Go-1.6 sort


def _legacy_sort(items: list[tuple[str, bytes, int]]) -> None:
    """In-place port of Go <= 1.5 ``sort.Sort`` with TarSum's duplicate-aware ``Less``.

    ``items`` are ``(hex sum, cleaned name, position)``. Entries with the same name
    compare by position, all others by sum. That relation is not a strict weak
    order, so the exact algorithm (quicksort, ninther, insertion-sort cutoff 7,
    heapsort at the depth limit) decides the result and is reproduced step by step.
    """

    def less(i: int, j: int) -> bool:
        a, b = items[i], items[j]
        if a[1] == b[1]:
            return a[2] < b[2]
        return a[0] < b[0]

    def swap(i: int, j: int) -> None:
        items[i], items[j] = items[j], items[i]

    def insertion_sort(a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and less(j, j - 1):
                swap(j, j - 1)
                j -= 1

    def sift_down(lo: int, hi: int, first: int) -> None:
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and less(first + child, first + child + 1):
                child += 1
            if not less(first + root, first + child):
                return
            swap(first + root, first + child)
            root = child

    def heap_sort(a: int, b: int) -> None:
        first, hi = a, b - a
        for i in range((hi - 1) // 2, -1, -1):
            sift_down(i, hi, first)
        for i in range(hi - 1, -1, -1):
            swap(first, first + i)
            sift_down(0, i, first)

    def median_of_three(m1: int, m0: int, m2: int) -> None:
        # Leaves the median of the three in m1.
        if less(m1, m0):
            swap(m1, m0)
        if less(m2, m1):
            swap(m2, m1)
            if less(m1, m0):
                swap(m1, m0)

    def swap_range(a: int, b: int, n: int) -> None:
        for i in range(n):
            swap(a + i, b + i)

    def do_pivot(lo: int, hi: int) -> tuple[int, int]:
        m = lo + (hi - lo) // 2
        if hi - lo > 40:
            s = (hi - lo) // 8
            median_of_three(lo, lo + s, lo + 2 * s)
            median_of_three(m, m - s, m + s)
            median_of_three(hi - 1, hi - 1 - s, hi - 1 - 2 * s)
        median_of_three(lo, m, hi - 1)
        pivot = lo
        a, b, c, d = lo + 1, lo + 1, hi, hi
        while True:
            while b < c:
                if less(b, pivot):
                    b += 1
                elif not less(pivot, b):
                    swap(a, b)
                    a += 1
                    b += 1
                else:
                    break
            while b < c:
                if less(pivot, c - 1):
                    c -= 1
                elif not less(c - 1, pivot):
                    swap(c - 1, d - 1)
                    c -= 1
                    d -= 1
                else:
                    break
            if b >= c:
                break
            swap(b, c - 1)
            b += 1
            c -= 1
        n = min(b - a, a - lo)
        swap_range(lo, b - n, n)
        n = min(hi - d, d - c)
        swap_range(c, hi - n, n)
        return lo + b - a, hi - (d - c)

    def quick_sort(a: int, b: int, max_depth: int) -> None:
        while b - a > 7:
            if max_depth == 0:
                heap_sort(a, b)
                return
            max_depth -= 1
            mlo, mhi = do_pivot(a, b)
            if mlo - a < b - mhi:
                quick_sort(a, mlo, max_depth)
                a = mhi
            else:
                quick_sort(mhi, b, max_depth)
                b = mlo
        if b - a > 1:
            insertion_sort(a, b)

    n = len(items)
    quick_sort(0, n, 2 * n.bit_length())


# ------------------------------------------------------------------------- TarSum


def _hash_factory(hash_name: str) -> _HashFactory:
    if hash_name == "sha256":
        return hashlib.sha256
    if hash_name == "sha512":
        return hashlib.sha512
    hashlib.new(hash_name)  # raises ValueError for an unknown name

    def make(data: bytes) -> _Hash:
        return hashlib.new(hash_name, data)

    return make


class TarSum:
    """Push-based, one-pass TarSum over a byte stream.

    Feed the raw blob with :meth:`update` in any chunking, then call :meth:`finish`.
    Memory stays bounded: one 512-byte block, one PAX/GNU meta record (at most
    :data:`META_RECORD_CAP`) and one hex sum plus name per entry.

    Malformed input raises :class:`~ingest.errors.DigestInvalid` with
    ``detail = {"reason": "tar-error", "error": <name>}``; the object then stays
    failed. Besides what the Go reader rejects (truncation, bad checksums, bad
    numbers, data after a zero block, EOF inside or right after a meta record),
    these are errors because upstream either failed in its tar re-writer or had no
    deterministic result: a PAX ``size`` differing from the header's size field
    (``pax-size-mismatch``), a mode too large for the writer (``mode-too-large``),
    an unparsable PAX uid/gid/size/atime/mtime/ctime (``bad-pax-number``), a
    negative size (``negative-size``), a meta record over the cap
    (``meta-too-large``). gzip problems are ``gzip-error``, ``gzip-truncated``,
    ``gzip-trailing-garbage`` and ``decompression-limit``; bzip2/xz/zstd input is
    ``unsupported-compression``.

    Like Go's reader, EOF inside the padding after the last entry ends the archive
    cleanly, and everything after the end-of-archive marker is ignored.
    """

    __slots__ = (
        "_block_buf",
        "_cache",
        "_dec_in",
        "_dec_out",
        "_error",
        "_extra",
        "_gz_between",
        "_gz_pending",
        "_h",
        "_hash_name",
        "_head",
        "_long_link",
        "_long_name",
        "_max_out",
        "_max_ratio",
        "_meta_buf",
        "_meta_kind",
        "_meta_left",
        "_mode",
        "_names",
        "_new_hash",
        "_pad_left",
        "_pax",
        "_raw_next",
        "_remaining",
        "_result",
        "_state",
        "_sums",
        "_v0",
        "_version",
        "_zd",
    )

    def __init__(
        self,
        label: str = "tarsum.v1+sha256",
        *,
        extra: bytes = b"",
        max_decompressed_bytes: int | None = None,
        max_ratio: float | None = None,
    ) -> None:
        version, hash_name = parse_label(label)
        self._setup(version, hash_name, extra, max_decompressed_bytes, max_ratio)

    @classmethod
    def with_hash(
        cls,
        version: str,
        hash_name: str,
        *,
        extra: bytes = b"",
        max_decompressed_bytes: int | None = None,
        max_ratio: float | None = None,
    ) -> TarSum:
        """Any :mod:`hashlib` algorithm, like upstream ``NewTarSumHash`` (for tests/interop).

        Verifiers must use the label constructor, which accepts only sha256/sha512.
        """
        if version not in TARSUM_VERSIONS:
            raise _unsupported(version, f"unknown TarSum version name: {_go_quote(version)}")
        try:
            hashlib.new(hash_name)
        except (ValueError, TypeError):
            raise _unsupported(
                hash_name, f"unknown TarSum hash name: {_go_quote(hash_name)}"
            ) from None
        self = cls.__new__(cls)
        self._setup(version, hash_name, extra, max_decompressed_bytes, max_ratio)
        return self

    def _setup(
        self,
        version: str,
        hash_name: str,
        extra: bytes,
        max_out: int | None,
        max_ratio: float | None,
    ) -> None:
        self._version = version
        self._hash_name = hash_name
        self._new_hash = _hash_factory(hash_name)
        self._v0 = version == "tarsum"
        self._extra = bytes(extra)
        self._max_out = max_out
        self._max_ratio = max_ratio
        self._error: DigestInvalid | None = None
        self._result: str | None = None
        # input layer
        self._mode = 0  # 0 undecided, 1 plain tar, 2 gzip
        self._head = b""
        self._zd: zlib._Decompress | None = None
        self._gz_between = False
        self._gz_pending = b""
        self._dec_in = 0
        self._dec_out = 0
        # tar layer
        self._state = _S_HEADER
        self._block_buf = bytearray()
        self._h: _Hash | None = None
        self._remaining = 0
        self._pad_left = 0
        self._meta_kind = 0
        self._meta_left = 0
        self._meta_buf = bytearray()
        self._pax: dict[bytes, bytes] | None = None
        self._raw_next = False
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._sums: list[str] = []
        self._names: list[bytes] = []
        self._cache: dict[bytes, int] = {}

    @property
    def label(self) -> str:
        """``"<version>+<hash>"``."""
        return f"{self._version}+{self._hash_name}"

    # ----------------------------------------------------------------- public API

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the blob (any size, including empty).

        Raises :class:`~ingest.errors.DigestInvalid` (``tar-error``) as soon as the
        input is known to be malformed, and :class:`RuntimeError` after :meth:`finish`.
        """
        if self._error is not None:
            raise self._error
        if self._result is not None:
            raise RuntimeError("TarSum.update() called after finish()")
        if self._state == _S_END:
            return
        try:
            mode = self._mode
            if mode == 1:
                self._feed_tar(data)
            elif mode == 2:
                self._feed_gzip(data)
            else:
                self._sniff(data)
        except _TarError as exc:
            raise self._fail(exc) from None

    def finish(self) -> str:
        """Complete the sum: ``"<version>+<hash>:<hex>"``. Idempotent."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            self._end_of_input()
        except _TarError as exc:
            raise self._fail(exc) from None
        self._result = self._final_sum()
        return self._result

    # --------------------------------------------------------------- input layer

    def _fail(self, exc: _TarError) -> DigestInvalid:
        self._error = DigestInvalid(
            f"tarsum: {exc.message}", {"reason": "tar-error", "error": exc.name}
        )
        return self._error

    def _sniff(self, data: bytes | bytearray | memoryview) -> None:
        # Compression is recognised by magic, so wait for the first two bytes.
        head = self._head + bytes(data) if self._head else data
        if len(head) < 2:
            self._head = bytes(head)
            return
        self._head = b""
        if bytes(head[:2]) == _GZIP_MAGIC:
            self._mode = 2
            self._zd = zlib.decompressobj(31)
            self._feed_gzip(head)
        else:
            self._mode = 1
            if bytes(head[:6]).startswith(_OTHER_COMPRESSION_MAGIC):
                self._head = bytes(head[:6])  # remembered for a clearer error
            self._feed_tar(head)

    def _feed_gzip(self, data: bytes | bytearray | memoryview) -> None:
        buf: bytes | bytearray | memoryview = data
        while buf and self._state != _S_END:
            zd = self._zd
            if zd is None:
                buf = self._next_member(buf)
                continue
            while True:
                try:
                    out = zd.decompress(buf, _INFLATE_CHUNK)
                except zlib.error as exc:
                    raise _TarError("gzip-error", f"gzip: {exc}") from None
                tail = zd.unconsumed_tail
                self._dec_in += len(buf) - len(tail) - len(zd.unused_data)
                if out:
                    self._dec_out += len(out)
                    self._check_caps()
                    self._feed_tar(out)
                    if self._state == _S_END:
                        return
                buf = tail
                if zd.eof or (not buf and len(out) < _INFLATE_CHUNK):
                    break
            if zd.eof:
                self._zd = None
                self._gz_between = True
                buf = zd.unused_data

    def _next_member(self, buf: bytes | bytearray | memoryview) -> bytes:
        # Between gzip members: another member, zero padding, or garbage.
        pending = self._gz_pending + bytes(buf)
        if len(pending) < 2:
            self._gz_pending = pending
            return b""
        self._gz_pending = b""
        if pending[:2] == _GZIP_MAGIC:
            self._zd = zlib.decompressobj(31)
            self._gz_between = False
            return pending
        if pending.count(0) == len(pending):
            return b""
        raise _TarError("gzip-trailing-garbage", "gzip: invalid data after the last member")

    def _check_caps(self) -> None:
        out = self._dec_out
        if self._max_out is not None and out > self._max_out:
            raise _TarError(
                "decompression-limit", f"decompressed size exceeds {self._max_out} bytes"
            )
        if (
            self._max_ratio is not None
            and out > _RATIO_GRACE
            and out > self._max_ratio * max(self._dec_in, 1)
        ):
            raise _TarError("decompression-limit", f"compression ratio exceeds {self._max_ratio:g}")

    def _end_of_input(self) -> None:
        if self._mode == 0 and self._head:
            self._mode = 1
            self._feed_tar(self._head)
        if self._state == _S_END:
            return
        if self._mode == 2:
            if self._zd is not None:
                raise _TarError("gzip-truncated", "gzip: unexpected EOF")
            if self._gz_pending and self._gz_pending.count(0) != len(self._gz_pending):
                raise _TarError("gzip-trailing-garbage", "gzip: invalid data after the last member")
        state = self._state
        pending_meta = self._raw_next or self._long_name is not None or self._long_link is not None
        if state in (_S_HEADER, _S_ZERO):
            if self._block_buf:
                raise _TarError("unexpected-eof", _ERR_EOF)
            if pending_meta:
                raise _TarError("eof-after-meta", _ERR_EOF)
        elif state in (_S_BODY, _S_META):
            raise _TarError("unexpected-eof", _ERR_EOF)
        elif state == _S_PAD and pending_meta:
            raise _TarError("eof-after-meta", _ERR_EOF)
        self._state = _S_END

    # ----------------------------------------------------------------- tar layer

    def _feed_tar(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = memoryview(mv.tobytes())
        n = len(mv)
        pos = 0
        block_buf = self._block_buf
        while pos < n:
            state = self._state
            if state == _S_BODY:
                rem = self._remaining
                h = self._h
                assert h is not None
                if n - pos < rem:
                    h.update(mv[pos:])
                    self._remaining = rem - (n - pos)
                    return
                h.update(mv[pos : pos + rem])
                pos += rem
                self._end_entry()
            elif state in (_S_HEADER, _S_ZERO):
                if block_buf:
                    take = min(_BLOCK - len(block_buf), n - pos)
                    block_buf += mv[pos : pos + take]
                    pos += take
                    if len(block_buf) < _BLOCK:
                        return
                    block = bytes(block_buf)
                    block_buf.clear()
                elif n - pos >= _BLOCK:
                    block = mv[pos : pos + _BLOCK].tobytes()
                    pos += _BLOCK
                else:
                    block_buf += mv[pos:]
                    return
                if state == _S_ZERO:
                    if block != _ZERO_BLOCK:
                        raise _TarError("data-after-zero-block", _ERR_HEADER)
                    self._state = _S_END
                    return
                self._on_header(block)
            elif state == _S_PAD:
                take = min(self._pad_left, n - pos)
                pos += take
                self._pad_left -= take
                if not self._pad_left:
                    self._state = _S_HEADER
            elif state == _S_META:
                take = min(self._meta_left, n - pos)
                self._meta_buf += mv[pos : pos + take]
                pos += take
                self._meta_left -= take
                if not self._meta_left:
                    self._end_meta()
            else:  # _S_END: the rest of the input is never read
                return

    def _num(self, field: bytes) -> int:
        cache = self._cache
        value = cache.get(field)
        if value is None:
            value = _parse_numeric(field)
            if len(cache) >= _NUM_CACHE_MAX:
                cache.clear()
            cache[field] = value
        return value

    def _on_header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            if self._raw_next or self._long_name is not None or self._long_link is not None:
                raise _TarError("eof-after-meta", _ERR_HEADER)
            self._state = _S_ZERO
            return
        (
            f_name,
            f_mode,
            f_uid,
            f_gid,
            f_size,
            f_mtime,
            f_chksum,
            typeflag,
            f_link,
            magic,
            f_uname,
            f_gname,
            f_devmajor,
            f_devminor,
            f_prefix,
        ) = _HEADER.unpack(block)

        # Checksum: the unsigned byte sum with the field read as spaces; Go also
        # accepts the signed sum. adler32's low half is 1 + the byte sum, exact for
        # 256-byte halves (max 65280 < 65521), and much cheaper than sum() here.
        unsigned = (
            (zlib.adler32(block[:256]) & 0xFFFF)
            + (zlib.adler32(block[256:]) & 0xFFFF)
            - 2
            - sum(f_chksum)
            + 256
        )
        try:
            given = self._num(f_chksum)
        except _TarError:
            given = -1
        if given != unsigned:
            high = sum(1 for b in block[:148] if b >= 0x80) + sum(
                1 for b in block[156:] if b >= 0x80
            )
            if given != unsigned - 256 * high:
                if self._sums == [] and self._head.startswith(_OTHER_COMPRESSION_MAGIC):
                    raise _TarError("unsupported-compression", "compressed input other than gzip")
                raise _TarError("bad-checksum", _ERR_HEADER)

        num = self._num
        mode = num(f_mode)
        uid = num(f_uid)
        gid = num(f_gid)
        size = num(f_size)
        mtime = num(f_mtime)
        name = _cstr(f_name)
        linkname = _cstr(f_link)
        uname = gname = b""
        devmajor = devminor = 0
        fmt = b""
        if magic[:6] == b"ustar\x00":
            fmt = b"star" if block[508:] == b"tar\x00" else b"posix"
        elif magic == b"ustar  \x00":
            fmt = b"gnu"
        if fmt:
            uname = _cstr(f_uname)
            gname = _cstr(f_gname)
            if typeflag in (b"3", b"4"):
                devmajor = num(f_devmajor)
                devminor = num(f_devminor)
            if fmt == b"star":
                prefix = _cstr(f_prefix[:131])
                num(f_prefix[131:143])  # atime/ctime: only their validity matters
                num(f_prefix[143:155])
            else:
                prefix = _cstr(f_prefix)
            if prefix:
                name = prefix + b"/" + name
        if size < 0:
            raise _TarError("negative-size", _ERR_HEADER)

        if not self._raw_next:
            kind = 0
            if typeflag == b"x":
                kind = _META_PAX
            elif typeflag == b"L":
                kind = _META_LONGNAME
            elif typeflag == b"K":
                kind = _META_LONGLINK
            if kind:
                if size > META_RECORD_CAP:
                    raise _TarError("meta-too-large", "archive/tar: meta record too large")
                self._meta_kind = kind
                self._meta_buf = bytearray()
                self._meta_left = size
                self._pad_left = -size % _BLOCK
                if size:
                    self._state = _S_META
                else:
                    self._end_meta()
                return

        xattrs: dict[bytes, bytes] | None = None
        pax = self._pax
        if pax is not None:
            # After a PAX header the legacy reader takes the next header as is
            # (even another x/L/K) and merges the records into it.
            self._pax = None
            self._raw_next = False
            for key, value in pax.items():
                if key == b"path":
                    name = value
                elif key == b"linkpath":
                    linkname = value
                elif key == b"uname":
                    uname = value
                elif key == b"gname":
                    gname = value
                elif key in (b"uid", b"gid", b"size"):
                    parsed = _go_parse_int(value)
                    if parsed is None:
                        raise _TarError("bad-pax-number", f"invalid PAX {key.decode()}")
                    if key == b"uid":
                        uid = parsed
                    elif key == b"gid":
                        gid = parsed
                    elif parsed != size:
                        # Go's re-writer fails when the body length (taken from the
                        # header field) differs from the PAX size it was told.
                        raise _TarError("pax-size-mismatch", "archive/tar: write too long")
                elif key in (b"mtime", b"atime", b"ctime"):
                    t = _parse_pax_time(value)
                    if t is None:
                        raise _TarError("bad-pax-number", f"invalid PAX {key.decode()}")
                    if key == b"mtime":
                        mtime = t
                elif key.startswith(b"SCHILY.xattr."):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[key[13:]] = value
        # GNU long name/link records wrap the rest of the header chain, so they
        # override PAX path/linkpath (and the first of several wins).
        if self._long_name is not None:
            name = self._long_name
            self._long_name = None
        if self._long_link is not None:
            linkname = self._long_link
            self._long_link = None
        if mode >= 8**8:
            # Go's tar re-writer cannot encode it (ErrFieldTooLong).
            raise _TarError("mode-too-large", "archive/tar: header field too long")

        if self._v0:
            enc = (
                b"name%smode%duid%dgid%dsize%dmtime%dtypeflag%slinkname%suname%sgname%s"
                b"devmajor%ddevminor%d"
                % (name, mode, uid, gid, size, mtime, typeflag, linkname, uname, gname,
                   devmajor, devminor)
            )  # fmt: skip
        else:
            enc = (
                b"name%smode%duid%dgid%dsize%dtypeflag%slinkname%suname%sgname%s"
                b"devmajor%ddevminor%d"
                % (name, mode, uid, gid, size, typeflag, linkname, uname, gname,
                   devmajor, devminor)
            )  # fmt: skip
            if xattrs:
                enc += b"".join(k + xattrs[k] for k in sorted(xattrs))
        self._h = self._new_hash(enc)
        self._names.append(name)
        self._pad_left = -size % _BLOCK
        if size:
            self._remaining = size
            self._state = _S_BODY
        else:
            self._end_entry()

    def _end_entry(self) -> None:
        h = self._h
        assert h is not None
        self._sums.append(h.hexdigest())
        self._h = None
        self._state = _S_PAD if self._pad_left else _S_HEADER

    def _end_meta(self) -> None:
        body = bytes(self._meta_buf)
        self._meta_buf = bytearray()
        kind = self._meta_kind
        if kind == _META_PAX:
            self._pax = _parse_pax(body)
            self._raw_next = True
        elif kind == _META_LONGNAME:
            if self._long_name is None:
                self._long_name = _cstr(body)
        elif self._long_link is None:
            self._long_link = _cstr(body)
        self._state = _S_PAD if self._pad_left else _S_HEADER

    # ----------------------------------------------------------------- final sum

    def _final_sum(self) -> str:
        sums = self._sums
        seen: set[bytes] = set()
        cleaned: list[bytes] = []
        dups = False
        for name in self._names:
            c = name if _is_clean(name) else _go_clean(name)
            if c in seen:
                dups = True
            seen.add(c)
            cleaned.append(c)
        if dups:
            items = [(s, c, i) for i, (s, c) in enumerate(zip(sums, cleaned, strict=True))]
            _legacy_sort(items)
            ordered = [item[0] for item in items]
        else:
            # Without duplicates Less is a plain string order: any sort gives this.
            ordered = sorted(sums)
        h = self._new_hash(self._extra)
        h.update("".join(ordered).encode("ascii"))
        return f"{self._version}+{self._hash_name}:{h.hexdigest()}"


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def tarsum_file(
    path_or_binary_stream: str | os.PathLike[str] | IO[bytes] | _Readable,
    label: str = "tarsum.v1+sha256",
    extra: bytes = b"",
    chunk_size: int = 1 << 20,
    *,
    max_decompressed_bytes: int | None = None,
    max_ratio: float | None = None,
) -> str:
    """TarSum of a file (by path) or of a binary stream read to its end."""
    ts = TarSum(
        label, extra=extra, max_decompressed_bytes=max_decompressed_bytes, max_ratio=max_ratio
    )
    if isinstance(path_or_binary_stream, str | os.PathLike):
        with open(path_or_binary_stream, "rb") as f:
            _pump(f, ts, chunk_size)
    else:
        _pump(path_or_binary_stream, ts, chunk_size)
    return ts.finish()


def _pump(stream: IO[bytes] | _Readable, ts: TarSum, chunk_size: int) -> None:
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        while True:
            got = readinto(view)
            if not got:
                return
            ts.update(view[:got])
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            return
        ts.update(chunk)
