"""The push-based TarSum engine: bytes in any chunking -> ``"<version>+<hash>:<hex>"``.

The input is sniffed by magic: gzip goes through :mod:`.inflate`, anything else is
the tar itself. The tar layer is a state machine over 512-byte blocks: it reads each
header (:mod:`.reader`), dispatches it on its typeflag, hashes one entry at a time
and keeps one hex sum and one name per entry, ordered at the end by :mod:`.ordering`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import IO, ClassVar, Final, Protocol

from ingest.errors import DigestInvalid
from ingest.tarsum.inflate import GZIP_MAGIC, GzipInput
from ingest.tarsum.labels import TARSUM_VERSIONS, go_quote, parse_label, unsupported
from ingest.tarsum.ordering import order_sums
from ingest.tarsum.reader import (
    BLOCK,
    ERR_EOF,
    ERR_HEADER,
    ZERO_BLOCK,
    Header,
    HeaderReader,
    TarError,
    cstr,
    merge_pax,
    parse_pax,
)

#: Largest PAX ``x`` / GNU ``L``/``K`` record we buffer (Go >= 1.10 uses the same cap).
META_RECORD_CAP: Final = 1 << 20

_OTHER_COMPRESSION_MAGIC: Final = (b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
# Go's tar re-writer cannot encode a larger mode (ErrFieldTooLong).
_MODE_LIMIT: Final = 8**8

# Parser states.
_S_HEADER: Final = 0
_S_BODY: Final = 1
_S_PAD: Final = 2
_S_META: Final = 3
_S_ZERO: Final = 4  # saw one zero block; the next block decides
_S_END: Final = 5

# The header encodings (spec §4): keys and values with no separators. Version0's
# keys are Header's fields in order; Version1 and VersionDev drop mtime.
_V0_ENCODING: Final = (
    b"name%smode%duid%dgid%dsize%dmtime%dtypeflag%slinkname%suname%sgname%sdevmajor%ddevminor%d"
)
_V1_ENCODING: Final = (
    b"name%smode%duid%dgid%dsize%dtypeflag%slinkname%suname%sgname%sdevmajor%ddevminor%d"
)


class _Hash(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


_HashFactory = Callable[[bytes], _Hash]
_Encoder = Callable[[Header, dict[bytes, bytes]], bytes]


def _encode_v0(hdr: Header, xattrs: dict[bytes, bytes]) -> bytes:
    return _V0_ENCODING % hdr  # xattrs are never hashed in Version0


def _encode_v1(hdr: Header, xattrs: dict[bytes, bytes]) -> bytes:
    enc = _V1_ENCODING % (hdr[:5] + hdr[6:])  # all but mtime
    if xattrs:
        enc += b"".join(k + xattrs[k] for k in sorted(xattrs))
    return enc


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
        "_encode",
        "_error",
        "_extra",
        "_feed",
        "_gzip",
        "_h",
        "_hash_name",
        "_head",
        "_lead",
        "_long_link",
        "_long_name",
        "_max_out",
        "_max_ratio",
        "_meta_buf",
        "_meta_done",
        "_meta_left",
        "_names",
        "_new_hash",
        "_pad_left",
        "_pax",
        "_read_header",
        "_remaining",
        "_result",
        "_state",
        "_sums",
        "_version",
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
            raise unsupported(version, f"unknown TarSum version name: {go_quote(version)}")
        try:
            hashlib.new(hash_name)
        except (ValueError, TypeError):
            raise unsupported(
                hash_name, f"unknown TarSum hash name: {go_quote(hash_name)}"
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
        self._encode: _Encoder = _encode_v0 if version == "tarsum" else _encode_v1
        self._extra = bytes(extra)
        self._max_out = max_out  # gzip caps, for the input layer
        self._max_ratio = max_ratio
        self._error: DigestInvalid | None = None
        self._result: str | None = None
        # input layer
        # The input layer: _sniff until two bytes tell gzip from tar, then the
        # tar layer's _feed_tar or the inflater's feed.
        self._feed: Callable[[bytes | bytearray | memoryview], None] = self._sniff
        self._head = b""  # fewer than two bytes, while sniffing
        self._lead = b""  # the first bytes of a plain input
        self._gzip: GzipInput | None = None
        # tar layer
        self._read_header = HeaderReader().read
        self._state = _S_HEADER
        self._block_buf = bytearray()
        self._h: _Hash | None = None
        self._remaining = 0
        self._pad_left = 0
        self._meta_done: Callable[[bytes], None] | None = None
        self._meta_left = 0
        self._meta_buf = bytearray()
        # Records of a PAX x header, waiting for the header they apply to.
        self._pax: dict[bytes, bytes] | None = None
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._sums: list[str] = []
        self._names: list[bytes] = []

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
            self._feed(data)
        except TarError as exc:
            raise self._fail(exc) from None

    def finish(self) -> str:
        """Complete the sum: ``"<version>+<hash>:<hex>"``. Idempotent."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            self._end_of_input()
        except TarError as exc:
            raise self._fail(exc) from None
        self._result = self._final_sum()
        return self._result

    # --------------------------------------------------------------- input layer

    def _fail(self, exc: TarError) -> DigestInvalid:
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
        if bytes(head[:2]) == GZIP_MAGIC:
            self._gzip = GzipInput(self._feed_tar, self._tar_ended, self._max_out, self._max_ratio)
            self._feed = self._gzip.feed
        else:
            self._lead = bytes(head[:6])  # remembered for a clearer error
            self._feed = self._feed_tar
        self._feed(head)

    def _tar_ended(self) -> bool:
        return self._state == _S_END

    def _end_of_input(self) -> None:
        if self._head:  # too short to be gzip
            self._feed_tar(self._head)
        if self._state == _S_END:
            return
        if self._gzip is not None:
            self._gzip.close()
        state = self._state
        pending_meta = self._meta_pending()
        if state in (_S_HEADER, _S_ZERO):
            if self._block_buf:
                raise TarError("unexpected-eof", ERR_EOF)
            if pending_meta:
                raise TarError("eof-after-meta", ERR_EOF)
        elif state in (_S_BODY, _S_META):
            raise TarError("unexpected-eof", ERR_EOF)
        elif state == _S_PAD and pending_meta:
            raise TarError("eof-after-meta", ERR_EOF)
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
                    take = min(BLOCK - len(block_buf), n - pos)
                    block_buf += mv[pos : pos + take]
                    pos += take
                    if len(block_buf) < BLOCK:
                        return
                    block = bytes(block_buf)
                    block_buf.clear()
                elif n - pos >= BLOCK:
                    block = mv[pos : pos + BLOCK].tobytes()
                    pos += BLOCK
                else:
                    block_buf += mv[pos:]
                    return
                if state == _S_ZERO:
                    if block != ZERO_BLOCK:
                        raise TarError("data-after-zero-block", ERR_HEADER)
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

    def _meta_pending(self) -> bool:
        return self._pax is not None or self._long_name is not None or self._long_link is not None

    def _on_header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            if self._meta_pending():
                raise TarError("eof-after-meta", ERR_HEADER)
            self._state = _S_ZERO
            return
        try:
            hdr = self._read_header(block)
        except TarError as exc:
            # bzip2/xz/zstd input fails the first header's checksum: say what it is.
            if (
                exc.name == "bad-checksum"
                and not self._sums
                and self._lead.startswith(_OTHER_COMPRESSION_MAGIC)
            ):
                raise TarError(
                    "unsupported-compression", "compressed input other than gzip"
                ) from None
            raise
        if self._pax is None:
            self._HANDLERS.get(hdr.typeflag, TarSum._on_entry)(self, hdr)
        else:
            # After a PAX header the legacy reader takes the next header as is
            # (even another x/L/K) and merges the records into it.
            self._on_entry(hdr)

    def _on_entry(self, hdr: Header) -> None:
        """Any header not folded into the next one: hash its encoding, then its body."""
        xattrs: dict[bytes, bytes] = {}
        if self._pax is not None:
            hdr, xattrs = merge_pax(hdr, self._pax)
            self._pax = None
        long_name, long_link = self._long_name, self._long_link
        if long_name is not None or long_link is not None:
            # GNU long name/link records wrap the rest of the header chain, so they
            # override PAX path/linkpath (and the first of several wins).
            hdr = hdr._replace(
                name=hdr.name if long_name is None else long_name,
                linkname=hdr.linkname if long_link is None else long_link,
            )
            self._long_name = self._long_link = None
        if hdr.mode >= _MODE_LIMIT:
            raise TarError("mode-too-large", "archive/tar: header field too long")
        self._h = self._new_hash(self._encode(hdr, xattrs))
        self._names.append(hdr.name)
        size = hdr.size
        self._pad_left = -size % BLOCK
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

    def _on_pax_header(self, hdr: Header) -> None:
        self._start_meta(hdr.size, self._pax_record)

    def _on_long_name(self, hdr: Header) -> None:
        self._start_meta(hdr.size, self._long_name_record)

    def _on_long_link(self, hdr: Header) -> None:
        self._start_meta(hdr.size, self._long_link_record)

    # typeflag -> handler. The legacy reader folds x, L and K records into the
    # header that follows; every other type is an entry whose body is the next
    # `size` bytes, whatever the type (spec §9).
    _HANDLERS: ClassVar[dict[bytes, Callable[[TarSum, Header], None]]] = {
        b"x": _on_pax_header,
        b"L": _on_long_name,
        b"K": _on_long_link,
        # A PAX global header is an ordinary entry: its header fields, and its
        # record text as the body (Go >= 1.10 hashed almost nothing of it).
        b"g": _on_entry,
    }

    def _start_meta(self, size: int, done: Callable[[bytes], None]) -> None:
        if size > META_RECORD_CAP:
            raise TarError("meta-too-large", "archive/tar: meta record too large")
        self._meta_done = done
        self._meta_buf = bytearray()
        self._meta_left = size
        self._pad_left = -size % BLOCK
        if size:
            self._state = _S_META
        else:
            self._end_meta()

    def _end_meta(self) -> None:
        body = bytes(self._meta_buf)
        self._meta_buf = bytearray()
        done = self._meta_done
        assert done is not None
        done(body)
        self._state = _S_PAD if self._pad_left else _S_HEADER

    def _pax_record(self, body: bytes) -> None:
        self._pax = parse_pax(body)

    def _long_name_record(self, body: bytes) -> None:
        if self._long_name is None:
            self._long_name = cstr(body)

    def _long_link_record(self, body: bytes) -> None:
        if self._long_link is None:
            self._long_link = cstr(body)

    # ----------------------------------------------------------------- final sum

    def _final_sum(self) -> str:
        h = self._new_hash(self._extra)
        h.update("".join(order_sums(self._sums, self._names)).encode("ascii"))
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
