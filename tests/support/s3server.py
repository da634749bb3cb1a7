"""A real S3-compatible server for tests: ``moto_server`` in a subprocess on loopback.

A separate process speaking HTTP, so the driver's requests, retries and error
responses are real ones; nothing in the test process mocks the client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["ACCESS_KEY", "SECRET_KEY", "MotoServer", "S3ServerNotFound"]

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"  # noqa: S105 - the throwaway server's only credential


class S3ServerNotFound(RuntimeError):
    """moto_server is not installed (``pip install 'moto[server]'``)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``moto_server`` on a free loopback port; ``client()`` and ``env()`` reach it."""

    def __init__(self, log: Path | None = None) -> None:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        exe = exe or shutil.which("moto_server")
        if exe is None:
            raise S3ServerNotFound("moto_server is not installed: pip install 'moto[server]'")
        self._exe = exe
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        out = open(self._log, "ab") if self._log else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        self._proc = subprocess.Popen(
            [self._exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not listen on {self.url} within {timeout} s")

    def client(self) -> S3Client:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The ``INGEST_*`` settings of a process storing into ``bucket``."""
        return {
            "INGEST_STORAGE_DRIVER": "s3",
            "INGEST_S3_BUCKET": bucket,
            "INGEST_S3_PREFIX": prefix,
            "INGEST_S3_ENDPOINT": self.url,
            "INGEST_S3_ACCESS_KEY": ACCESS_KEY,
            "INGEST_S3_SECRET_KEY": SECRET_KEY,
            "INGEST_S3_ADDRESSING": "path",
        }

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._proc = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
