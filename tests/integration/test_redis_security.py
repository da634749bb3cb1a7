"""Least privilege in Redis, with real processes: a password, TLS, and hostile messages.

* A Redis with ``requirepass`` (and, when redis-server has TLS, TLS only, with or
  without client certificates) runs the whole pipeline: the worker (broker and
  result backend), the frontend (its pub/sub result waiter: the blob PUT gets 201),
  the purge lock (``ingest purge``), beat and Flower. No process logs the password;
  a client without it is refused with NOAUTH, one that does not trust the server's
  CA or speaks plain text gets nowhere.
* The broker is a trust boundary: messages sent straight to it with ``send_task``
  (a purge with ``older_than=-1``, a reconcile with ``grace=0``) end as FAILURE with
  the code UNSUPPORTED (ArgumentInvalid), and live uploads and queued verifications
  are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from celery import Celery

from devtools.devstack import Service
from devtools.localredis import LocalRedis, RedisNotFound, ServerTLS, find_redis_server, free_port
from ingest.errors import ArgumentInvalid
from ingest.queue import QUEUE_MAINTENANCE, QUEUE_VERIFY, TASK_PURGE, TASK_RECONCILE
from ingest.uploads import UploadState
from tests.integration.conftest import REPO_ROOT, Stack, unavailable
from tests.tlsfiles import TLSFiles, make_tls_files

pytestmark = pytest.mark.integration

T = TypeVar("T")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def poll(what: str, probe: Callable[[], T], timeout: float, logs: list[Path]) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            value = probe()
            if value:
                return value
        time.sleep(0.1)
    tails = "\n".join(
        f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists()
    )
    pytest.fail(f"{what}: not after {timeout} s\n{tails}")


def _tls_unavailable(binary: str, directory: Path) -> str | None:
    """Why this redis-server cannot serve TLS (None if it can)."""
    files = make_tls_files(directory)
    try:
        LocalRedis(
            binary=binary, tls=ServerTLS(files.server_cert, files.server_key, files.ca)
        ).start(timeout=5).stop()
    except RuntimeError as exc:
        return f"{binary} was built without TLS: {str(exc)[-300:]}"
    return None


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    try:
        binary = LocalRedis().binary
    except RedisNotFound as exc:
        unavailable(str(exc))
    reason = _tls_unavailable(binary, directory / "probe")
    if reason:
        pytest.skip(reason)
    return make_tls_files(directory)


MODES = ["password", "password+tls", "password+mutual-tls"]


@pytest.fixture(params=MODES)
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalRedis, dict[str, str], TLSFiles | None]]:
    """A password-protected LocalRedis (TLS only in the tls modes) and the settings
    every process needs to reach it."""
    mode: str = request.param
    files: TLSFiles | None = None
    env: dict[str, str] = {}
    tls: ServerTLS | None = None
    if "tls" in mode:
        files = request.getfixturevalue("tls_files")
        mutual = mode.endswith("mutual-tls")
        tls = ServerTLS(files.server_cert, files.server_key, files.ca, require_client_cert=mutual)
        env["INGEST_REDIS_TLS_CA"] = files.ca
        if mutual:
            env["INGEST_REDIS_TLS_CERT"] = files.client_cert
            env["INGEST_REDIS_TLS_KEY"] = files.client_key
    try:
        server = LocalRedis(password=secrets.token_hex(24), tls=tls).start()
    except (RedisNotFound, RuntimeError) as exc:
        unavailable(f"cannot start a private redis-server: {exc}")
    try:
        yield server, env, files
    finally:
        server.stop()


def _raw_ping(server: LocalRedis, files: TLSFiles | None, *, client_cert: bool) -> bytes:
    """PING on a fresh connection without AUTH; the server's first answer."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with contextlib.closing(sock):
        conn: socket.socket = sock
        if files is not None:
            ctx = ssl.create_default_context(cafile=files.ca)
            if client_cert:
                ctx.load_cert_chain(files.client_cert, files.client_key)
            conn = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        conn.sendall(b"PING\r\n")
        return conn.recv(64)


def test_a_password_protected_redis_runs_the_whole_pipeline_and_refuses_strangers(
    secured: tuple[LocalRedis, dict[str, str], TLSFiles | None], tmp_path: Path
) -> None:
    server, tls_env, files = secured
    assert server.password is not None
    password = server.password
    mutual = "INGEST_REDIS_TLS_CERT" in tls_env
    stack = Stack(server.url, tmp_path, INGEST_RECONCILE_INTERVAL="1", **tls_env)
    env = stack.env
    names = ("worker-0.log", "worker-0.log.out", "frontend.log", "beat.log", "flower.log")
    logs = [tmp_path / n for n in names]
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    flower_port = free_port()
    services = [
        Service(
            [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"],
            {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
            tmp_path / "flower.log",
            port=flower_port,
        ),
        Service(
            [*celery, "beat", "--schedule", str(tmp_path / "celerybeat-schedule")],
            env,
            tmp_path / "beat.log",
        ),
    ]
    try:
        worker = stack.worker()
        frontend = stack.frontend()
        for service in services:
            service.start()

        # The frontend answers the finishing PUT from the verification's result, which
        # it awaits on the result backend's pub/sub channel: 201 proves broker, worker,
        # backend and waiter all got through.
        blob = os.urandom(200_000)
        with httpx.Client(base_url=frontend.url, timeout=60) as http:
            r = http.post("/v2/secure/blob/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = http.put(r.headers["Location"], params={"digest": sha256(blob)}, content=blob)
            assert r.status_code == 201, r.text
            assert r.headers["Docker-Content-Digest"] == sha256(blob)
        with stack.ingest.open("secure/blob", sha256(blob)) as stored:
            assert stored.read() == blob

        # The purge lock (the CLI takes it in Redis).
        run = subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--json", "purge", "--dry-run"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["dry_run"] is True

        # Beat sends reconcile every second; the worker runs it.
        ran = re.compile(rf"Task {re.escape(TASK_RECONCILE)}\[[0-9a-f-]+\] succeeded in")
        poll("beat → broker → worker runs reconcile", lambda: ran.search(worker.log()), 30, logs)
        # Flower's broker view connects to Redis itself (broker_use_ssl for TLS).
        flower = f"http://127.0.0.1:{flower_port}"

        def queue_lengths() -> list[dict[str, Any]]:
            r = httpx.get(f"{flower}/api/queues/length", timeout=10)
            assert r.status_code == 200, r.text
            active: list[dict[str, Any]] = r.json()["active_queues"]
            return active

        poll("flower reads the queue lengths", queue_lengths, 30, logs)

        # No process wrote the password anywhere (Celery masks URLs in banners and
        # errors; our Settings mask it in their repr).
        for path in logs:
            assert password not in path.read_text(errors="replace"), path.name
        banner = (tmp_path / "worker-0.log.out").read_text(errors="replace")
        assert f"://:**@127.0.0.1:{server.port}/" in banner  # the worker did show its broker
        assert password not in run.stdout + run.stderr
    finally:
        for service in services:
            service.stop()
        stack.close()

    # Strangers: without the password, Redis answers NOAUTH and accepts no task.
    assert _raw_ping(server, files, client_cert=mutual).startswith(b"-NOAUTH")
    no_password = server.url.replace(f":{password}@", "")
    tls_options = stack.settings.redis_ssl_options() if files else {}
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(no_password, **tls_options).ping()
    wrong = server.url.replace(password, "not-the-password")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(wrong, **tls_options).ping()
    stranger = Celery("stranger", broker=no_password, set_as_current=False)
    if files:
        stranger.conf.broker_use_ssl = tls_options
    with pytest.raises(Exception, match=r"(?i)auth"):
        stranger.send_task(TASK_PURGE, kwargs={"older_than": 7200}, queue=QUEUE_MAINTENANCE)
    with redis.Redis.from_url(server.url, **tls_options) as client:
        assert client.llen(QUEUE_MAINTENANCE) == 0

    if files is not None:
        # Plain text to the TLS port, or TLS without trusting its CA: no connection.
        plain = server.url.replace("rediss://", "redis://")
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(plain, socket_timeout=5).ping()
        untrusting = {**tls_options, "ssl_ca_certs": files.other_ca}
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            redis.Redis.from_url(server.url, **untrusting).ping()
        if mutual:
            no_cert = {
                k: v for k, v in tls_options.items() if k not in ("ssl_certfile", "ssl_keyfile")
            }
            with pytest.raises(redis.exceptions.ConnectionError):
                redis.Redis.from_url(server.url, **no_cert).ping()


# -- hostile messages straight to the broker -------------------------------------------


def _raw_client(stack: Stack) -> Celery:
    """Anyone with the broker's URL: a bare Celery app, none of our client code."""
    app = Celery("raw", broker=stack.redis_url, backend=stack.redis_url, set_as_current=False)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    return app


def test_hostile_maintenance_messages_fail_and_live_uploads_and_queued_work_survive(
    stack: Stack,
) -> None:
    # Only the maintenance queue is consumed, so a verification stays queued.
    worker = stack.worker(extra_args=("-Q", QUEUE_MAINTENANCE))
    ing = stack.ingest
    live = []
    for i in range(8):
        up = ing.start_upload("hostile/live")
        up.write(f"first chunk of upload {i} ".encode())
        up.close()
        live.append(up.id)
    queued_data = b"waiting for a verify worker"
    queued = ing.start_upload("hostile/queued")
    queued.write(queued_data)
    ticket = queued.finish(sha256(queued_data))
    with redis.Redis.from_url(stack.redis_url) as r:
        assert r.llen(QUEUE_VERIFY) == 1

    raw = _raw_client(stack)
    hostile: list[tuple[str, dict[str, Any]]] = [
        (TASK_PURGE, {"older_than": -1}),
        (TASK_PURGE, {"older_than": 0}),
        (TASK_PURGE, {"older_than": math.nan}),
        (TASK_PURGE, {"older_than": 7200, "dry_run": 0}),
        (TASK_RECONCILE, {"grace": 0}),
        (TASK_RECONCILE, {"grace": -3600}),
    ]
    for name, kwargs in hostile:
        res = raw.send_task(name, kwargs=kwargs, queue=QUEUE_MAINTENANCE)
        res.get(timeout=60, propagate=False)
        assert res.state == "FAILURE", (name, kwargs, res.result)
        assert isinstance(res.result, ArgumentInvalid), (name, kwargs, res.result)
        assert res.result.code == "UNSUPPORTED"
        assert res.result.detail["argument"] in ("older_than", "dry_run", "grace")

    # Every live upload is still there, open, and can be finished.
    for upload_id in live:
        assert ing.status(upload_id).state == UploadState.OPEN.value
    # The queued verification was not sent again.
    with redis.Redis.from_url(stack.redis_url) as r:
        assert r.llen(QUEUE_VERIFY) == 1
    assert ing.status(queued.id).state == UploadState.FINISHING.value
    assert "refused ingest.purge_uploads" in worker.log()

    # Well-formed housekeeping still works: a purge at the floor removes nothing live.
    res = raw.send_task(TASK_PURGE, kwargs={"older_than": 3600}, queue=QUEUE_MAINTENANCE)
    summary = res.get(timeout=60)
    assert summary["removed_count"] == 0
    assert summary["kept_recent"] == len(live)

    # And the queued verification commits once a verify worker comes up.
    stack.worker()
    assert ticket.wait(timeout=60)["canonical_digest"] == sha256(queued_data)
    resumed = ing.resume("hostile/live", live[0])
    resumed.write(b"and the rest")
    data = b"first chunk of upload 0 and the rest"
    assert resumed.finish(sha256(data)).wait(timeout=60)["status"] == "committed"


# -- the demo and the compose file -----------------------------------------------------

_UNMASKED = re.compile(r"rediss?://[^/\s@]*:(?!\*\*)[^@\s/]+@")  # a URL with a real password


def test_the_demo_runs_its_own_redis_with_a_password_it_never_prints(tmp_path: Path) -> None:
    try:
        find_redis_server()
    except RedisNotFound as exc:
        unavailable(str(exc))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    storage = tmp_path / "storage"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.demo",
            "--exit",
            "--size",
            str(1 << 20),
            "--storage",
            str(storage),
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pushed over the OCI API: 201 Created" in run.stdout
    redis_line = next(line for line in run.stdout.splitlines() if line.startswith("redis:"))
    assert re.fullmatch(r"redis:\s+redis://:\*\*\*@127\.0\.0\.1:\d+/0", redis_line), redis_line
    outputs = {"stdout": run.stdout, "stderr": run.stderr}
    outputs |= {
        p.name: p.read_text(errors="replace") for p in (tmp_path / "storage.logs").glob("*.log*")
    }
    assert set(outputs) >= {"stdout", "worker.log", "frontend.log", "flower.log", "beat.log"}
    for name, text in outputs.items():
        assert not _UNMASKED.search(text), name


def test_the_compose_redis_health_check_passes_only_with_the_password(tmp_path: Path) -> None:
    import yaml

    real = shutil.which("redis-cli")
    if real is None:
        unavailable("redis-cli is not installed (scripts/test.sh installs redis-tools)")
    compose = Path(__file__).resolve().parents[2] / "docker-compose.yml"
    test = yaml.safe_load(compose.read_text())["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    try:
        server = LocalRedis(password=secrets.token_hex(16)).start()
    except (RedisNotFound, RuntimeError) as exc:
        unavailable(f"cannot start a private redis-server: {exc}")
    try:
        # The container's redis-cli talks to its own server: point ours at the test's.
        shim = tmp_path / "redis-cli"
        shim.write_text(f'#!/bin/sh\nexec {real} -p {server.port} "$@"\n')
        shim.chmod(0o755)
        base = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
        base.pop("REDISCLI_AUTH", None)

        def check(**env: str) -> int:
            cmd = ["sh", "-c", test[1]]
            return subprocess.run(cmd, env={**base, **env}, timeout=30, check=False).returncode

        assert check(REDISCLI_AUTH=server.password or "") == 0
        assert check(REDISCLI_AUTH="wrong") != 0
        assert check() != 0
    finally:
        server.stop()
