"""A minimal keep-alive HTTP/1.1 client on a raw socket, for benchmarks.

Why not httpx/requests: on loopback, their per-request CPU (~3 ms for httpx)
would dominate small-blob workloads and measure the client instead of the server.
This client costs roughly 0.1-0.3 ms of CPU per request: one ``sendall`` for the
head (plus the body when it is small), ``readline`` for the response head and
``readinto`` for the body.

One :class:`Connection` per thread; it reconnects lazily after the server closed
the connection (``Connection: close`` or EOF between requests).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Connection", "HTTPError", "Response", "upload_target"]

#: Bodies up to this size are sent in the same ``sendall`` as the head.
_COALESCE = 256 << 10
#: Response bodies are read in slices of this size when streamed to a sink.
_READ_CHUNK = 1 << 20
_MAX_HEAD = 64 << 10

Body = bytes | bytearray | memoryview
Sink = Callable[[memoryview], None]


class HTTPError(OSError):
    """A transport-level or protocol-level failure (not an HTTP error status)."""


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Bytes of body received (also when streamed to a sink instead of kept).
    length: int = 0

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def upload_target(location: str, digest: str | None = None) -> str:
    """The request target for a Location header (absolute or relative), with
    ``digest=`` appended when given."""
    if location.startswith(("http://", "https://")):
        parts = urlsplit(location)
        target = parts.path + ("?" + parts.query if parts.query else "")
    else:
        target = location
    if digest is not None:
        target += ("&" if "?" in target else "?") + "digest=" + digest
    return target


class Connection:
    """One persistent HTTP/1.1 connection to ``host:port`` (not thread-safe)."""

    def __init__(self, host: str, port: int, *, timeout: float = 300.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._host_header = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self.requests = 0
        self.connects = 0

    # -- connection management ----------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise HTTPError(f"connect to {self.host}:{self.port} failed: {exc}") from exc
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = s
        self._buf = bytearray()
        self.connects += 1
        return s

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = bytearray()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------

    def _fill(self, sock: socket.socket) -> bool:
        chunk = sock.recv(_READ_CHUNK)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _read_head(self, sock: socket.socket) -> tuple[int, str, dict[str, str]]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > _MAX_HEAD:
                raise HTTPError("response head too large")
            if not self._fill(sock):
                raise HTTPError("connection closed before the response head")
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HTTPError(f"bad status line {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def _read_exact(self, sock: socket.socket, n: int, sink: Sink | None, keep: bytearray) -> None:
        """Consume ``n`` body bytes into ``sink`` (or ``keep``)."""
        while n > 0:
            if not self._buf and not self._fill(sock):
                raise HTTPError(f"connection closed with {n} body bytes missing")
            take = min(n, len(self._buf))
            piece = memoryview(self._buf)[:take]
            try:
                if sink is not None:
                    sink(piece)
                else:
                    keep += piece
            finally:
                piece.release()
            del self._buf[:take]
            n -= take

    def _read_line(self, sock: socket.socket) -> bytes:
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 2]
                return line
            if len(self._buf) > _MAX_HEAD or not self._fill(sock):
                raise HTTPError("bad chunked framing")

    def _read_body(
        self,
        sock: socket.socket,
        method: str,
        status: int,
        headers: dict[str, str],
        sink: Sink | None,
    ) -> tuple[bytes, int, bool]:
        """(kept body, body length, connection reusable)."""
        keep = bytearray()
        reusable = "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b"", 0, reusable
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int(self._read_line(sock).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._read_line(sock):  # trailers
                        pass
                    break
                self._read_exact(sock, size, sink, keep)
                total += size
                if self._read_line(sock):
                    raise HTTPError("bad chunked framing")
            return bytes(keep), total, reusable
        cl = headers.get("content-length")
        if cl is not None:
            n = int(cl)
            self._read_exact(sock, n, sink, keep)
            return bytes(keep), n, reusable
        total = 0  # delimited by close
        while self._buf or self._fill(sock):
            total += len(self._buf)
            if sink is not None:
                sink(memoryview(self._buf))
            else:
                keep += self._buf
            self._buf = bytearray()
        return bytes(keep), total, False

    # -- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
        body_iter: Iterable[Body] | None = None,
        content_length: int | None = None,
        sink: Sink | None = None,
    ) -> Response:
        """Send one request and read its response.

        ``body`` is sent as is; ``body_iter`` streams slices and then
        ``content_length`` must give their total. ``sink`` receives the response
        body in slices instead of keeping it.
        """
        if body is not None and body_iter is not None:
            raise ValueError("body and body_iter are exclusive")
        if body_iter is not None and content_length is None:
            raise ValueError("body_iter needs content_length")
        length = len(body) if body is not None else (content_length or 0)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        if headers:
            lines += [f"{k}: {v}" for k, v in headers.items()]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        sock = self._sock or self._connect()
        self.requests += 1
        send_error: OSError | None = None
        try:
            if body is not None and 0 < len(body) <= _COALESCE:
                sock.sendall(head + bytes(body))
            else:
                sock.sendall(head)
                if body is not None and len(body):
                    sock.sendall(body)
                elif body_iter is not None:
                    sent = 0
                    for piece in body_iter:
                        sock.sendall(piece)
                        sent += len(piece)
                    if sent != length:
                        raise ValueError(f"body_iter yielded {sent} bytes, not {length}")
        except OSError as exc:
            # The server may have answered early (e.g. 4xx) and closed: try to read that.
            send_error = exc
        try:
            status, reason, rheaders = self._read_head(sock)
            kept, n, reusable = self._read_body(sock, method, status, rheaders, sink)
        except (OSError, ValueError) as exc:
            self.close()
            cause = f" (while sending: {send_error})" if send_error else ""
            raise HTTPError(f"{method} {target[:120]}: {exc}{cause}") from exc
        if send_error is not None or not reusable:
            self.close()
        return Response(status, reason, rheaders, kept, n)
