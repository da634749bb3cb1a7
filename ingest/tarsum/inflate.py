"""The gzip input layer: a push-based, multi-member inflater with bomb caps.

TarSum upstream never decompressed; this project hashes the tar inside a gzip
stream (spec §10, decision 3), because v1-era layers were uploaded compressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

from ingest.tarsum.reader import TarError

GZIP_MAGIC: Final = b"\x1f\x8b"
# Below this much output the ratio cap is not applied: the first inflated block of
# any archive (headers, zero-filled files) can have a huge momentary ratio.
_RATIO_GRACE: Final = 1 << 20
_INFLATE_CHUNK: Final = 1 << 20


class GzipInput:
    """Inflates gzip members into ``sink`` until ``finished()`` says the tar ended.

    After the last member only zero padding may follow. Raises :class:`TarError`:
    ``gzip-error``, ``gzip-truncated``, ``gzip-trailing-garbage`` and, past
    ``max_out`` bytes of output or a ``max_ratio`` output/input ratio,
    ``decompression-limit``.
    """

    __slots__ = (
        "_dec_in",
        "_dec_out",
        "_finished",
        "_max_out",
        "_max_ratio",
        "_pending",
        "_sink",
        "_zd",
    )

    def __init__(
        self,
        sink: Callable[[bytes], None],
        finished: Callable[[], bool],
        max_out: int | None,
        max_ratio: float | None,
    ) -> None:
        self._sink = sink
        self._finished = finished
        self._max_out = max_out
        self._max_ratio = max_ratio
        self._zd: zlib._Decompress | None = zlib.decompressobj(31)
        self._pending = b""  # bytes after a member, too few to tell what follows
        self._dec_in = 0
        self._dec_out = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Inflate the next piece of the compressed stream (any size)."""
        buf: bytes | bytearray | memoryview = data
        finished = self._finished
        while buf and not finished():
            zd = self._zd
            if zd is None:
                buf = self._next_member(buf)
                continue
            while True:
                try:
                    out = zd.decompress(buf, _INFLATE_CHUNK)
                except zlib.error as exc:
                    raise TarError("gzip-error", f"gzip: {exc}") from None
                tail = zd.unconsumed_tail
                self._dec_in += len(buf) - len(tail) - len(zd.unused_data)
                if out:
                    self._dec_out += len(out)
                    self._check_caps()
                    self._sink(out)
                    if finished():
                        return
                buf = tail
                if zd.eof or (not buf and len(out) < _INFLATE_CHUNK):
                    break
            if zd.eof:
                self._zd = None
                buf = zd.unused_data

    def close(self) -> None:
        """End of input: a member cut short, or garbage after the last, is an error."""
        if self._zd is not None:
            raise TarError("gzip-truncated", "gzip: unexpected EOF")
        if self._pending and self._pending.count(0) != len(self._pending):
            raise TarError("gzip-trailing-garbage", "gzip: invalid data after the last member")

    def _next_member(self, buf: bytes | bytearray | memoryview) -> bytes:
        # Between gzip members: another member, zero padding, or garbage.
        pending = self._pending + bytes(buf)
        if len(pending) < 2:
            self._pending = pending
            return b""
        self._pending = b""
        if pending[:2] == GZIP_MAGIC:
            self._zd = zlib.decompressobj(31)
            return pending
        if pending.count(0) == len(pending):
            return b""
        raise TarError("gzip-trailing-garbage", "gzip: invalid data after the last member")

    def _check_caps(self) -> None:
        out = self._dec_out
        if self._max_out is not None and out > self._max_out:
            raise TarError(
                "decompression-limit", f"decompressed size exceeds {self._max_out} bytes"
            )
        if (
            self._max_ratio is not None
            and out > _RATIO_GRACE
            and out > self._max_ratio * max(self._dec_in, 1)
        ):
            raise TarError("decompression-limit", f"compression ratio exceeds {self._max_ratio:g}")
