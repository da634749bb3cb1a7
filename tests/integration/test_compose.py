"""docker-compose.yml: it validates, and the commands it runs work as plain processes.

There is no container engine here. Debian's ``docker-compose`` (1.29) validates
and resolves the file without one; the second test runs each service's own
``command`` (read from the file, so the two cannot drift) against the test Redis,
on loopback and free ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from devtools.devstack import write_htpasswd
from devtools.localredis import free_port
from ingest.config import Settings
from ingest.queue import TASK_RECONCILE
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TLS_OVERRIDE = ROOT / "docker-compose.tls.yml"
SERVICES = {"redis", "frontend", "worker", "beat", "flower"}
#: Started only with `--profile s3` (docker-compose 1.29's `config` lists them anyway).
S3_PROFILE = {"minio", "minio-bucket"}
INGEST_ROLES = ("frontend", "worker", "beat")
FLOWER_AUTH = "ops:test-only-password"
REGISTRY_USER = ("alice", "test-only-registry-password")
REDIS_PASSWORD = "0123456789abcdef-test-only"  # noqa: S105 - a test value
RECONCILE_ENTRY = "reconcile-stuck-verifications"  # the beat_schedule key in workers/app.py

T = TypeVar("T")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        if _in_ci():
            pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
        pytest.skip("docker-compose is not installed")
    return path


def _compose_config(env: dict[str, str], *overrides: Path) -> subprocess.CompletedProcess[str]:
    files = [arg for f in (COMPOSE_FILE, *overrides) for arg in ("-f", str(f))]
    return subprocess.run(
        [_docker_compose(), *files, "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Volume and bind mounts of a service, source → target (short or long syntax)."""
    return {source: target for source, target, _ in _mount_modes(service)}


def _mount_modes(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Mounts as (source, target, mode): mode ``ro`` or ``rw``."""
    out: list[tuple[str, str, str]] = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            out.append((parts[0], parts[1], mode))
        else:
            out.append((v["source"], v["target"], "ro" if v.get("read_only") else "rw"))
    return out


def _ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Published ports as (host_ip, published, target), short or long syntax."""
    out: list[tuple[str, int, int]] = []
    for p in service.get("ports", []):
        if isinstance(p, str):
            host_ip, published, target = p.split("/")[0].split(":")
            out.append((host_ip, int(published), int(target)))
        else:
            out.append((p.get("host_ip", ""), int(p["published"]), int(p["target"])))
    return out


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def test_compose_file_validates_and_wires_the_services(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLOWER_", "COMPOSE_", "REDIS_PASSWORD", "INGEST_"))
    }

    # Flower's credentials and Redis's password are mandatory: no default ships.
    missing = _compose_config({**env, "REDIS_PASSWORD": REDIS_PASSWORD})
    assert missing.returncode != 0
    assert "FLOWER_BASIC_AUTH" in missing.stdout + missing.stderr
    missing = _compose_config({**env, "FLOWER_BASIC_AUTH": FLOWER_AUTH})
    assert missing.returncode != 0
    assert "REDIS_PASSWORD" in missing.stdout + missing.stderr

    run = _compose_config(
        {**env, "FLOWER_BASIC_AUTH": FLOWER_AUTH, "REDIS_PASSWORD": REDIS_PASSWORD}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    config = yaml.safe_load(run.stdout)
    services: dict[str, dict[str, Any]] = config["services"]
    assert set(services) == SERVICES | S3_PROFILE
    for name in S3_PROFILE:  # optional, and never published
        svc = services.pop(name)
        assert svc["profiles"] == ["s3"], name
        assert "ports" not in svc, name
    # Filesystem storage unless the operator switches to S3; the values parse as settings.
    assert Settings.from_env(services["worker"]["environment"]).storage_driver == "filesystem"

    # One named volume for blob storage, at the same path, which is INGEST_STORAGE_ROOT.
    assert set(config["volumes"]) == {"storage", "redis-data"}
    storage_paths = {_mounts(services[s]).get("storage") for s in INGEST_ROLES}
    assert len(storage_paths) == 1, storage_paths
    (storage_path,) = storage_paths
    assert storage_path is not None
    for name in INGEST_ROLES:
        assert services[name]["environment"]["INGEST_STORAGE_ROOT"] == storage_path
    assert "storage" not in _mounts(services["flower"])
    assert "storage" not in _mounts(services["redis"])

    for name in SERVICES - {"redis"}:
        svc = services[name]
        # Every client authenticates: the password is in the URL it connects with.
        assert svc["environment"]["REDIS_URL"] == f"redis://:{REDIS_PASSWORD}@redis:6379/0", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert svc["image"] == "verified-ingest:latest", name

    redis_svc = services["redis"]
    assert redis_svc["image"].startswith("redis:7")
    redis_cmd = _command(redis_svc)
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert _mounts(redis_svc) == {"redis-data": "/data"}
    assert redis_cmd[redis_cmd.index("--requirepass") + 1] == REDIS_PASSWORD
    assert "ports" not in redis_svc  # reachable by the services only
    # The health check authenticates (REDISCLI_AUTH) and wants a PONG: redis-cli
    # exits 0 on a NOAUTH error too.
    assert redis_svc["environment"]["REDISCLI_AUTH"] == REDIS_PASSWORD
    assert _command_of_healthcheck(redis_svc) == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]

    frontend = services["frontend"]
    assert _ports(frontend) == [("127.0.0.1", 5000, 5000)]  # the debug port is not published
    # Every request authenticates against a mounted (read-only) bcrypt htpasswd file.
    fe_env = frontend["environment"]
    assert fe_env["INGEST_AUTH"] == "htpasswd"
    htpasswd = fe_env["INGEST_AUTH_HTPASSWD"]
    auth_mounts = [
        (src, target, mode)
        for src, target, mode in _mount_modes(frontend)
        if htpasswd.startswith(target.rstrip("/") + "/")
    ]
    assert len(auth_mounts) == 1, _mount_modes(frontend)
    auth_source, _, auth_mode = auth_mounts[0]
    assert auth_mode == "ro"
    assert auth_source == str(ROOT / "auth")  # ./auth next to the compose file
    assert Settings.from_env(fe_env).auth == "htpasswd"  # the values parse as settings
    # Deletes are off and writes on, unless the operator says otherwise.
    assert fe_env["INGEST_DELETE_ENABLED"] == "false"
    assert fe_env["INGEST_READ_ONLY"] == "false"
    # The debug listener on the container's loopback; the health check asks it.
    assert fe_env["INGEST_DEBUG_ADDR"] == "127.0.0.1:5001"
    assert "http://127.0.0.1:5001/health" in " ".join(_command_of_healthcheck(frontend))
    assert "INGEST_TLS_CERT" not in fe_env  # plain HTTP unless docker-compose.tls.yml
    for name in SERVICES - {"frontend"}:
        assert "INGEST_AUTH" not in services[name].get("environment", {}), name

    worker = services["worker"]  # scalable: nothing that must be unique per container
    assert "container_name" not in worker
    assert "ports" not in worker
    assert _command(worker) == ["ingest", "worker"]

    flower = services["flower"]
    assert _ports(flower) == [("127.0.0.1", 5555, 5555)]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == FLOWER_AUTH
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert "--address=0.0.0.0" in _command(flower)

    for name, svc in services.items():
        for host_ip, _, _ in _ports(svc):
            assert host_ip == "127.0.0.1", f"{name} is published beyond loopback"


def test_the_tls_override_mounts_a_certificate_and_key_for_the_frontend() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "INGEST_"))},
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "REDIS_PASSWORD": REDIS_PASSWORD,
    }
    run = _compose_config(env, TLS_OVERRIDE)
    assert run.returncode == 0, run.stdout + run.stderr
    services: dict[str, dict[str, Any]] = yaml.safe_load(run.stdout)["services"]
    frontend = services["frontend"]
    fe_env = frontend["environment"]
    mounts = {target: (src, mode) for src, target, mode in _mount_modes(frontend)}
    assert mounts["/etc/ingest/tls"] == (str(ROOT / "tls"), "ro")
    assert fe_env["INGEST_TLS_CERT"] == "/etc/ingest/tls/tls.crt"
    assert fe_env["INGEST_TLS_KEY"] == "/etc/ingest/tls/tls.key"
    # The override adds to the frontend: authentication, storage and ports stay.
    assert fe_env["INGEST_AUTH"] == "htpasswd"
    assert mounts["/var/lib/ingest/storage"][0] == "storage"
    assert _ports(frontend) == [("127.0.0.1", 5000, 5000)]
    assert set(services) == SERVICES | S3_PROFILE
    for name in SERVICES - {"frontend"}:
        assert "INGEST_TLS_CERT" not in services[name].get("environment", {}), name


def _command_of_healthcheck(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return [str(t) for t in test] if isinstance(test, list) else ["CMD-SHELL", test]


# -- the services' commands as local processes --------------------------------------------


def _local(cmd: list[str], tmp: Path) -> tuple[list[str], int | None]:
    """The compose command made local: venv executables, loopback, a free port, tmp paths."""
    bindir = Path(sys.executable).parent
    exe = bindir / cmd[0]
    out = [str(exe) if exe.exists() else cmd[0]]
    port: int | None = None
    args = iter(cmd[1:])
    for arg in args:
        if arg in ("--port", "--host", "--schedule"):
            value = next(args)
            if arg == "--port":
                port = free_port()
                value = str(port)
            elif arg == "--host":
                value = "127.0.0.1"
            else:
                value = str(tmp / Path(value).name)
            out += [arg, value]
        elif arg.startswith("--port="):
            port = free_port()
            out.append(f"--port={port}")
        elif arg.startswith("--address="):
            out.append("--address=127.0.0.1")
        else:
            out.append(arg)
    return out, port


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.log = name, args, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                args,
                env=env,
                cwd=log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"{self.name} exited with {self.process.returncode}:\n{self.text()[-3000:]}"
            )

    def stop(self) -> None:
        p = self.process
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _poll(what: str, probe: Callable[[], T], timeout: float, procs: list[Proc]) -> T:
    """Call ``probe`` until it returns something truthy, while every process stays up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        with contextlib.suppress(httpx.TransportError):
            value = probe()
            if value:
                return value
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name} ---\n{p.text()[-2000:]}" for p in procs)
    pytest.fail(f"{what}: not after {timeout} s\n{logs}")


@contextlib.contextmanager
def _running(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def test_the_compose_commands_run_the_pipeline_locally(stack: Stack) -> None:
    with open(COMPOSE_FILE) as f:
        services: dict[str, dict[str, Any]] = yaml.safe_load(f)["services"]
    # The frontend's own settings from the file, with its paths made local: the
    # htpasswd file, and a free debug port (many frontends share this host).
    fe_env = {k: str(v) for k, v in services["frontend"]["environment"].items()}
    assert "${" not in fe_env["INGEST_AUTH"]
    user, password = REGISTRY_USER
    debug_port = free_port()
    local_frontend = {
        **{k: v for k, v in fe_env.items() if k.startswith("INGEST_") and "${" not in v},
        "INGEST_AUTH_HTPASSWD": write_htpasswd(stack.root / "htpasswd", {user: password}),
        "INGEST_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
        "INGEST_STORAGE_ROOT": stack.env["INGEST_STORAGE_ROOT"],
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "INGEST_AUTH"))},
        **stack.env,
        "INGEST_RECONCILE_INTERVAL": "1",  # beat sends a reconcile every second
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
    }
    procs: list[Proc] = []
    ports: dict[str, int | None] = {}
    with _running(procs):
        # Flower first: it only sees events sent after it starts listening.
        for name in ("flower", "worker", "beat", "frontend"):
            args, ports[name] = _local(_command(services[name]), stack.root)
            proc_env = {**env, **local_frontend} if name == "frontend" else env
            procs.append(Proc(name, args, proc_env, stack.root / f"{name}.log"))
        frontend_url = f"http://127.0.0.1:{ports['frontend']}"
        flower_url = f"http://127.0.0.1:{ports['flower']}"

        # Frontend: /v2/ wants credentials; then a monolithic blob push with them
        # (POST, PUT ?digest= with the body).
        _poll(
            "frontend GET /v2/",
            lambda: httpx.get(f"{frontend_url}/v2/", timeout=2).status_code == 401,
            30,
            procs,
        )
        challenge = httpx.get(f"{frontend_url}/v2/", timeout=2).headers["www-authenticate"]
        assert challenge.startswith("Basic realm=")
        wrong = httpx.get(f"{frontend_url}/v2/", auth=(user, "nope"), timeout=5)
        assert wrong.status_code == 401
        worker = procs[1]
        _poll("worker ready", lambda: " ready." in worker.text(), 30, procs)
        blob = os.urandom(100_000)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        anonymous = httpx.post(f"{frontend_url}/v2/compose/test/blobs/uploads/", timeout=5)
        assert anonymous.status_code == 401
        with httpx.Client(base_url=frontend_url, timeout=30, auth=(user, password)) as http:
            r = http.post("/v2/compose/test/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = http.put(r.headers["Location"], params={"digest": digest}, content=blob)
            assert r.status_code == 201, r.text
            assert r.headers["Docker-Content-Digest"] == digest
            head = http.head(f"/v2/compose/test/blobs/{digest}")
            assert head.status_code == 200
            assert int(head.headers["Content-Length"]) == len(blob)
            # Deletes are off (INGEST_DELETE_ENABLED=false in the file).
            refused = http.delete(f"/v2/compose/test/blobs/{digest}")
            assert refused.status_code == 405
            assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"
        # Committed into the storage root the test gave the processes.
        with stack.ingest.open("compose/test", digest) as stored:
            assert stored.read() == blob

        # Beat → broker → worker: the reconcile task runs on its 1 s schedule.
        beat = procs[2]
        ran = re.compile(rf"Task {re.escape(TASK_RECONCILE)}\[[0-9a-f-]+\] succeeded in")
        _poll(
            "beat sends reconcile",
            lambda: f"Sending due task {RECONCILE_ENTRY} ({TASK_RECONCILE})" in beat.text(),
            20,
            procs,
        )
        _poll(
            "worker runs reconcile",
            lambda: ran.search(worker.text()),
            20,
            procs,
        )

        # The compose health check, run as the container would (on our debug port):
        # the broker, the storage and the worker all answer.
        check = _command_of_healthcheck(services["frontend"])
        assert check[0] == "CMD"
        probe = [
            str(Path(sys.executable)) if c == "python" else c.replace(":5001/", f":{debug_port}/")
            for c in check[1:]
        ]
        ran_check = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        assert ran_check.returncode == 0, ran_check.stderr
        health = httpx.get(f"http://127.0.0.1:{debug_port}/health", timeout=10).json()
        assert health["status"] == "ok", health

        # Flower: basic auth on the API, and it sees the reconcile tasks the worker ran.
        assert httpx.get(f"{flower_url}/api/workers", timeout=5).status_code == 401
        wrong = httpx.get(f"{flower_url}/api/tasks", auth=("ops", "nope"), timeout=5)
        assert wrong.status_code == 401
        flower_user, flower_password = FLOWER_AUTH.split(":", 1)

        def flower_saw_reconcile() -> bool:
            r = httpx.get(
                f"{flower_url}/api/tasks",
                params={"taskname": TASK_RECONCILE, "state": "SUCCESS"},
                auth=(flower_user, flower_password),
                timeout=5,
            )
            assert r.status_code == 200, r.text
            return bool(r.json())

        _poll("flower lists a reconcile task", flower_saw_reconcile, 20, procs)
