"""The demo (``scripts/demo.sh`` runs ``python -m devtools.demo``) stops cleanly on
SIGTERM: every process it started is gone, their ports are free, and the temporary
directories it made are removed."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.localredis import RedisNotFound, find_redis_server, free_port
from tests.integration.conftest import REPO_ROOT, unavailable

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``: pid → its start time (a reused pid differs)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        started[child] = fields[19]
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] == started and fields[0] != "Z"


def _bound(port: int) -> bool:
    with socket.socket() as s:
        # TIME_WAIT leftovers of closed connections do not count; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_sigterm_stops_every_child_frees_every_port_and_removes_the_temp_dirs(
    tmp_path: Path,
) -> None:
    try:
        find_redis_server()
    except RedisNotFound as exc:
        unavailable(str(exc))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # its own Redis too
    env["TMPDIR"] = str(tmp)  # where it makes ingest-demo-* (and Redis its directory)
    demo = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo", "--size", "65536", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    children: dict[int, str] = {}
    try:
        out = ""
        deadline = time.monotonic() + 180
        while "Serving" not in out:
            assert demo.poll() is None, f"the demo exited early:\n{out}"
            assert time.monotonic() < deadline, f"the demo did not come up:\n{out}"
            with contextlib.suppress(queue.Empty):
                out += lines.get(timeout=1)
        time.sleep(1)  # the last line is printed after every service answered
        children = _descendants(demo.pid)
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)}
        # Redis, the worker (and its pool), the frontend, Flower and beat.
        assert len(children) >= 5, (children, out)
        assert len(ports) >= 4, out  # Redis, the registry, its debug listener, Flower
        assert all(_bound(p) for p in ports), out
        made = sorted(p.name for p in tmp.iterdir() if p.name.startswith("ingest-demo-"))
        assert made, list(tmp.iterdir())

        demo.send_signal(signal.SIGTERM)
        code = demo.wait(90)
        with contextlib.suppress(queue.Empty):
            while True:
                out += lines.get(timeout=0.5)

        survivors = [pid for pid, started in children.items() if _alive(pid, started)]
        assert survivors == [], out
        assert [p for p in ports if _bound(p)] == [], out
        assert sorted(p.name for p in tmp.iterdir()) == [], out
        assert f"removed {tmp / made[0]}" in out
        assert code == 128 + signal.SIGTERM  # it stopped by itself, as a shell expects
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid, started in children.items():
            if _alive(pid, started):  # only what this test started: the demo's children
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
