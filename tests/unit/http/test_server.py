"""IngestHTTPProtocol in process: uvicorn's real httptools protocol and parser on a fake
transport, a real event loop, and timeouts of a tenth of a second.

A test waits for a close with a generous bound (``until``), and checks that something
is *not* closed only after several timeouts have passed, so a slow machine can make
these tests slower but not wrong. The real-socket version of each scenario is
tests/integration/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import pickle
import resource
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingest.config import ConfigError, Settings
from ingest.http import server
from ingest.http.server import (
    FD_RESERVE,
    FDS_PER_CONNECTION,
    ConnectionLimits,
    IngestHTTPProtocol,
    fit_fd_limit,
    granian_args,
    plan_fd_limit,
    protocol_factory,
)

T = 0.1  # every timeout in these tests
LIMITS = ConnectionLimits(
    header_timeout=T, body_idle_timeout=T, keepalive_timeout=T, max_connections=100
)
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]],
    Awaitable[None],
]


@pytest.fixture(autouse=True)
def _log_every_close(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real reporter logs one line per reason a second; tests want every line.
    monkeypatch.setattr(server, "_report", server._Reporter(interval=0.0))


class FakeTransport(asyncio.Transport):
    """Records what the server writes; delivers client bytes only while reading is on
    (what the kernel would hold back meanwhile is delivered on resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: IngestHTTPProtocol | None = None
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.held = bytearray()
        self.unsent = 0  # what get_write_buffer_size reports

    def send(self, data: bytes) -> None:
        """The client sends ``data``."""
        assert self.protocol is not None
        if self.closing:
            return
        if self.reading:
            self.protocol.data_received(data)
        else:
            self.held += data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "write after close"
        self.out += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        if self.held:
            data, self.held = bytes(self.held), bytearray()
            asyncio.get_running_loop().call_soon(self.send, data)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5000)}.get(
            name, default
        )


def connect(
    app: ASGIApp, limits: ConnectionLimits = LIMITS, state: ServerState | None = None
) -> tuple[IngestHTTPProtocol, FakeTransport]:
    config = Config(app=app, log_config=None, lifespan="off", proxy_headers=False)
    config.load()
    proto = IngestHTTPProtocol(
        config=config,
        server_state=state or ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
        limits=limits,
    )
    transport = FakeTransport()
    transport.protocol = proto
    proto.connection_made(transport)
    return proto, transport


async def until(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until ``condition`` holds; fails after ``within``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        assert loop.time() - start < within, "condition never held"
        await asyncio.sleep(0.005)
    return loop.time() - start


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def closed(reason: str) -> float:
    return REGISTRY.get_sample_value("ingest_connections_closed_total", {"reason": reason}) or 0.0


class App:
    """Reads the whole body (optionally after ``gate`` opens), then waits ``work``
    seconds and answers 200 with the number of bytes it got."""

    def __init__(self, work: float = 0.0, gated: bool = False) -> None:
        self.work = work
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.got = 0
        self.disconnected = False
        self.done = asyncio.Event()

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[..., Awaitable[None]],
    ) -> None:
        try:
            await self.gate.wait()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    return
                self.got += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await asyncio.sleep(self.work)
            body = str(self.got).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            self.done.set()


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def put_head(length: int, extra: bytes = b"") -> bytes:
    return b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


# -- header timeout ------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        before = closed("header_timeout")
        _, t = connect(App())
        took = await until(lambda: t.closing)
        assert took >= T * 0.9
        assert t.out == b""  # nothing was asked: nothing to answer
        assert closed("header_timeout") == before + 1

    with caplog.at_level(logging.INFO, logger="ingest.http.server"):
        run(scenario)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "connection_closed"]
    assert record.__dict__["reason"] == "header_timeout"
    assert record.__dict__["client"] == "127.0.0.1:40000"


def test_part_of_a_head_then_silence_gets_a_408() -> None:
    async def scenario() -> None:
        _, t = connect(App())
        t.send(b"GET / HTTP/1.1\r\nHo")
        await until(lambda: t.closing)
        assert t.out.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"connection: close" in t.out

    run(scenario)


def test_a_request_head_over_the_size_bound_gets_431_and_is_closed() -> None:
    async def scenario() -> None:
        app = App()
        _, t = connect(app)
        t.send(b"GET / HTTP/1.1\r\nX-Big: ")
        sent = 0
        while not t.closing and sent <= 2 * server.MAX_HEAD_BYTES:
            t.send(b"x" * 65536)  # fast: well within the header timeout
            sent += 65536
        assert t.closing
        assert sent <= server.MAX_HEAD_BYTES + 65536
        assert t.out.startswith(b"HTTP/1.1 431 ")
        assert not app.done.is_set()  # the app never saw the request

    run(scenario)


def test_a_large_body_right_behind_a_small_head_is_not_taken_for_a_head() -> None:
    async def scenario() -> None:
        app = App()
        _, t = connect(app)
        body = b"b" * (256 << 10)
        t.send(put_head(len(body) * 5) + body)  # head and first chunk in one read
        for _ in range(4):
            t.send(body)
        await until(lambda: app.done.is_set())
        assert t.out.startswith(b"HTTP/1.1 200 ")
        assert app.got == len(body) * 5

    run(scenario)


def test_bytes_trickling_in_do_not_extend_the_header_deadline() -> None:
    async def scenario() -> None:
        _, t = connect(App())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for byte in b"GET / HTTP/1.1\r\nUser-Agent: " + b"x" * 1000:
            if t.closing:
                break
            t.send(bytes([byte]))  # a byte every 10 ms, each well within the timeout
            await asyncio.sleep(0.01)
        assert t.closing
        assert loop.time() - start < 20 * T  # the head would have taken 10 s
        assert t.out.startswith(b"HTTP/1.1 408 ")

    run(scenario)


def test_a_complete_head_in_time_is_served_and_the_connection_kept_alive() -> None:
    async def scenario() -> None:
        app = App()
        _, t = connect(app)
        t.send(b"GET / HTT")
        t.send(b"P/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"\r\n\r\n0" in t.out)
        assert t.out.startswith(b"HTTP/1.1 200 ")
        assert not t.closing
        # Idle after the response: uvicorn's keep-alive timer, at the configured value.
        took = await until(lambda: t.closing)
        assert took >= T * 0.9

    run(scenario)


def test_stray_bytes_after_a_response_start_the_header_deadline() -> None:
    async def scenario() -> None:
        _, t = connect(App())
        t.send(GET)
        await until(lambda: b"\r\n\r\n0" in t.out)
        answered = len(t.out)
        for _ in range(100):  # blank lines forever: never a request, never idle
            if t.closing:
                break
            t.send(b"\r\n")
            await asyncio.sleep(0.01)
        assert t.closing
        assert t.out[answered:] == b""  # no request had begun: nothing to answer

    run(scenario)


def test_pipelined_requests_are_served_while_the_app_works() -> None:
    async def scenario() -> None:
        _, t = connect(App(work=3 * T))
        t.send(GET + GET + b"GET / HT")  # two requests and part of a third, at once
        await until(lambda: t.out.count(b"HTTP/1.1 200 ") == 2)
        assert not t.closing  # the app worked 6 timeouts: nobody was timed out meanwhile
        await until(lambda: t.closing)  # the third head never completes

    run(scenario)


# -- body-idle timeout -----------------------------------------------------------------


def test_a_body_that_stops_is_cut_and_the_app_sees_a_disconnect() -> None:
    async def scenario() -> None:
        before = closed("body_idle_timeout")
        app = App()
        _, t = connect(app)
        t.send(put_head(1000) + b"x" * 300)
        took = await until(lambda: t.closing)
        assert took >= T * 0.9
        await until(app.done.is_set)
        assert app.disconnected
        assert app.got == 300
        assert t.out == b""
        assert closed("body_idle_timeout") == before + 1

    run(scenario)


def test_a_slow_but_steady_body_is_not_cut() -> None:
    async def scenario() -> None:
        app = App()
        _, t = connect(app)
        t.send(put_head(60))
        for _ in range(60):  # a byte every 10 ms: six timeouts in all
            t.send(b"x")
            await asyncio.sleep(0.01)
        await until(lambda: t.out.endswith(b"\r\n\r\n60"))
        assert not t.closing

    run(scenario)


def test_an_app_working_after_the_body_is_never_timed_out() -> None:
    async def scenario() -> None:
        app = App(work=6 * T)  # e.g. a finishing PUT waiting for its verification
        _, t = connect(app)
        t.send(put_head(5) + b"hello")
        await until(lambda: t.out.endswith(b"\r\n\r\n5"))
        assert not t.closing

    run(scenario)


def test_time_while_reading_is_paused_for_a_slow_app_does_not_count() -> None:
    async def scenario() -> None:
        app = App(gated=True)  # the app does not read yet (say, the disk is slow)
        proto, t = connect(app)
        t.send(put_head(200_000) + b"x" * 100_000)  # over uvicorn's 64 KiB: reading pauses
        assert not t.reading
        await asyncio.sleep(6 * T)
        assert not t.closing
        app.gate.set()  # the app consumes what arrived, asks for more; the client is silent
        await until(lambda: app.got == 100_000)
        # The idle clock restarted when the app asked: a check now finds no idle time...
        proto._body_check()
        assert not t.closing
        # ...and the silence from then on is cut.
        await until(lambda: t.closing)
        await until(app.done.is_set)
        assert app.disconnected

    run(scenario)


def test_an_expect_100_continue_client_is_not_timed_out_before_it_is_asked() -> None:
    async def scenario() -> None:
        app = App(gated=True)
        _, t = connect(app)
        t.send(put_head(10, b"Expect: 100-continue\r\n"))
        await asyncio.sleep(6 * T)  # the client rightly waits for the 100
        assert not t.closing
        assert t.out == b""
        app.gate.set()
        await until(lambda: t.out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        await until(lambda: t.closing)  # asked, and still silent

    run(scenario)


def test_the_rest_of_a_body_after_an_early_answer_counts_as_body_not_head() -> None:
    async def early(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[..., Awaitable[None]],
    ) -> None:
        # Answers without reading the body (as a 416 or 413 would).
        await send({"type": "http.response.start", "status": 416, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        _, t = connect(early)
        t.send(put_head(60))
        await until(lambda: t.out.startswith(b"HTTP/1.1 416 "))
        for _ in range(60):  # the client keeps sending the body it announced, steadily
            t.send(b"x")
            await asyncio.sleep(0.01)
        answered = len(t.out)
        t.send(GET)  # then its next request
        await until(lambda: t.out[answered:].startswith(b"HTTP/1.1 416 "))
        assert not t.closing

    run(scenario)


# -- sending ---------------------------------------------------------------------------


def test_a_client_that_stops_reading_the_response_is_aborted() -> None:
    async def scenario() -> None:
        before = closed("send_stall")
        proto, t = connect(App(work=100))
        t.send(GET)  # a request the app is answering
        t.unsent = 1 << 20
        proto.pause_writing()  # the transport's buffer is full
        for _ in range(8):  # draining slowly is progress: four timeouts, not cut
            await asyncio.sleep(T / 2)
            t.unsent -= 1000
        assert not t.closing
        await until(lambda: t.closing)  # then not one byte more
        assert t.aborted  # close() would wait for the buffer to drain
        assert closed("send_stall") == before + 1

    run(scenario)


def test_a_reader_catching_up_cancels_the_send_clock() -> None:
    async def scenario() -> None:
        proto, t = connect(App(work=100))
        t.send(GET)  # a request in progress: no header deadline
        t.unsent = 1 << 20
        proto.pause_writing()
        proto.resume_writing()
        await asyncio.sleep(5 * T)
        assert not t.closing

    run(scenario)


# -- connection cap --------------------------------------------------------------------


def test_connections_over_the_cap_get_503_and_are_closed() -> None:
    async def scenario() -> None:
        before = closed("max_connections")
        state = ServerState()
        limits = dataclasses.replace(
            LIMITS, header_timeout=60, keepalive_timeout=60, max_connections=2
        )
        first = [connect(App(), limits, state) for _ in range(2)]
        _, over = connect(App(), limits, state)
        assert over.closing
        assert over.out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1\r\n" in over.out
        assert closed("max_connections") == before + 1
        await asyncio.sleep(0)  # connection_lost: it leaves the count
        assert len(state.connections) == 2
        for _, t in first:
            assert not t.closing
            t.send(GET)
        await until(lambda: all(t.out.startswith(b"HTTP/1.1 200 ") for _, t in first))
        first[0][1].close()
        await asyncio.sleep(0)
        _, again = connect(App(), limits, state)  # room again
        assert not again.closing

    run(scenario)


# -- reporting -------------------------------------------------------------------------


def test_the_reporter_folds_a_flood_into_one_line_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report = server._Reporter(interval=3600)
    with caplog.at_level(logging.INFO, logger="ingest.http.server"):
        for port in range(5):
            report("header_timeout", "no request in 10 s", f"10.0.0.1:{port}", 10)
        report("max_connections", "over 2 open connections", "10.0.0.2:1", 2)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "connection_closed"]
    assert [(r.__dict__["reason"], r.levelno) for r in lines] == [
        ("header_timeout", logging.INFO),
        ("max_connections", logging.WARNING),
    ]
    report.interval = 0.0  # as if an interval had passed
    with caplog.at_level(logging.INFO, logger="ingest.http.server"):
        report("header_timeout", "no request in 10 s", "10.0.0.1:9", 10)
    assert caplog.records[-1].__dict__["also_closed"] == 4


# -- wiring: settings, uvicorn, file descriptors, granian --------------------------------


def test_the_settings_default_and_parse_durations_and_counts() -> None:
    s = Settings.from_env({})
    assert ConnectionLimits.from_settings(s) == ConnectionLimits()
    assert (s.header_timeout, s.body_idle_timeout, s.keepalive_timeout) == (10.0, 60.0, 30.0)
    assert s.max_connections == 1000
    s = Settings.from_env(
        {
            "INGEST_HEADER_TIMEOUT": "500ms",
            "INGEST_BODY_IDLE_TIMEOUT": "2m",
            "INGEST_KEEPALIVE_TIMEOUT": "5",
            "INGEST_MAX_CONNECTIONS": "64",
        }
    )
    assert ConnectionLimits.from_settings(s) == ConnectionLimits(0.5, 120.0, 5.0, 64)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_HEADER_TIMEOUT", "0"),
        ("INGEST_BODY_IDLE_TIMEOUT", "0s"),
        ("INGEST_KEEPALIVE_TIMEOUT", "soon"),
        ("INGEST_MAX_CONNECTIONS", "0"),
        ("INGEST_MAX_CONNECTIONS", "-5"),
        ("INGEST_MAX_CONNECTIONS", "1k"),
    ],
)
def test_a_bad_limit_is_a_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_the_protocol_factory_pickles_into_worker_processes() -> None:
    limits = ConnectionLimits(1.5, 2.5, 3.5, 7)
    # What uvicorn does to its Config for --workers N (our own object: safe to unpickle).
    factory = pickle.loads(pickle.dumps(protocol_factory(limits)))  # noqa: S301
    assert isinstance(factory, functools.partial)
    assert factory.func is IngestHTTPProtocol
    assert factory.keywords == {"limits": limits}


def test_serve_hands_the_limits_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from ingest.cli import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr(server, "fit_fd_limit", lambda n: (n, None))
    env = {
        "INGEST_HEADER_TIMEOUT": "3s",
        "INGEST_BODY_IDLE_TIMEOUT": "45s",
        "INGEST_KEEPALIVE_TIMEOUT": "7s",
        "INGEST_MAX_CONNECTIONS": "321",
        "INGEST_AUTH": "none",
        "INGEST_DEBUG_ADDR": "off",  # tests/unit/http/test_serve.py covers the listener
    }
    result = CliRunner().invoke(cli, ["serve", "--port", "5999"], env=env)
    assert result.exit_code == 0, result.output
    (kw,) = calls
    assert kw["http"].func is IngestHTTPProtocol
    assert kw["http"].keywords["limits"] == ConnectionLimits(3.0, 45.0, 7.0, 321)
    assert "timeout_keep_alive" not in kw  # the protocol applies INGEST_KEEPALIVE_TIMEOUT


def test_serve_warns_and_lowers_the_cap_when_descriptors_are_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from ingest.cli import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(server, "fit_fd_limit", lambda n: (50, "capping at 50 connections"))
    env = {"INGEST_MAX_CONNECTIONS": "5000", "INGEST_AUTH": "none", "INGEST_DEBUG_ADDR": "off"}
    result = CliRunner().invoke(cli, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    assert "warning: capping at 50 connections" in result.output
    assert calls[0]["http"].keywords["limits"].max_connections == 50


def test_the_fd_plan_raises_the_soft_limit_or_lowers_the_cap() -> None:
    need = 1000 * FDS_PER_CONNECTION + FD_RESERVE
    inf = resource.RLIM_INFINITY
    assert plan_fd_limit(1000, need, need) == (None, 1000)  # already enough
    assert plan_fd_limit(1000, inf, inf) == (None, 1000)
    assert plan_fd_limit(1000, 1024, inf) == (need, 1000)  # raise the soft limit
    assert plan_fd_limit(1000, 1024, 1 << 20) == (need, 1000)
    # The hard limit is too low: raise to it and cap what fits.
    assert plan_fd_limit(1000, 1024, 1128) == (1128, 500)
    assert plan_fd_limit(1000, 1128, 1128) == (None, 500)
    assert plan_fd_limit(10, 64, 64) == (None, 1)  # never below one connection


def test_fit_fd_limit_sets_the_plan_and_explains_a_lower_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1128))
    monkeypatch.setattr(resource, "setrlimit", lambda _, v: set_to.append(v))
    cap, warning = fit_fd_limit(1000)
    assert set_to == [(1128, 1128)]
    assert cap == 500
    assert warning is not None
    assert "capping at 500" in warning
    assert "ulimit -n" in warning

    def refuse(_: int, v: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    cap, warning = fit_fd_limit(1000)
    assert cap == (1024 - FD_RESERVE) // FDS_PER_CONNECTION
    assert warning is not None

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert fit_fd_limit(1000) == (1000, None)


def test_granian_gets_what_it_supports_and_the_rest_is_named() -> None:
    args, missing = granian_args(ConnectionLimits(10, 60, 30, 1000))
    assert args == ["--http1-header-read-timeout", "10000", "--backpressure", "1000"]
    assert missing == ["INGEST_BODY_IDLE_TIMEOUT", "INGEST_KEEPALIVE_TIMEOUT"]
    args, missing = granian_args(ConnectionLimits(120, 60, 30, 5))
    assert args[1] == "60000"  # granian's maximum
    assert "INGEST_HEADER_TIMEOUT above 60 s" in missing
