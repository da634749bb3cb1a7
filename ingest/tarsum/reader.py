"""Tar headers read from 512-byte blocks the way docker's vendored Go 1.3-era
``archive/tar`` read them (spec §3 and §9, legacy column).

That reader is behind every published v1-era sum, so its quirks are kept: a NUL
typeflag stays NUL, empty PAX values are applied, devmajor/devminor are read only
for types ``3``/``4``, and bytes 345..500 of a GNU header are a name prefix.
:mod:`tarfile` is not used because it changes exactly the values TarSum hashes.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

BLOCK: Final = 512
ZERO_BLOCK: Final = bytes(BLOCK)

#: Go's error texts.
ERR_HEADER: Final = "archive/tar: invalid tar header"
ERR_EOF: Final = "unexpected EOF"

_NUM_CACHE_MAX: Final = 4096
_U64: Final = 1 << 64
_I64_MIN: Final = -(1 << 63)
_I64_LIMIT: Final = 1 << 63
_XATTR: Final = b"SCHILY.xattr."

# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix(345..500); the last 12 bytes are only read for "star".
_HEADER: Final = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


class TarError(Exception):
    """Malformed input: ``name`` is the stable error name, ``message`` Go's text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Header(NamedTuple):
    """The values of one header as the legacy reader returned them.

    The field order is Version0's key order; the TarSum encoders rely on it.
    """

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int


class _NumericCache(dict[bytes, int]):
    """Raw numeric field -> value, parsed on a miss; errors are not cached.

    Modes and owners repeat from header to header, and a hit is one C-level lookup.
    """

    __slots__ = ()

    def __missing__(self, field: bytes) -> int:
        value = parse_numeric(field)
        if len(self) >= _NUM_CACHE_MAX:
            self.clear()
        self[field] = value
        return value


class HeaderReader:
    """Parses header blocks; one per archive (it caches numeric fields)."""

    __slots__ = ("_num",)

    def __init__(self) -> None:
        self._num = _NumericCache()

    def read(self, block: bytes) -> Header:
        """The header in ``block`` (512 bytes, not all zero); raises :class:`TarError`."""
        (f_name, f_mode, f_uid, f_gid, f_size, f_mtime, f_chksum, typeflag, f_link, magic,
         f_uname, f_gname, f_devmajor, f_devminor, f_prefix) = _HEADER.unpack(block)  # fmt: skip
        num = self._num
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
            given = num[f_chksum]
        except TarError:
            given = -1
        if given != unsigned and given != unsigned - 256 * _high_bytes(block):
            raise TarError("bad-checksum", ERR_HEADER)
        mode = num[f_mode]
        uid = num[f_uid]
        gid = num[f_gid]
        size = num[f_size]
        mtime = num[f_mtime]
        # Strings end at the first NUL (cstr inlined: this runs for every header).
        name = f_name.partition(b"\0")[0]
        linkname = f_link.partition(b"\0")[0]
        uname = gname = b""
        devmajor = devminor = 0
        fmt = b""
        if magic[:6] == b"ustar\x00":
            fmt = b"star" if block[508:] == b"tar\x00" else b"posix"
        elif magic == b"ustar  \x00":
            fmt = b"gnu"
        if fmt:  # V7 headers have no magic, and so no uname/gname/devices/prefix
            uname = f_uname.partition(b"\0")[0]
            gname = f_gname.partition(b"\0")[0]
            if typeflag in (b"3", b"4"):
                devmajor = num[f_devmajor]
                devminor = num[f_devminor]
            if fmt == b"star":
                prefix = f_prefix[:131].partition(b"\0")[0]
                num[f_prefix[131:143]]  # atime/ctime: only their validity matters
                num[f_prefix[143:155]]
            else:
                prefix = f_prefix.partition(b"\0")[0]
            if prefix:
                name = prefix + b"/" + name
        if size < 0:
            raise TarError("negative-size", ERR_HEADER)
        # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per entry.
        return tuple.__new__(Header, (
            name, mode, uid, gid, size, mtime, typeflag, linkname, uname, gname, devmajor, devminor,
        ))  # fmt: skip


def _high_bytes(block: bytes) -> int:
    """How many bytes outside the checksum field are >= 0x80 (signed minus unsigned sum)."""
    return sum(1 for b in block[:148] if b >= 0x80) + sum(1 for b in block[156:] if b >= 0x80)


def merge_pax(hdr: Header, records: dict[bytes, bytes]) -> tuple[Header, dict[bytes, bytes]]:
    """``hdr`` with the records of the PAX ``x`` header before it applied, and its xattrs.

    The xattrs are the ``SCHILY.xattr.*`` records, keyed by the rest of the key.
    Empty values are applied (legacy). An unparsable uid/gid/size/atime/mtime/ctime
    is an error (Go's result depended on map order), and so is a ``size`` that
    differs from the header's: Go's re-writer failed on it.
    """
    name, linkname, uname, gname = hdr.name, hdr.linkname, hdr.uname, hdr.gname
    uid, gid, mtime = hdr.uid, hdr.gid, hdr.mtime
    xattrs: dict[bytes, bytes] = {}
    for key, value in records.items():
        if key == b"path":
            name = value
        elif key == b"linkpath":
            linkname = value
        elif key == b"uname":
            uname = value
        elif key == b"gname":
            gname = value
        elif key in (b"uid", b"gid", b"size"):
            parsed = go_parse_int(value)
            if parsed is None:
                raise TarError("bad-pax-number", f"invalid PAX {key.decode()}")
            if key == b"uid":
                uid = parsed
            elif key == b"gid":
                gid = parsed
            elif parsed != hdr.size:
                # The body length comes from the header field, and Go's re-writer
                # fails when it differs from the PAX size it was told.
                raise TarError("pax-size-mismatch", "archive/tar: write too long")
        elif key in (b"mtime", b"atime", b"ctime"):
            t = parse_pax_time(value)
            if t is None:
                raise TarError("bad-pax-number", f"invalid PAX {key.decode()}")
            if key == b"mtime":
                mtime = t
        elif key.startswith(_XATTR):
            xattrs[key[len(_XATTR) :]] = value
    merged = hdr._replace(
        name=name, linkname=linkname, uname=uname, gname=gname, uid=uid, gid=gid, mtime=mtime
    )
    return merged, xattrs


def parse_pax(buf: bytes) -> dict[bytes, bytes]:
    """PAX ``x`` records as the legacy reader parsed them (later keys win)."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(buf)
    while pos < end:
        sp = buf.find(b" ", pos)
        if sp < 0:
            raise TarError("bad-pax-record", ERR_HEADER)
        length = go_parse_int(buf[pos:sp])
        # Lengths the Go code would have sliced out of range (a panic there).
        if length is None or length < sp - pos + 2 or pos + length > end:
            raise TarError("bad-pax-record", ERR_HEADER)
        record = buf[sp + 1 : pos + length - 1]  # the final byte (newline) is not checked
        pos += length
        eq = record.find(b"=")
        if eq < 0:
            raise TarError("bad-pax-record", ERR_HEADER)
        records[record[:eq]] = record[eq + 1 :]
    return records


def cstr(b: bytes) -> bytes:
    """``b`` up to its first NUL (header strings and GNU long name/link records)."""
    return b.partition(b"\0")[0]


def go_parse_int(s: bytes) -> int | None:
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


def parse_numeric(field: bytes) -> int:
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
        raise TarError("bad-number", ERR_HEADER)
    try:
        x = int(s, 8)
    except ValueError:  # digits 8 or 9
        raise TarError("bad-number", ERR_HEADER) from None
    if x >= _U64:
        raise TarError("bad-number", ERR_HEADER)
    return _wrap64(x)


def parse_pax_time(v: bytes) -> int | None:
    """Whole seconds of a PAX time, as ``time.Unix(sec, nsec).Unix()`` gave them."""
    dot = v.find(b".")
    if dot < 0:
        return go_parse_int(v)
    sec = go_parse_int(v[:dot])
    if sec is None:
        return None
    nsec = go_parse_int((v[dot + 1 :] + b"000000000")[:9])
    if nsec is None:
        return None
    # nsec is in (-1e8, 1e9): time.Unix normalises a negative one by borrowing a second.
    return _wrap64(sec - 1) if nsec < 0 else sec
