"""The main job, end to end on one machine: ``python -m devtools.demo``.

Starts a private Redis (unless ``REDIS_URL`` is set), a real Celery worker and
the HTTP frontend, then ingests a sample blob through the Python API -- chunked
writes, finish, verification on the worker, commit -- and prints the committed
result. It also shows a rejected claim (DIGEST_INVALID, kept for retry) and its
retry, pushes a blob over the OCI API, and then keeps serving the registry at
the printed URL until interrupted (``--exit`` stops after the demo).

Everything listens on loopback. The registry runs with ``INGEST_AUTH=none`` (open:
a demo on this machine, and ``ingest push`` sends no credentials); Flower always
authenticates, with a password made for this run and printed with its URL.

Ctrl-C, SIGTERM and SIGHUP stop every process it started (each runs in a session of
its own, so only the demo can), and the temporary storage and logs it made are
removed on the way out (``--keep`` keeps them and says where they are).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from devtools.devstack import Frontend, Service, Worker
from devtools.localredis import LocalRedis, free_port
from ingest.api import Ingest
from ingest.config import Settings, mask_url
from ingest.errors import IngestError


def _sample(size: int) -> bytes:
    # Deterministic, incompressible-looking bytes without holding a PRNG state.
    out = bytearray()
    block = hashlib.sha256(b"verified-ingest demo").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", help="storage root (default: a fresh temporary directory)")
    parser.add_argument("--size", type=int, default=8 << 20, help="sample blob size in bytes")
    parser.add_argument("--repository", default="demo/sample")
    parser.add_argument("--port", type=int, default=0, help="frontend port (default: 5000 or free)")
    parser.add_argument(
        "--exit", action="store_true", help="stop after the demo instead of serving"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary storage and logs on exit"
    )
    args = parser.parse_args(argv)

    _stop_on_signals()
    made = args.storage is None
    storage = args.storage or tempfile.mkdtemp(prefix="ingest-demo-")
    logs = Path(storage).parent / f"{Path(storage).name}.logs"
    try:
        return _run(args, storage, logs)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a signal (see _stop_on_signals)
        print("stopped")
        return 128 + (exc.args[0] if exc.args else signal.SIGINT)
    finally:
        # The with-blocks in _run have stopped every process by now; a signal now
        # would only cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if made and not args.keep:
            left = [str(p) for p in (Path(storage), logs) if not _remove(p)]
            print(
                f"could not remove {', '.join(left)}" if left else f"removed {storage} and {logs}"
            )
        else:
            print(f"kept: storage {storage}, logs {logs}")


def _stop_on_signals() -> None:
    """SIGTERM, SIGHUP and Ctrl-C raise KeyboardInterrupt (its argument: the signal),
    so the with-blocks unwind and stop every child; the default SIGTERM would end this
    process alone. Once: further signals are ignored while the children stop (a
    worker's warm shutdown takes a moment), so cleaning up is not cut short."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def _remove(path: Path) -> bool:
    """Remove a directory tree this run made; whether it is gone."""
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def _run(args: argparse.Namespace, storage: str, logs: Path) -> int:
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            # Password-protected like a real deployment; only the processes get the URL.
            redis_url = stack.enter_context(LocalRedis(password=secrets.token_hex(24))).url
        print(f"redis:   {mask_url(redis_url)}")
        print(f"storage: {storage}")
        env = {"REDIS_URL": redis_url, "INGEST_STORAGE_ROOT": storage}
        # Said explicitly: `ingest serve` refuses to start without INGEST_AUTH.
        frontend_env = {**env, "INGEST_AUTH": "none"}
        worker = stack.enter_context(Worker(env, logs / "worker.log"))
        print(f"worker:  pid {worker.pid} ({worker.name})")
        port = args.port or (5000 if _port_free(5000) else free_port())
        frontend = stack.enter_context(
            Frontend(
                frontend_env,
                logs / "frontend.log",
                port=port,
                debug_port=5001 if _port_free(5001) else None,
            )
        )
        print(f"registry: {frontend.url} (INGEST_AUTH=none: open, demo only; logs in {logs})")
        print(f"debug:    {frontend.debug_url}/metrics  {frontend.debug_url}/health")
        flower_port = 5555 if _port_free(5555) else free_port()
        celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
        # Flower's API can revoke tasks and shut workers down: it always authenticates.
        # The credentials go in its environment, not its command line (`ps` shows that).
        flower_password = secrets.token_urlsafe(18)
        stack.enter_context(
            Service(
                [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"],
                {**env, "FLOWER_BASIC_AUTH": f"admin:{flower_password}"},
                logs / "flower.log",
                port=flower_port,
            )
        )
        flower_url = f"http://127.0.0.1:{flower_port}"
        print(f"flower:   {flower_url} (user admin, password {flower_password})")
        stack.enter_context(
            Service(
                [*celery, "beat", "--schedule", str(logs / "celerybeat-schedule")],
                env,
                logs / "beat.log",
            )
        )

        ing = Ingest.from_settings(Settings.from_env({**os.environ, **env}))
        data = _sample(args.size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        up = ing.start_upload(args.repository)
        for i in range(0, len(data), 1 << 20):
            up.write_at(i, data[i : i + (1 << 20)])
        ticket = up.finish(digest, size=len(data))
        result = ticket.wait(timeout=60)
        print("committed:")
        print(json.dumps(result, indent=2, sort_keys=True))

        with ing.open(args.repository, digest) as blob:
            assert hashlib.sha256(blob.read()).hexdigest() == digest.split(":", 1)[1]
        print(f"read back {len(data)} bytes from {args.repository}@{digest[:19]}…: ok")

        # A wrong claim is rejected with a stable code and kept for retry.
        bad = ing.start_upload(args.repository)
        bad.write(b"not what was claimed")
        try:
            bad.finish(digest).wait(timeout=60)
        except IngestError as exc:
            print(f"rejected: {exc.code} {json.dumps(exc.detail, sort_keys=True)}")
        right = "sha256:" + hashlib.sha256(b"not what was claimed").hexdigest()
        retried = ing.retry(bad.id, right).wait(timeout=60)
        print(f"retried with the right digest: {retried['status']} {retried['digest']}")

        pushed = _push_over_http(frontend.url, "demo/http", data[: 1 << 20])
        print(f"pushed over the OCI API: {pushed}")
        if frontend.debug_url:
            print(f"health: {_health(frontend.debug_url)}")
        if args.exit:
            return 0
        host = frontend.url.removeprefix("http://")
        print(
            f"\nServing {frontend.url} -- Ctrl-C to stop. In another shell:\n"
            f"  export INGEST_URL={frontend.url}\n"
            f"  .venv/bin/ingest push FILE --repo demo/files         # progress bars\n"
            f"  .venv/bin/ingest push FILE --digest sha256:{'0' * 64}  # DIGEST_INVALID\n"
            f"  .venv/bin/ingest status UPLOAD_ID; .venv/bin/ingest retry UPLOAD_ID --digest D\n"
            f"  skopeo copy --dest-tls-verify=false oci:DIR:TAG docker://{host}/REPO:TAG\n"
            f"  Flower: {flower_url} (user admin, password {flower_password})\n"
            f"  Health: curl {frontend.debug_url}/health"
        )
        while frontend.process is not None and frontend.process.poll() is None:
            time.sleep(1)
    return 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _health(debug_url: str) -> str:
    """The debug listener's deep check, in one line: each check and its latency."""
    host, port = debug_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/health")
        r = conn.getresponse()
        doc = json.loads(r.read())
    finally:
        conn.close()
    checks = ", ".join(
        f"{name} {c['status']} {c['latency_ms']:.0f} ms" for name, c in doc["checks"].items()
    )
    return f"{r.status} {doc['status']} ({checks})"


def _push_over_http(base: str, repository: str, data: bytes) -> str:
    """POST + PATCH + PUT ?digest= with the standard library, as any OCI client would."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", f"/v2/{repository}/blobs/uploads/")
        r = conn.getresponse()
        r.read()
        location = r.getheader("Location") or ""
        conn.request(
            "PATCH", location, body=data, headers={"Content-Type": "application/octet-stream"}
        )
        r = conn.getresponse()
        r.read()
        location = r.getheader("Location") or location
        conn.request("PUT", f"{location}?digest={digest}")
        r = conn.getresponse()
        r.read()
        return f"{r.status} {r.reason} {r.getheader('Docker-Content-Digest')}"
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
