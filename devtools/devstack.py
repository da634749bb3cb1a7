"""Run the pipeline's processes locally: a private Redis and real Celery workers.

Used by the demo (``python -m devtools.demo``) and the integration tests. Workers
are started with ``start_new_session=True`` so a test can kill a worker's whole
process group, or just its pool child, as a crash would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from devtools.localredis import free_port
from ingest.queue import WORKER_QUEUES

__all__ = ["Frontend", "Service", "Worker", "write_htpasswd"]


class Service:
    """A long-running helper process (frontend, beat, Flower) in its own process group.

    With ``port``, ``start`` waits until :meth:`ready` is true.
    """

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        logfile: str | os.PathLike[str],
        *,
        port: int | None = None,
    ) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.logfile = Path(logfile)
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def waits_until_ready(self) -> bool:
        """Whether ``start`` waits for :meth:`ready` (by default: when there is a port)."""
        return self.port is not None

    def ready(self) -> bool:
        import socket

        assert self.port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> Self:
        if self.process is not None and self.process.poll() is None:
            # A second Popen would orphan the first process (stop() only knows one).
            raise RuntimeError(f"{self.args[:4]} is already running (pid {self.process.pid})")
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not self.waits_until_ready:
            return self
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.args[:4]} exited with {self.process.returncode}")
                if self.ready():
                    return self
                time.sleep(0.05)
        except BaseException:
            # Interrupted (a signal, Ctrl-C) before the caller holds the service: nobody
            # else would stop it, and its own session keeps it alive after us.
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"{self.args[:4]} not ready after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        p = self.process
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        self.process = None

    def __enter__(self) -> Self:
        # `with stack.worker():` gets a started service: only stop it at the end.
        if self.process is not None and self.process.poll() is None:
            return self
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Frontend(Service):
    """An ``ingest serve`` subprocess (uvicorn) on a loopback port.

    Authentication comes from ``env`` like any setting: ``INGEST_AUTH=htpasswd`` with
    ``INGEST_AUTH_HTPASSWD`` (see :func:`write_htpasswd`), or ``INGEST_AUTH=token`` with
    the ``INGEST_AUTH_TOKEN_*`` settings. Without ``INGEST_AUTH`` in ``env`` (or in
    this process's environment) the frontend runs with ``INGEST_AUTH=none``: open, for
    the demo and the tests, which ``ingest serve`` logs loudly.

    ``tls_cert``/``tls_key``: serve HTTPS (``--tls-cert``/``--tls-key``); ``ca`` is the
    CA file that signed the certificate, which :meth:`ready` verifies against (an
    unverified probe without it) and :attr:`ca` hands to clients.

    The debug listener (``/metrics``, ``/health``) gets a free loopback port of its
    own (:attr:`debug_url`), so frontends never race for the default 127.0.0.1:5001;
    ``debug=False`` turns it off.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        logfile: str | os.PathLike[str],
        *,
        port: int,
        processes: int = 1,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        ca: str | os.PathLike[str] | None = None,
        debug: bool = True,
        debug_port: int | None = None,
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together")
        self.tls = bool(tls_cert)
        self.ca = str(ca) if ca else None
        self.debug_port = (debug_port or free_port()) if debug else None
        args = [
            sys.executable,
            "-m",
            "ingest.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(processes),
            "--log-level",
            "warning",
            "--debug-addr",
            f"127.0.0.1:{self.debug_port}" if self.debug_port else "off",
        ]
        if tls_cert and tls_key:
            args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        if "INGEST_AUTH" not in env and not os.environ.get("INGEST_AUTH"):
            env = {**env, "INGEST_AUTH": "none"}
        super().__init__(args, env, logfile, port=port)
        self.processes = processes

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def debug_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the debug listener (None when off)."""
        return f"http://127.0.0.1:{self.debug_port}" if self.debug_port else None

    def ready(self) -> bool:
        """Answers ``GET /v2/`` (200, or 401 when it wants credentials)."""
        import socket
        import ssl

        try:
            with socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.5) as raw:
                s: socket.socket = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=self.ca)
                    if self.ca is None:  # only "is it up?": the caller verifies for real
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                    s = context.wrap_socket(raw, server_hostname="127.0.0.1")
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = s.recv(64)
                return head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 401"))
        except OSError:  # ssl.SSLError included
            return False


def write_htpasswd(
    path: str | os.PathLike[str], users: Mapping[str, str], *, rounds: int = 4
) -> str:
    """Write an htpasswd file of bcrypt entries (``user:$2b$…``) for ``users``
    (name → password) and return its path. ``rounds`` is bcrypt's cost: the lowest (4)
    keeps tests fast; ``htpasswd -B`` uses 5, and real files should use 10 or more."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()}"
        for user, password in users.items()
    ]
    target = Path(path)
    target.write_text("\n".join(lines) + "\n")
    target.chmod(0o600)
    return str(target)


class Worker(Service):
    """A ``celery -A workers.app worker`` subprocess on every queue (``queues``: fewer,
    comma-separated, as ``-Q`` takes them)."""

    def __init__(
        self,
        env: Mapping[str, str],
        logfile: str | os.PathLike[str],
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
        queues: str = WORKER_QUEUES,
    ) -> None:
        self.celery_log = Path(logfile)
        self.concurrency = concurrency
        self.name = f"ingest-{uuid.uuid4().hex[:8]}@localhost"
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            queues,
            "-n",
            self.name,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "--loglevel",
            "INFO",
            "-f",
            str(self.celery_log),
            "--without-mingle",
            "--without-gossip",
            *extra_args,
        ]
        # The banner and anything printed before logging is set up go next to the log.
        super().__init__(args, env, self.celery_log.with_name(self.celery_log.name + ".out"))
        self._log_offset = 0

    @property
    def waits_until_ready(self) -> bool:
        return True

    def ready(self) -> bool:
        return " ready." in self.log()

    def start(self, timeout: float = 60.0) -> Self:
        self._log_offset = self.celery_log.stat().st_size if self.celery_log.exists() else 0
        return super().start(timeout)

    def log(self) -> str:
        """What the worker logged since this start."""
        try:
            with open(self.celery_log, encoding="utf-8", errors="replace") as f:
                f.seek(self._log_offset)
                return f.read()
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        """PIDs of the pool processes (direct children of the worker)."""
        out: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return out

    def stop(self, timeout: float = 20.0) -> None:
        # Warm shutdown lets a running verification finish (or be requeued).
        super().stop(timeout)
