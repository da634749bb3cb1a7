"""Blob push throughput: our frontend + Celery verification vs the Go registries.

    .venv/bin/python bench/bench_push.py [--rounds 3] [--workloads mono-1g small-64k ...]
        [--peers v3,2.8] [--v3-bin /tmp/anchors-scratch/bin/registry-v3]
        [--go-config bench/peers/go-registry.yml] [--v3-config bench/peers/go-registry-v3.yml]
        [--scale 1.0] [--frontends 1] [--worker-concurrency 2] [--worker-pool prefork]
        [--worker-procs 1] [--tmpdir /tmp] [--profile DIR] [--drop-caches]

Starts, on 127.0.0.1 free ports in a temporary directory, and tears down at the end:

* ours: a private ``redis-server`` (devtools.localredis), ``--frontends`` uvicorn
  processes (``python -m ingest.cli serve --workers N``, with ``INGEST_AUTH=none``:
  open, like the Go peers) and ``--worker-procs`` Celery workers (devtools.devstack)
  with ``--worker-concurrency`` pool slots each;
* peer ``v3``: distribution v3 (``cmd/registry``, built from a snapshot of
  distribution/distribution by ``bench/peers/build_registry_v3.sh``, binary
  ``--v3-bin`` or ``$BENCH_V3_BIN``) serving a copy of ``--v3-config``
  (``$BENCH_V3_CONFIG``, default ``bench/peers/go-registry-v3.yml``) with its storage
  root and address rewritten, OpenTelemetry exporters off;
* peer ``2.8``: Debian's ``docker-registry serve`` (distribution 2.8.x) with
  ``--go-config`` (``$BENCH_GO_CONFIG``, default ``bench/peers/go-registry.yml``).

``--peers`` picks the peers (comma-separated); by default both, and a peer whose
binary or config file is missing is skipped with a note (on stderr at the start and
again under the tables). A peer named in ``--peers`` that is missing is an error
(exit 2) that names what is missing.

Workloads (``--scale`` multiplies the counts of the many-blob workloads and the
size of the single-blob ones):

* ``mono-1g``     1 x 1 GiB, POST then PUT ?digest= with the body (1 MiB send slices)
* ``chunked-1g``  1 x 1 GiB, POST, 16 MiB PATCHes (``Content-Range: a-b``), empty PUT
* ``small-64k``   1000 x 64 KiB monolithic, 8 concurrent connections
* ``medium-4m``   100 x 4 MiB monolithic, 4 concurrent connections

Each blob is distinct (a unique 32-byte prefix per side, round and blob, then a
shared random buffer), so no server can deduplicate; digests are computed before
the clock starts. The client is ``bench/httpclient.py`` (keep-alive, raw sockets,
one connection per thread). Only 201 counts as success for the final PUT.

Per workload and round the sides run one after the other, ours / v3 / 2.8, and
the order rotates every round (with three sides, each goes first once in three
rounds). Measured per run: wall time from the first POST to the last 201, the
server CPU seconds (utime+stime of every process in the server trees, from
/proc, as a delta around the run), and per blob the time from sending the
finishing PUT to its 201. After each run, untimed: every blob is
HEADed (200, Content-Length, Docker-Content-Digest), a sample is GOT and hashed
(all of them for single-blob workloads), then ``sync`` so neither side pays the
other's writeback. Medians over the rounds are printed as markdown tables:
throughput with the ratio ours/peer for every peer and server CPU; CPU by role
and server CPU per blob for every side; and finishing PUT → 201 latency, p50 and
p90 per side (per round over its blobs, then the median over the rounds) for the
workloads where it means the finish (not ``mono-1g``, whose PUT is the upload).

Exit status: 0 if every push and every verification succeeded, 1 otherwise,
2 if a server could not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from httpclient import Connection, HTTPError, Response, upload_target

from devtools.devstack import Worker
from devtools.localredis import LocalRedis, free_port

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
SLICE = MIB  # request bodies are streamed in slices of this size
PREFIX = 32  # unique bytes at the start of every blob
BASE_SIZE = 64 * MIB  # the shared random content after the prefix
SMALL_BODY = 256 * KIB  # bodies up to this size are built in one piece
#: The peers' configs and build script, in this repository (bench/peers/README.md).
PEERS_DIR = Path(__file__).resolve().parent / "peers"
GO_CONFIG = Path(os.environ.get("BENCH_GO_CONFIG") or PEERS_DIR / "go-registry.yml")
GO_BINARY = "docker-registry"
GO_V3_CONFIG = Path(os.environ.get("BENCH_V3_CONFIG") or PEERS_DIR / "go-registry-v3.yml")
GO_V3_BINARY = Path(os.environ.get("BENCH_V3_BIN") or "/tmp/anchors-scratch/bin/registry-v3")
GO_V3_BUILD = "bash bench/peers/build_registry_v3.sh GIT_DIR, see bench/peers/README.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- workloads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    label: str
    count: int
    size: int
    concurrency: int
    chunk: int | None = None  # None: monolithic PUT; else PATCH chunks of this size
    sample: int = 16  # blobs fetched and hashed by the verification

    def scaled(self, scale: float) -> Workload:
        if self.count == 1:
            size = max(MIB, int(self.size * scale) // MIB * MIB)
            return Workload(
                self.name, self.label, 1, size, self.concurrency, self.chunk, self.sample
            )
        count = max(self.concurrency, round(self.count * scale))
        return Workload(
            self.name, self.label, count, self.size, self.concurrency, self.chunk, self.sample
        )

    def describe(self) -> str:
        kind = "monolithic" if self.chunk is None else f"{_fmt_size(self.chunk)} PATCH chunks"
        conc = f", {self.concurrency} concurrent" if self.concurrency > 1 else ""
        return f"{self.count} x {_fmt_size(self.size)} {kind}{conc}"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("mono-1g", "1 x 1 GiB monolithic", 1, GIB, 1),
        Workload("chunked-1g", "1 x 1 GiB, 16 MiB chunks", 1, GIB, 1, chunk=16 * MIB),
        Workload("small-64k", "1000 x 64 KiB, 8 conc.", 1000, 64 * KIB, 8),
        Workload("medium-4m", "100 x 4 MiB, 4 conc.", 100, 4 * MIB, 4),
    )
}


def _fmt_size(n: int) -> str:
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n} B"


# -- content -----------------------------------------------------------------------------


class Content:
    """Blob bytes = 32-byte unique prefix + the shared random buffer, repeated.

    The buffer is extended by one slice so any slice-sized window is contiguous:
    slices are zero-copy memoryviews, except the first one (prefix + buffer).
    """

    def __init__(self, base_size: int = BASE_SIZE) -> None:
        base = os.urandom(base_size)
        self.base_size = base_size
        self.ext = memoryview(base + base[:SLICE])

    def slices(self, prefix: bytes, start: int, end: int) -> Iterator[bytes | memoryview]:
        """The bytes ``[start, end)`` of the blob with ``prefix``, in ≤ 1 MiB slices."""
        assert len(prefix) == PREFIX
        p = start
        while p < end:
            n = min(SLICE, end - p)
            if p < PREFIX:
                head = prefix[p:]
                rest = n - len(head)
                yield head + bytes(self.ext[:rest]) if rest > 0 else head[:n]
            else:
                off = (p - PREFIX) % self.base_size
                yield self.ext[off : off + n]
            p += n

    def whole(self, prefix: bytes, size: int) -> bytes:
        """The blob in one piece (small blobs only)."""
        return b"".join(self.slices(prefix, 0, size))

    def digest(self, prefix: bytes, size: int) -> str:
        h = hashlib.sha256()
        for piece in self.slices(prefix, 0, size):
            h.update(piece)
        return "sha256:" + h.hexdigest()


@dataclass(frozen=True, slots=True)
class Blob:
    index: int
    prefix: bytes
    size: int
    digest: str


def make_blobs(content: Content, wl: Workload, tag: str) -> list[Blob]:
    blobs = []
    for i in range(wl.count):
        prefix = hashlib.sha256(f"{tag}:{i}".encode()).digest()
        blobs.append(Blob(i, prefix, wl.size, content.digest(prefix, wl.size)))
    return blobs


# -- process CPU accounting ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw.rsplit(")", 1)[1].split()


def tree_pids(roots: list[int]) -> set[int]:
    """``roots`` and all their live descendants (by scanning /proc for ppids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(entry.name))
    seen: set[int] = set()
    todo = [r for r in roots if Path(f"/proc/{r}").exists()]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
    return seen


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system, all threads) of the trees under ``roots``,
    including children they already reaped (cutime/cstime)."""
    ticks = 0
    for pid in tree_pids(roots):
        f = _stat_fields(pid)
        if f is not None:
            # after ')': state ppid ... utime(11) stime(12) cutime(13) cstime(14)
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


# -- servers -------------------------------------------------------------------------------


class Server(Protocol):
    name: str
    port: int

    def pids(self) -> dict[str, list[int]]:
        """Role → root pids whose trees are the server's CPU."""

    def stop(self) -> None: ...


def _wait_http(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with Connection("127.0.0.1", port, timeout=2.0) as c:
                r = c.request("GET", "/v2/")
                if r.status == 200:
                    return
                last = f"GET /v2/ → {r.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(
        f"{what} not answering on port {port} after {timeout} s ({last}):\n{_tail(log)}"
    )


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group (started with start_new_session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class OursServer:
    """LocalRedis + uvicorn frontends + Celery workers sharing one storage root."""

    name = "ours"

    def __init__(
        self,
        root: Path,
        *,
        frontends: int,
        worker_procs: int,
        worker_concurrency: int,
        worker_pool: str,
        name: str = "ours",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.extra_env = dict(extra_env or {})  # e.g. INGEST_STORAGE_DRIVER=s3 (bench_s3_push)
        self.root = root
        self.port = free_port()
        self.frontends = frontends
        self.worker_procs = worker_procs
        self.worker_concurrency = worker_concurrency
        self.worker_pool = worker_pool
        self.redis: LocalRedis | None = None
        self.frontend: subprocess.Popen[bytes] | None = None
        self.workers: list[Worker] = []
        self.frontend_log = root / "frontend.log"

    def start(self) -> OursServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis = LocalRedis().start()
        repo_root = str(Path(__file__).resolve().parent.parent)
        env = {
            "REDIS_URL": self.redis.url,
            "INGEST_STORAGE_ROOT": str(self.root / "storage"),
            "PYTHONPATH": repo_root,
            # Open, like the Go registry it is measured against (no auth configured).
            "INGEST_AUTH": "none",
            **self.extra_env,
        }
        for i in range(self.worker_procs):
            w = Worker(
                env,
                self.root / f"worker{i}.log",
                concurrency=self.worker_concurrency,
                pool=self.worker_pool,
            )
            self.workers.append(w)
            w.start()
        with open(self.frontend_log, "ab") as log:
            self.frontend = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ingest.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.frontends),
                    "--debug-addr",
                    "off",  # nothing scrapes it here; and 127.0.0.1:5001 may be taken
                ],
                env={**os.environ, **env},
                cwd=repo_root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_http(self.port, self.frontend, "ingest serve", self.frontend_log, 60.0)
        return self

    def pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        if self.frontend is not None:
            out["frontend"] = [self.frontend.pid]
        out["worker"] = [w.pid for w in self.workers if w.process is not None]
        if self.redis is not None and self.redis.process is not None:
            out["redis"] = [self.redis.process.pid]
        return out

    def stop(self) -> None:
        errors: list[str] = []
        try:
            _stop_group(self.frontend)
        except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
            errors.append(f"frontend: {exc}")
        self.frontend = None
        for w in self.workers:
            try:
                w.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"worker: {exc}")
        self.workers = []
        if self.redis is not None:
            try:
                self.redis.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"redis: {exc}")
            self.redis = None
        if errors:
            print(f"warning: teardown of ours: {'; '.join(errors)}", file=sys.stderr)


class GoServer:
    """Debian's docker-registry (distribution 2.8.x) on a loopback port.

    ``name`` is the side's label in the output ("Go" unless told otherwise)."""

    name = "Go"
    what = GO_BINARY
    config_option = ("--go-config", "BENCH_GO_CONFIG")

    def __init__(self, root: Path, config: Path = GO_CONFIG, *, name: str | None = None) -> None:
        self.root = root
        self.config = config
        if name is not None:
            self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "registry.log"

    def binary(self) -> str:
        binary = shutil.which(GO_BINARY)
        if binary is None:
            raise RuntimeError(f"{GO_BINARY} not found on PATH (apt-get install docker-registry)")
        return binary

    def prepare(self) -> tuple[Path, dict[str, str]]:
        """The config file to serve and the environment added to ours."""
        return self.config, {
            "REGISTRY_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(self.root / "data"),
        }

    def start(self) -> GoServer:
        binary = self.binary()
        problem = config_problem(self.config, *self.config_option)
        if problem is not None:
            raise RuntimeError(f"{self.what}: {problem}")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config, extra = self.prepare()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)],
                env={**os.environ, **extra},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_http(self.port, self.proc, self.what, self.log, 30.0)
        return self

    def pids(self) -> dict[str, list[int]]:
        return {"registry": [self.proc.pid]} if self.proc is not None else {}

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None


def config_problem(path: Path, option: str, variable: str) -> str | None:
    """Why ``path`` cannot serve as a peer's config file, or None if it can."""
    if not path.is_file():
        return f"its config file {path} does not exist (choose one with {option} or ${variable})"
    return None


def v3_binary_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as the v3 registry binary, or None if it can."""
    if not path.is_file():
        return f"{path} does not exist (build it: {GO_V3_BUILD})"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


class GoV3Server(GoServer):
    """distribution v3 (``cmd/registry``, built by ``GO_V3_BUILD``) on a loopback port.

    Serves a copy of ``go-registry-v3.yml`` whose storage root and listen address
    are rewritten for this run, with OpenTelemetry's exporters off (v3 would
    otherwise try to export traces to a collector)."""

    name = "v3"
    what = "registry-v3"
    config_option = ("--v3-config", "BENCH_V3_CONFIG")

    def __init__(
        self,
        root: Path,
        binary: Path = GO_V3_BINARY,
        config: Path = GO_V3_CONFIG,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(root, config, name=name)
        self.binary_path = binary

    def binary(self) -> str:
        problem = v3_binary_problem(self.binary_path)
        if problem is not None:
            raise RuntimeError(f"v3 registry binary: {problem}")
        return str(self.binary_path)

    def prepare(self) -> tuple[Path, dict[str, str]]:
        text = self.config.read_text()
        for key, value in (
            ("rootdirectory", str(self.root / "data")),
            ("addr", f"127.0.0.1:{self.port}"),
        ):
            text, n = re.subn(
                rf"^(\s*{key}:).*$", rf"\g<1> {value}", text, count=0, flags=re.MULTILINE
            )
            if n != 1:
                raise RuntimeError(f"{self.config}: expected one '{key}:' line, found {n}")
        config = self.root / "config.yml"
        config.write_text(text)
        return config, {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }


def server_cpu(server: Server) -> dict[str, float]:
    return {role: tree_cpu(roots) for role, roots in server.pids().items()}


# -- pushing -------------------------------------------------------------------------------


class PushFailed(Exception):
    pass


@dataclass(slots=True)
class Timing:
    total: float = 0.0
    post: float = 0.0
    patch: float = 0.0
    put: float = 0.0


def _expect(r: Response, status: int, what: str) -> None:
    if r.status != status:
        raise PushFailed(f"{what} → {r.status} {r.reason}: {r.body[:300]!r}")


def push_blob(conn: Connection, content: Content, repo: str, blob: Blob, wl: Workload) -> Timing:
    """POST, then PUT with the body (or PATCH chunks + empty PUT); 201 or PushFailed."""
    t = Timing()
    t0 = time.perf_counter()
    r = conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    t1 = time.perf_counter()
    t.post = t1 - t0
    _expect(r, 202, "POST uploads/")
    location = r.header("location")
    if not location:
        raise PushFailed("POST uploads/ → 202 without Location")
    octet = {"Content-Type": "application/octet-stream"}
    if wl.chunk is None:
        target = upload_target(location, blob.digest)
        if blob.size <= SMALL_BODY:
            r = conn.request(
                "PUT", target, headers=octet, body=content.whole(blob.prefix, blob.size)
            )
        else:
            r = conn.request(
                "PUT",
                target,
                headers=octet,
                body_iter=content.slices(blob.prefix, 0, blob.size),
                content_length=blob.size,
            )
    else:
        for start in range(0, blob.size, wl.chunk):
            end = min(blob.size, start + wl.chunk)
            r = conn.request(
                "PATCH",
                upload_target(location),
                headers={**octet, "Content-Range": f"{start}-{end - 1}"},
                body_iter=content.slices(blob.prefix, start, end),
                content_length=end - start,
            )
            _expect(r, 202, f"PATCH {start}-{end - 1}")
            location = r.header("location")
            if not location:
                raise PushFailed(f"PATCH {start}-{end - 1} → 202 without Location")
        t2 = time.perf_counter()
        t.patch = t2 - t1
        t1 = t2
        r = conn.request("PUT", upload_target(location, blob.digest))
    t2 = time.perf_counter()
    t.put = t2 - t1
    t.total = t2 - t0
    _expect(r, 201, "final PUT")
    got = r.header("docker-content-digest")
    if got and got != blob.digest:
        raise PushFailed(f"final PUT → 201 with Docker-Content-Digest {got}, pushed {blob.digest}")
    return t


@dataclass(slots=True)
class RunResult:
    side: str
    workload: str
    round: int
    seconds: float
    bytes: int
    pushed: int
    cpu: dict[str, float]
    client_cpu: float
    timings: list[Timing] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    verify_failures: list[str] = field(default_factory=list)
    ok_blobs: list[Blob] = field(default_factory=list)

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.seconds

    @property
    def blobs_s(self) -> float:
        return self.pushed / self.seconds

    @property
    def server_cpu(self) -> float:
        return sum(self.cpu.values())


def run_pushes(
    server: Server,
    content: Content,
    wl: Workload,
    blobs: list[Blob],
    repo: str,
    timeout: float,
) -> tuple[float, list[tuple[Blob, Timing]], list[str]]:
    """Push ``blobs`` over ``wl.concurrency`` connections; (wall s, successes, failures)."""
    lock = threading.Lock()
    todo = iter(blobs)
    done: list[tuple[Blob, Timing]] = []
    failures: list[str] = []

    def next_blob() -> Blob | None:
        with lock:
            return next(todo, None)

    def worker() -> None:
        conn = Connection("127.0.0.1", server.port, timeout=timeout)
        try:
            while (blob := next_blob()) is not None:
                try:
                    t = push_blob(conn, content, repo, blob, wl)
                except (PushFailed, HTTPError, OSError) as exc:
                    conn.close()  # start the next blob on a fresh connection
                    with lock:
                        failures.append(f"blob {blob.index} ({blob.digest[:19]}…): {exc}")
                    continue
                with lock:
                    done.append((blob, t))
        finally:
            conn.close()

    threads = [
        threading.Thread(target=worker, name=f"push-{i}", daemon=True)
        for i in range(wl.concurrency)
    ]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0, done, failures


# -- verification --------------------------------------------------------------------------


def verify(server: Server, repo: str, blobs: list[Blob], sample: int, timeout: float) -> list[str]:
    """HEAD every blob; GET and hash ``sample`` of them (all single big blobs). Untimed."""
    problems: list[str] = []
    step = max(1, len(blobs) // max(1, sample))
    fetch = {b.index for b in blobs[::step][:sample]}
    with Connection("127.0.0.1", server.port, timeout=timeout) as conn:
        for b in blobs:
            target = f"/v2/{repo}/blobs/{b.digest}"
            try:
                r = conn.request("HEAD", target)
                if r.status != 200:
                    problems.append(f"HEAD blob {b.index} → {r.status}")
                    continue
                if r.header("content-length") != str(b.size):
                    problems.append(
                        f"HEAD blob {b.index}: Content-Length {r.header('content-length')!r}, "
                        f"expected {b.size}"
                    )
                if r.header("docker-content-digest") != b.digest:
                    problems.append(
                        f"HEAD blob {b.index}: Docker-Content-Digest "
                        f"{r.header('docker-content-digest')!r}, expected {b.digest}"
                    )
                if b.index not in fetch:
                    continue
                h = hashlib.sha256()
                r = conn.request("GET", target, sink=h.update)
                got = "sha256:" + h.hexdigest()
                if r.status != 200 or r.length != b.size or got != b.digest:
                    problems.append(
                        f"GET blob {b.index} → {r.status}, {r.length} bytes, {got}; "
                        f"expected {b.size} bytes, {b.digest}"
                    )
            except (HTTPError, OSError) as exc:
                problems.append(f"verify blob {b.index}: {exc}")
    return problems


# -- profiling -----------------------------------------------------------------------------


class Profiler:
    """Optional tracing during the runs: ``py-spy record`` (raw stacks) of our
    frontend and worker trees during our runs, and/or ``strace -c`` (syscall
    counts) of every server process on both sides. Both perturb the timings."""

    def __init__(self, pyspy_dir: Path | None = None, strace_dir: Path | None = None) -> None:
        self.pyspy_dir = pyspy_dir
        self.strace_dir = strace_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def _spawn(self, args: list[str], log: Path) -> None:
        with open(log, "wb") as err:
            self.procs.append(
                subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            )

    def start(self, server: Server, tag: str) -> None:
        started = False
        if self.pyspy_dir is not None and isinstance(server, OursServer):
            self.pyspy_dir.mkdir(parents=True, exist_ok=True)
            for role, roots in server.pids().items():
                if role == "redis":
                    continue
                for pid in roots:
                    out = self.pyspy_dir / f"{tag}-{role}-{pid}.txt"
                    self._spawn(
                        [
                            *(self.pyspy, "record", "--pid", str(pid), "--subprocesses"),
                            *("--rate", "250", "--format", "raw", "--idle", "--nonblocking"),
                            *("-o", str(out)),
                        ],
                        out.with_suffix(".log"),
                    )
                    started = True
        if self.strace_dir is not None:
            self.strace_dir.mkdir(parents=True, exist_ok=True)
            for role, roots in server.pids().items():
                out = self.strace_dir / f"{tag}-{server.name}-{role}.txt"
                pids = [a for pid in sorted(tree_pids(roots)) for a in ("-p", str(pid))]
                self._spawn(["strace", "-c", "-f", "-o", str(out), *pids], out.with_suffix(".log"))
                started = True
        if started:
            time.sleep(1.0)  # let the tracers attach

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


# -- driver --------------------------------------------------------------------------------


def drop_page_cache() -> None:
    """Empty the page cache (root only). On this VM, page-cache pages taken from
    memory the guest has not recently used cost the writer about twice the CPU
    (the frontend receives 1 GiB in ~2.2 s of CPU on a full cache, ~1.0 s after a
    drop), so a run's speed depends on what ran before it. Dropping before every
    run gives both sides the same, reproducible start."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_one(
    server: Server,
    content: Content,
    wl: Workload,
    rnd: int,
    nonce: str,
    timeout: float,
    profiler: Profiler,
    *,
    drop_caches: bool = False,
) -> RunResult:
    repo = f"bench/{wl.name}"
    blobs = make_blobs(content, wl, f"{nonce}:{server.name}:{wl.name}:{rnd}")  # untimed
    os.sync()  # start from clean page-cache writeback, whoever ran before
    if drop_caches:
        drop_page_cache()
    profiler.start(server, f"{wl.name}-r{rnd}")
    try:
        cpu0 = server_cpu(server)
        c0 = time.process_time()
        seconds, done, failures = run_pushes(server, content, wl, blobs, repo, timeout)
        c1 = time.process_time()
        cpu1 = server_cpu(server)
    finally:
        profiler.stop()
    result = RunResult(
        server.name,
        wl.name,
        rnd,
        seconds,
        sum(b.size for b, _ in done),
        len(done),
        {k: cpu1.get(k, 0.0) - v for k, v in cpu0.items()},
        c1 - c0,
        [t for _, t in done],
        failures,
    )
    ok = sorted((b for b, _ in done), key=lambda b: b.index)
    result.ok_blobs = ok
    sample = len(ok) if wl.count == 1 else wl.sample
    result.verify_failures = verify(server, repo, ok, sample, timeout)
    return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def print_run(r: RunResult) -> None:
    cpu = " ".join(f"{k}={v:.2f}" for k, v in r.cpu.items())
    lat = [t.total * 1000 for t in r.timings]
    post = [t.post * 1000 for t in r.timings]
    put = [t.put * 1000 for t in r.timings]
    status = (
        "ok"
        if not (r.failures or r.verify_failures)
        else (f"{len(r.failures)} push failures, {len(r.verify_failures)} verify failures")
    )
    print(
        f"  r{r.round} {r.side:4} {r.workload:10} {r.seconds:7.2f} s "
        f"{r.mib_s:8.1f} MiB/s {r.blobs_s:8.1f} blobs/s | server CPU {r.server_cpu:6.2f} s ({cpu}) "
        f"| client CPU {r.client_cpu:5.2f} s | blob p50 {_pct(lat, 0.5):.1f} ms "
        f"p95 {_pct(lat, 0.95):.1f} ms (POST p50 {_pct(post, 0.5):.1f}, PUT p50 "
        f"{_pct(put, 0.5):.1f}) | {status}",
        flush=True,
    )
    for msg in (r.failures + r.verify_failures)[:5]:
        print(f"      ! {msg}", flush=True)


def _median(rs: list[RunResult], f: Callable[[RunResult], float]) -> float:
    return statistics.median(f(r) for r in rs) if rs else float("nan")


def _cell(rs: list[RunResult], wl: Workload) -> str:
    mib = _median(rs, lambda r: r.mib_s)
    if wl.count == 1:
        return f"{mib:.0f} MiB/s"
    return f"{_median(rs, lambda r: r.blobs_s):.1f} blobs/s, {mib:.0f} MiB/s"


def _label(side: str) -> str:
    """A peer's column title: "Go" stays, "v3" becomes "Go v3"."""
    return side if side.startswith("Go") else f"Go {side}"


def _side(results: list[RunResult], wl: Workload, side: str) -> list[RunResult]:
    return [r for r in results if r.workload == wl.name and r.side == side]


def table(
    results: list[RunResult], workloads: list[Workload], peers: Sequence[str] = ("Go",)
) -> str:
    """Throughput and server CPU, medians over rounds; one ratio column per peer."""
    lines = [
        "| workload | ours | "
        + " | ".join(_label(n) for n in peers)
        + " | "
        + " | ".join(f"ratio ours/{n}" for n in peers)
        + " | our CPU s | "
        + " | ".join(f"{n} CPU s" for n in peers)
        + " |",
        "| --- " * (2 + 3 * len(peers)) + "| --- |",
    ]
    for wl in workloads:
        ours = _side(results, wl, "ours")
        sides = [_side(results, wl, n) for n in peers]
        if not ours or not any(sides):
            continue
        ratios = [
            f"**{_median(ours, lambda r: r.mib_s) / _median(rs, lambda r: r.mib_s):.2f}**"
            if rs
            else "n/a"
            for rs in sides
        ]
        bad = sum(len(r.failures) + len(r.verify_failures) for rs in (ours, *sides) for r in rs)
        flag = f" ⚠ {bad} failed" if bad else ""
        cells = [
            f"{wl.describe()}{flag}",
            _cell(ours, wl),
            *(_cell(rs, wl) if rs else "n/a" for rs in sides),
            *ratios,
            f"{_median(ours, lambda r: r.server_cpu):.2f}",
            *(f"{_median(rs, lambda r: r.server_cpu):.2f}" if rs else "n/a" for rs in sides),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_ROLES = ("frontend", "worker", "redis")


def _cpu_per_blob(rs: list[RunResult]) -> str:
    if not rs:
        return "n/a"
    return f"{_median(rs, lambda r: 1000 * r.server_cpu / max(1, r.pushed)):.2f}"


def cpu_breakdown(
    results: list[RunResult], workloads: list[Workload], peers: Sequence[str] = ("Go",)
) -> str:
    """Our CPU by role, and server CPU per pushed blob for every side (medians)."""
    lines = [
        "| workload | frontend CPU s | worker CPU s | redis CPU s | our CPU ms/blob | "
        + " | ".join(f"{n} CPU ms/blob" for n in peers)
        + f" | client CPU s (ours / {' / '.join(peers)}) |",
        "| --- " * (5 + len(peers)) + "| --- |",
    ]
    for wl in workloads:
        ours = _side(results, wl, "ours")
        sides = [_side(results, wl, n) for n in peers]
        if not ours or not any(sides):
            continue
        role = {k: statistics.median(r.cpu.get(k, 0.0) for r in ours) for k in _ROLES}
        client = " / ".join(
            f"{_median(rs, lambda r: r.client_cpu):.2f}" if rs else "n/a" for rs in (ours, *sides)
        )
        cells = [
            wl.name,
            f"{role['frontend']:.2f}",
            f"{role['worker']:.2f}",
            f"{role['redis']:.2f}",
            _cpu_per_blob(ours),
            *(_cpu_per_blob(rs) for rs in sides),
            client,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finish_latency(
    results: list[RunResult], workloads: list[Workload], peers: Sequence[str] = ("Go",)
) -> str:
    """Finishing PUT → 201, per blob: the time from sending the final PUT to its 201
    (``Timing.put``). Per round p50 and p90 over the round's blobs, then the median of
    each over the rounds. Shown for the many-blob workloads (the PUT carries the
    blob's body, sent with the head up to 256 KiB) and the chunked one (an empty PUT:
    the finish alone, one sample per round); not for ``mono-1g``, whose PUT is the
    whole upload."""
    lines = [
        "| workload | final PUT carries | ours p50 / p90 ms | "
        + " | ".join(f"{n} p50 / p90 ms" for n in peers)
        + " | "
        + " | ".join(f"p50 ours/{n}" for n in peers)
        + " |",
        "| --- " * (2 + 2 * len(peers)) + "| --- |",
    ]

    def pcts(rs: list[RunResult]) -> tuple[float, float]:
        per_round = [[t.put * 1000 for t in r.timings] for r in rs if r.timings]
        if not per_round:
            return float("nan"), float("nan")
        return (
            statistics.median(_pct(v, 0.5) for v in per_round),
            statistics.median(_pct(v, 0.9) for v in per_round),
        )

    for wl in workloads:
        if wl.count == 1 and wl.chunk is None:
            continue
        ours = _side(results, wl, "ours")
        sides = [_side(results, wl, n) for n in peers]
        if not ours or not any(sides):
            continue
        o50, o90 = pcts(ours)
        cells = [wl.name, "nothing (empty)" if wl.chunk else f"{_fmt_size(wl.size)} body"]
        cells.append(f"{o50:.2f} / {o90:.2f}")
        ratios = []
        for rs in sides:
            if not rs:
                cells.append("n/a")
                ratios.append("n/a")
                continue
            p50, p90 = pcts(rs)
            cells.append(f"{p50:.2f} / {p90:.2f}")
            ratios.append(f"**{o50 / p50:.2f}**")
        lines.append("| " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


PEERS = ("v3", "2.8")


def choose_peers(
    spec: str | None,
    v3_bin: Path,
    go_config: Path = GO_CONFIG,
    v3_config: Path = GO_V3_CONFIG,
) -> tuple[list[str], list[str]]:
    """(peers to run, notes). ``spec`` None: every peer that is available, saying why
    one is skipped; a peer asked for by name that is missing (its binary or its config
    file) raises RuntimeError."""
    if spec is None:
        wanted, explicit = list(PEERS), False
    else:
        wanted = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in PEERS]
        if unknown or not wanted:
            raise ValueError(f"--peers: {spec!r}: choose from {', '.join(PEERS)}")
        wanted, explicit = list(dict.fromkeys(wanted)), True
    peers: list[str] = []
    notes: list[str] = []
    for name in wanted:
        if name == "v3":
            problem = config_problem(v3_config, "--v3-config", "BENCH_V3_CONFIG")
            if problem is None:
                problem = v3_binary_problem(v3_bin)
                problem = None if problem is None else f"the v3 registry binary {problem}"
        else:
            problem = config_problem(go_config, "--go-config", "BENCH_GO_CONFIG") or (
                None
                if shutil.which(GO_BINARY)
                else f"{GO_BINARY} (2.8) is not on PATH (apt-get install docker-registry)"
            )
        if problem is None:
            peers.append(name)
        elif explicit:
            raise RuntimeError(f"peer {name} was asked for, but {problem}")
        else:
            notes.append(f"SKIPPING peer {name}: {problem}")
    if not peers:
        raise RuntimeError("no peer to measure against: " + "; ".join(notes))
    return peers, notes


def add_peer_config_options(p: argparse.ArgumentParser, *, v3: bool = False) -> None:
    """``--go-config`` (and with ``v3``, ``--v3-config``): the peers' config files."""
    p.add_argument(
        "--go-config",
        type=Path,
        default=GO_CONFIG,
        metavar="FILE",
        help=f"docker-registry's config (default $BENCH_GO_CONFIG or {_shown(GO_CONFIG)})",
    )
    if v3:
        p.add_argument(
            "--v3-config",
            type=Path,
            default=GO_V3_CONFIG,
            metavar="FILE",
            help="distribution v3's config, copied with its rootdirectory and addr "
            f"rewritten (default $BENCH_V3_CONFIG or {_shown(GO_V3_CONFIG)})",
        )


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        metavar="NAME",
        help=f"subset of {', '.join(WORKLOADS)} (default: all)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="shrink counts/sizes (0.1 = quick)")
    p.add_argument(
        "--frontends", type=int, default=1, help="uvicorn processes (ingest serve --workers)"
    )
    p.add_argument("--worker-procs", type=int, default=1, help="celery worker processes")
    p.add_argument("--worker-concurrency", type=int, default=2, help="pool size per celery worker")
    p.add_argument("--worker-pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--tmpdir", default="/tmp", help="where server data goes (needs ~4 GiB free)")
    p.add_argument("--timeout", type=float, default=600.0, help="socket timeout per request (s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="empty the page cache before every run, either side (root only)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record (raw stacks) our frontend and workers during our runs into DIR",
    )
    p.add_argument(
        "--strace",
        type=Path,
        metavar="DIR",
        help="strace -c (syscall counts) every server process during every run into DIR",
    )
    p.add_argument(
        "--peers",
        metavar="LIST",
        help="comma-separated Go registries to measure against, of v3 (distribution v3, "
        "--v3-bin) and 2.8 (Debian's docker-registry); default: both, skipping one whose "
        "binary is missing (a peer named here must be there)",
    )
    p.add_argument(
        "--v3-bin",
        type=Path,
        default=GO_V3_BINARY,
        help=f"the distribution v3 registry binary (default $BENCH_V3_BIN or {GO_V3_BINARY})",
    )
    add_peer_config_options(p, v3=True)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        p.error("--rounds must be ≥ 1 and --scale > 0")
    try:
        peer_names, notes = choose_peers(args.peers, args.v3_bin, args.go_config, args.v3_config)
    except ValueError as exc:
        p.error(str(exc))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _on_sigterm)
    workloads = [WORKLOADS[n].scaled(args.scale) for n in args.workloads]
    tmp = Path(tempfile.mkdtemp(prefix="bench-push-", dir=args.tmpdir))
    servers: list[OursServer | GoServer] = []
    results: list[RunResult] = []
    nonce = os.urandom(8).hex()
    try:
        print(f"generating {_fmt_size(BASE_SIZE)} of random content; data in {tmp}", flush=True)
        content = Content()
        try:
            ours = OursServer(
                tmp / "ours",
                frontends=args.frontends,
                worker_procs=args.worker_procs,
                worker_concurrency=args.worker_concurrency,
                worker_pool=args.worker_pool,
            )
            servers.append(ours)
            ours.start()
            peers: list[GoServer] = []
            for name in peer_names:
                peer = (
                    GoV3Server(tmp / "go-v3", args.v3_bin, args.v3_config)
                    if name == "v3"
                    else GoServer(tmp / "go-2.8", args.go_config, name="2.8")
                )
                servers.append(peer)
                peers.append(peer)
                peer.start()
        except (RuntimeError, OSError) as exc:
            print(f"error: could not start the servers: {exc}", file=sys.stderr)
            return 2
        print(
            f"ours: port {ours.port}, {args.frontends} frontend(s), {args.worker_procs} worker(s) "
            f"x {args.worker_pool} -c {args.worker_concurrency}, pids {ours.pids()}",
            flush=True,
        )
        for peer in peers:
            print(f"{_label(peer.name)}: port {peer.port}, pids {peer.pids()}", flush=True)
        for note in notes:
            print(f"note: {note}", flush=True)
        sides: list[OursServer | GoServer] = [ours, *peers]
        # Warm-up (untimed, not reported): imports, connections, first-use paths.
        warm = Workload("warmup", "warm-up", 16, 256 * KIB, 4)
        for s in sides:
            w = run_one(s, content, warm, -1, nonce, args.timeout, Profiler())
            if w.failures or w.verify_failures:
                print(f"warm-up against {s.name} failed:", file=sys.stderr)
                for msg in (w.failures + w.verify_failures)[:10]:
                    print(f"  {msg}", file=sys.stderr)
                return 1
        profiler = Profiler(args.profile, args.strace)
        for rnd in range(args.rounds):
            for wl in workloads:
                # The order rotates every round: each side goes first once in len(sides).
                k = rnd % len(sides)
                order = sides[k:] + sides[:k]
                for s in order:
                    r = run_one(
                        s,
                        content,
                        wl,
                        rnd,
                        nonce,
                        args.timeout,
                        profiler,
                        drop_caches=args.drop_caches,
                    )
                    results.append(r)
                    print_run(r)
        print()
        print(
            f"Topology: {args.frontends} frontend process(es), "
            f"{args.worker_procs} celery worker(s) "
            f"({args.worker_pool}, concurrency {args.worker_concurrency}); medians of "
            f"{args.rounds} round(s); scale {args.scale}\n"
        )
        print(table(results, workloads, peer_names))
        print()
        print(cpu_breakdown(results, workloads, peer_names))
        latency = finish_latency(results, workloads, peer_names)
        if latency.count("\n") > 1:
            print()
            print(latency)
        for note in notes:
            print(f"\nnote: {note}")
        bad = [m for r in results for m in r.failures + r.verify_failures]
        if bad:
            print(f"\n{len(bad)} failure(s); first ones:", file=sys.stderr)
            for m in bad[:20]:
                print(f"  {m}", file=sys.stderr)
            return 1
        return 0
    finally:
        for s in reversed(servers):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - tear down everything we can
                print(f"warning: stopping {s.name}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
