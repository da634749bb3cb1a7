"""Slow and idle clients: connection timeouts and a connection cap for ``ingest serve``.

uvicorn closes a connection for idleness only *after* a response (its keep-alive
timeout). A client that connects and sends nothing, trickles a request head, or stops
in the middle of a body holds its socket, a file descriptor, for ever; and
``limit_concurrency`` answers 503 per request without bounding the connections
themselves. :class:`IngestHTTPProtocol` adds what is missing to uvicorn's httptools
protocol (the one uvicorn already picked here: ``httptools`` comes with
``uvicorn[standard]``, and its parser callbacks mark exactly where a head begins
and ends):

- **header timeout** — a request head must be complete within ``header_timeout`` of
  the connection opening, or of the first byte after a response. More bytes do not
  extend it, so a head trickled a byte at a time is cut (with a 408 if part of a head
  arrived; an idle connection that never sent a byte is just closed).
- **body-idle timeout** — while a request body is arriving, the connection is closed
  when no byte arrives for ``body_idle_timeout``. The clock only runs while the server
  is actually waiting for the client: not while uvicorn has paused reading because
  the app is slow to consume (disk writes), and not before the app asked for the body
  of an ``Expect: 100-continue`` request. The same allowance covers a response the
  client stops reading: if the outgoing buffer does not shrink at all for that long,
  the connection is aborted. The app sees an ordinary client disconnect (a PATCH keeps
  the bytes that arrived).
- **keep-alive timeout** — uvicorn's own, fed from the setting.
- **connection cap** — beyond ``max_connections`` open connections in this process,
  a new connection gets a 503 and is closed at once, so file descriptors stay bounded.

There is no timer while the app works on a request whose body is complete: a
finishing PUT may wait minutes for its verification (``INGEST_FINISH_WAIT``).

Settings are read at the edge (``ingest serve``) and handed to uvicorn as
``http=protocol_factory(limits)``: a ``functools.partial`` of a module-level class,
so it pickles into ``--workers N`` processes.

Also here, for ``ingest serve``'s start-up: the TLS files are checked before any
process starts (:func:`check_tls_files`), and the debug listener
(:mod:`ingest.http.debug`) gets its socket (:func:`bind_debug_socket`) and a thread
of the serving process (:class:`DebugListener`). With ``--workers N`` that process is
uvicorn's supervisor, which outlives every worker process and is the only one that
binds the debug port; worker processes are spawned, so they inherit neither the
thread nor the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server, ServerState

from ingest.config import ConfigError, Settings
from ingest.http import metrics

if TYPE_CHECKING:
    from ingest.api import Ingest

__all__ = [
    "ConnectionLimits",
    "DebugListener",
    "IngestHTTPProtocol",
    "bind_debug_socket",
    "check_tls_files",
    "fit_fd_limit",
    "granian_args",
    "parse_listen_address",
    "plan_fd_limit",
    "protocol_factory",
    "start_debug_listener",
]

log = logging.getLogger("ingest.http.server")

#: File descriptors one connection may hold: its socket, and the staging file a
#: streamed request body is written to.
FDS_PER_CONNECTION = 2
#: Descriptors kept free for everything else: the listening socket, Redis, log and
#: metrics files, the interpreter's own.
FD_RESERVE = 128

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
)
_TOO_LARGE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 23\r\n"
    b"connection: close\r\n\r\nrequest head too large\n"
)
#: Most bytes a client may send before its request head is complete (Go's net/http
#: default). The parser buffers a head, so without this bound a client could push
#: hundreds of MiB of header into memory within the header timeout. Counted per read
#: chunk (up to 256 KiB), so the head itself is held to at least 768 KiB.
MAX_HEAD_BYTES = 1 << 20
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n"
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The per-connection limits of one frontend process (seconds, and a count)."""

    header_timeout: float = 10.0
    body_idle_timeout: float = 60.0
    keepalive_timeout: float = 30.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout,
            body_idle_timeout=settings.body_idle_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
        )


class _Reporter:
    """Counts every closed connection; logs at most one line per reason a second
    (a flood of slow clients must not become a flood of log lines)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def __call__(self, reason: str, message: str, client: str, limit: float) -> None:
        metrics.CONNECTIONS_CLOSED.labels(reason).inc()
        # Over the cap is a capacity problem worth a warning; timeouts are routine.
        level = logging.WARNING if reason == "max_connections" else logging.INFO
        if not log.isEnabledFor(level):
            return
        now = time.monotonic()
        if now - self._last.get(reason, -self.interval) < self.interval:
            self._folded[reason] = self._folded.get(reason, 0) + 1
            return
        self._last[reason] = now
        folded = self._folded.pop(reason, 0)
        log.log(
            level,
            "closed connection from %s: %s",
            client,
            message,
            extra={
                "event": "connection_closed",
                "reason": reason,
                "client": client,
                "limit": limit,
                "also_closed": folded or None,  # lines folded into this one since the last
            },
        )


_report = _Reporter()


class _ClockedFlow(FlowControl):
    """uvicorn's read/write flow control, remembering when the server last asked the
    client for more: when reading resumed after a pause, or when the app called
    ``receive()`` (which resumes reading every time)."""

    def __init__(self, transport: asyncio.Transport, clock: Callable[[], float]) -> None:
        super().__init__(transport)
        self._clock = clock
        self.asked_at = clock()

    def resume_reading(self) -> None:
        super().resume_reading()
        self.asked_at = self._clock()


class IngestHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with header, body-idle and send-stall
    timeouts and a connection cap (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ConnectionLimits()
        # uvicorn types this as int; call_later takes any number of seconds.
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._flow: _ClockedFlow = None  # type: ignore[assignment]  # set in connection_made
        self._in_message = False  # the parser is inside a request (head or body)
        self._in_head = False  # ... and still inside its head
        self._last_read = 0.0
        self._head_bytes = 0  # bytes received since the current head began
        self._unsent = 0  # outgoing bytes buffered when the send clock last looked

    # -- connection ------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self.flow = self._flow = _ClockedFlow(transport, self.loop.time)
        if len(self.connections) > self.limits.max_connections:
            cap = self.limits.max_connections
            self._drop("max_connections", f"over {cap} open connections", cap, _BUSY_503)
            return
        self._last_read = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if not self._in_message or self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                limit = MAX_HEAD_BYTES
                self._drop(
                    "head_too_large", f"request head over {limit} bytes", limit, _TOO_LARGE_431
                )
                return
        super().data_received(data)  # the parser callbacks below run in here
        if self.transport.is_closing():
            return
        if self._in_message and not self._in_head:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.limits.body_idle_timeout, self._body_check
                )
        elif self._head_timer is None and not self._busy():
            # Bytes of a head (or stray bytes) after a response: uvicorn has just
            # cancelled its keep-alive timer, so the head deadline starts now.
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_expired)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the connection now belongs to another protocol
        super().handle_websocket_upgrade()

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._head_bytes = 0
        super().on_message_complete()

    # -- writing -------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._send_timer = self.loop.call_later(self.limits.body_idle_timeout, self._send_check)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- timers --------------------------------------------------------------------

    def _busy(self) -> bool:
        """A request is with the app (its response not complete yet)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._busy():
            return  # a pipelined head: uvicorn's keep-alive timer takes over after the response
        limit = self.limits.header_timeout
        if self._in_head:  # part of a head arrived: say why before closing
            message = f"no complete request head in {limit:g} s"
            self._drop("header_timeout", message, limit, _TIMEOUT_408)
        else:
            self._drop("header_timeout", f"no request in {limit:g} s", limit, None)

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._in_message or self._in_head:
            return
        limit = self.limits.body_idle_timeout
        cycle = self.cycle
        waiting_on_us = self._flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue and not cycle.response_complete
        )
        if waiting_on_us:
            delay = limit  # the client is not idle: we are not reading, or have not asked yet
        else:
            idle = self.loop.time() - max(self._last_read, self._flow.asked_at)
            if idle >= limit:
                self._drop("body_idle_timeout", f"no body bytes for {limit:g} s", limit, None)
                return
            delay = limit - idle
        self._body_timer = self.loop.call_later(delay, self._body_check)

    def _send_check(self) -> None:
        self._send_timer = None
        if self.transport.is_closing() or not self.flow.write_paused:
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent >= self._unsent:  # not one byte taken by the client since the last look
            limit = self.limits.body_idle_timeout
            self._drop("send_stall", f"response not read for {limit:g} s", limit, None)
            return
        self._unsent = unsent
        self._send_timer = self.loop.call_later(self.limits.body_idle_timeout, self._send_check)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._send_timer = None

    def _drop(self, reason: str, message: str, limit: float, farewell: bytes | None) -> None:
        """Close the connection (after ``farewell``, if nothing else is queued to send)."""
        self._cancel_timers()
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.abort()  # close() would wait for a client that is not reading
        else:
            if farewell:
                transport.write(farewell)
            transport.close()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        _report(reason, message, client, limit)


def protocol_factory(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http=``: uvicorn calls it like a protocol class."""
    factory = functools.partial(IngestHTTPProtocol, limits=limits)
    return factory  # type: ignore[return-value]  # a callable with the class's signature


# -- file descriptors ------------------------------------------------------------------


def plan_fd_limit(max_connections: int, soft: int, hard: int) -> tuple[int | None, int]:
    """(the soft RLIMIT_NOFILE to ask for, or None to keep it; the connection cap that
    fits once it is set). Raising the soft limit up to the hard one needs no privilege."""
    infinity = resource.RLIM_INFINITY
    need = max_connections * FDS_PER_CONNECTION + FD_RESERVE
    if soft == infinity or soft >= need:
        return None, max_connections
    target = need if hard == infinity else min(need, hard)
    fits = max(1, (target - FD_RESERVE) // FDS_PER_CONNECTION)
    return (target if target > soft else None), min(max_connections, fits)


def fit_fd_limit(max_connections: int) -> tuple[int, str | None]:
    """Make room for ``max_connections`` in this process's descriptor limit (inherited
    by ``--workers`` processes); return the cap to use and a warning if it had to shrink."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target, fits = plan_fd_limit(max_connections, soft, hard)
    if target is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            fits = min(fits, max(1, (soft - FD_RESERVE) // FDS_PER_CONNECTION))
        else:
            soft = target
    if fits >= max_connections:
        return max_connections, None
    return fits, (
        f"INGEST_MAX_CONNECTIONS={max_connections} needs about "
        f"{max_connections * FDS_PER_CONNECTION + FD_RESERVE} file descriptors but the "
        f"limit is {soft} (hard {hard}); capping at {fits} connections per process "
        "(raise `ulimit -n`)"
    )


def granian_args(limits: ConnectionLimits) -> tuple[list[str], list[str]]:
    """granian's closest options, and the limits it cannot enforce. granian (hyper) has
    a header read timeout (milliseconds, at most 60 s) and a per-worker bound on
    concurrent requests (``--backpressure``); it has no body-idle timeout, no HTTP/1
    keep-alive duration (only on/off) and no cap on open connections."""
    header_ms = min(max(round(limits.header_timeout * 1000), 1), 60_000)
    args = [
        "--http1-header-read-timeout",
        str(header_ms),
        "--backpressure",
        str(limits.max_connections),
    ]
    missing = ["INGEST_BODY_IDLE_TIMEOUT", "INGEST_KEEPALIVE_TIMEOUT"]
    if limits.header_timeout > 60:
        missing.append("INGEST_HEADER_TIMEOUT above 60 s")
    return args, missing


# -- TLS ------------------------------------------------------------------------------


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def check_tls_files(cert: str, key: str) -> None:
    """Refuse, with a message naming the file and the reason, a certificate or key
    that is missing, unreadable, not PEM, encrypted, or not a matching pair: better
    at start-up than as a TLS alert on every connection."""
    for option, what, path in (("--tls-cert", "certificate", cert), ("--tls-key", "key", key)):
        field = "tls_cert" if option == "--tls-cert" else "tls_key"
        if not os.path.isfile(path):
            raise ConfigError(f"{option}/INGEST_{field.upper()}: no TLS {what} file {path}", field)
        if not os.access(path, os.R_OK):
            raise ConfigError(
                f"{option}/INGEST_{field.upper()}: the TLS {what} {path} is not readable "
                f"by this user (uid {os.getuid()})",
                field,
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"--tls-cert/--tls-key: {cert} and {key} are not a PEM certificate chain and its "
            f"unencrypted private key ({reason})",
            "tls_cert",
        ) from None


# -- the debug listener ----------------------------------------------------------------

#: Values of ``INGEST_DEBUG_ADDR`` / ``--debug-addr`` that turn the listener off.
DEBUG_OFF = frozenset({"", "off", "none", "false", "no", "0"})


def parse_listen_address(text: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair, or None for "off" (see
    :data:`DEBUG_OFF`). ValueError for anything else."""
    value = text.strip()
    if value.lower() in DEBUG_OFF:
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (or off)")
    return host, int(port)


def bind_debug_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (OSError if it is taken). Bound here, before
    the frontend starts, so a conflict stops ``ingest serve`` with a clear message
    instead of failing later in a thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def start_debug_listener(
    ingest: Ingest, sock: socket.socket, *, multiprocess_dir: str | None, log_level: str
) -> DebugListener:
    """Serve :mod:`ingest.http.debug`'s app over ``ingest`` on ``sock`` (from
    :func:`bind_debug_socket`), aggregating the metrics in ``multiprocess_dir``."""
    from ingest.http.debug import create_debug_app

    app = create_debug_app(ingest, multiprocess_dir=multiprocess_dir)
    return DebugListener(app, sock, log_level=log_level).start()


class DebugListener:
    """Serves an ASGI app (the debug app) on an already bound socket, with its own
    uvicorn server and event loop, in a daemon thread of this process."""

    def __init__(self, app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
        config = Config(
            app,
            log_level=log_level,
            access_log=False,
            log_config=None,  # the process's logging stays as configured
            lifespan="off",
            loop="asyncio",
            http="h11",
            timeout_keep_alive=5,
            limit_concurrency=64,  # a scraper gone wild cannot exhaust descriptors
        )
        self.server = Server(config)
        self.socket = sock
        self.thread = threading.Thread(target=self._run, name="ingest-debug", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException:  # report it; never take the frontend down with it
            log.exception("the debug listener on %s stopped", self.address)

    def start(self) -> DebugListener:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()
