"""Push throughput of our stack on the S3 driver against the same stack on the filesystem.

    .venv/bin/python bench/bench_s3_push.py [--rounds 3] [--scale 0.2]
        [--workloads small-64k medium-4m] [--worker-concurrency 2] [--tmpdir /tmp]

Starts, on 127.0.0.1 free ports, and tears down at the end: a ``moto_server`` (the
tests' S3 server, :mod:`tests.support.s3server`) with one bucket, and two copies of our
stack as ``bench/bench_push.py`` runs it (a private Redis, one ``ingest serve``, one
Celery worker each): ``fs`` stores on a local directory, ``s3`` in the bucket
(``INGEST_STORAGE_DRIVER=s3``, path-style, through boto3). The Go peers are not run.

Workloads are ``bench_push.py``'s ``small-64k`` and ``medium-4m`` (``--scale``
multiplies the blob counts). Per round the two sides run one after the other and the
order alternates every round. Measured as in ``bench_push.py`` (wall time from the
first POST to the last 201, server CPU from /proc, the same untimed verification by
HEAD and GET); the ``s3`` side's server CPU has a third role, ``moto``: the S3 server
itself. Medians over the rounds are printed as a markdown table.

moto is a Python server on the same two cores: the S3 numbers bound moto (its request
handling and its CPU), not S3. Read them as "what our driver asks of a store" (the
requests per blob, the frontend and worker CPU they cost) more than as a speed.

Exit status: 0 if every push and verification succeeded, 1 otherwise, 2 if a server
could not be started.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import bench_push
from bench_push import (
    WORKLOADS,
    Content,
    OursServer,
    Profiler,
    RunResult,
    Workload,
    _median,
    print_run,
    run_one,
)

from tests.support.s3server import MotoServer

DEFAULT_WORKLOADS = ["small-64k", "medium-4m"]
BUCKET = "bench"


class S3Side(OursServer):
    """Our stack on the S3 driver; ``moto`` counts as one of its server roles."""

    def __init__(self, moto: MotoServer, root: Path, **kwargs: object) -> None:
        env = moto.env(BUCKET, prefix=f"bench-{os.urandom(4).hex()}")
        super().__init__(root, name="s3", extra_env=env, **kwargs)  # type: ignore[arg-type]
        self.moto = moto
        self.current_round = 0
        self.last_requests = 0

    def log_size(self) -> int:
        """Bytes moto has logged so far (one line per request)."""
        log = self.moto._log
        return log.stat().st_size if log is not None and log.exists() else 0

    def requests_since(self, offset: int) -> Counter[str]:
        """The requests moto served after log byte ``offset``, by kind (:func:`kind`)."""
        log = self.moto._log
        out: Counter[str] = Counter()
        if log is None or not log.exists():
            return out
        with open(log, "rb") as f:
            f.seek(offset)
            for line in f:
                m = _REQUEST_LINE.search(line.decode("utf-8", "replace"))
                if m:
                    out[kind(m["method"], m["target"])] += 1
        return out

    def pids(self) -> dict[str, list[int]]:
        out = super().pids()
        proc = self.moto._proc
        if proc is not None:
            out["moto"] = [proc.pid]
        return out


_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1" ')


def kind(method: str, target: str) -> str:
    """A request's kind for the breakdown: the method, the driver's key area (and the
    area below ``files/``), and the S3 operation its query names."""
    path, _, query = target.partition("?")
    parts = path.split("/")
    area = ""
    for i, seg in enumerate(parts):
        if seg in ("files", "appends", "segments"):
            area = seg
            if seg == "files" and i + 1 < len(parts):
                area += "/" + parts[i + 1]
            break
    op = ""
    for q in ("uploads", "uploadId", "partNumber", "list-type", "delete", "prefix"):
        if re.search(rf"(^|&){q}(=|&|$)", query):
            op = q
    return " ".join(x for x in (method, area or "(bucket)", op and f"?{op}") if x)


#: (workload, round) -> S3 requests during that run's pushes (not its verification).
PUSH_REQUESTS: dict[tuple[str, int], int] = {}
#: workload -> S3 requests of its pushes over every round, by kind.
PUSH_KINDS: dict[str, Counter[str]] = {}
#: workload -> blobs pushed over every round (the denominator of PUSH_KINDS).
PUSHED: Counter[str] = Counter()
_run_pushes = bench_push.run_pushes


def _counted_run_pushes(server: bench_push.Server, *args: object, **kwargs: object) -> object:
    """bench_push.run_pushes, counting the S3 requests of the S3 side's pushes."""
    if not isinstance(server, S3Side):
        return _run_pushes(server, *args, **kwargs)  # type: ignore[arg-type]
    before = server.log_size()
    out = _run_pushes(server, *args, **kwargs)  # type: ignore[arg-type]
    wl = args[1]
    assert isinstance(wl, Workload)
    kinds = server.requests_since(before)
    server.last_requests = sum(kinds.values())
    PUSH_REQUESTS[(wl.name, server.current_round)] = server.last_requests
    PUSH_KINDS.setdefault(wl.name, Counter()).update(kinds)
    PUSHED[wl.name] += wl.count
    return out


def breakdown(workloads: list[Workload]) -> str:
    """S3 requests per pushed blob by kind, over every round."""
    rows = ["| workload | request kind | per blob |", "| --- | --- | ---: |"]
    for wl in workloads:
        kinds = PUSH_KINDS.get(wl.name, Counter())
        n = max(1, PUSHED[wl.name])
        for k, c in kinds.most_common():
            rows.append(f"| {wl.name} | `{k}` | {c / n:.2f} |")
    return "\n".join(rows)


bench_push.run_pushes = _counted_run_pushes  # type: ignore[assignment]


def table(results: list[RunResult], workloads: list[Workload]) -> str:
    rows = [
        "| workload | storage | MiB/s | blobs/s | server CPU s | CPU by role (s) | s3/fs "
        "| S3 requests/blob |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for wl in workloads:
        fs = [r for r in results if r.workload == wl.name and r.side == "fs"]
        for side in ("fs", "s3"):
            rs = [r for r in results if r.workload == wl.name and r.side == side]
            if not rs:
                continue
            roles = sorted({k for r in rs for k in r.cpu})
            by_role = ", ".join(
                f"{k} {statistics.median(r.cpu.get(k, 0.0) for r in rs):.2f}" for k in roles
            )
            ratio = (
                f"{_median(rs, lambda r: r.mib_s) / _median(fs, lambda r: r.mib_s):.2f}"
                if side == "s3" and fs
                else ""
            )
            per_blob = ""
            if side == "s3":
                counts = [PUSH_REQUESTS.get((wl.name, r.round), 0) / max(1, r.pushed) for r in rs]
                per_blob = f"{statistics.median(counts):.1f}"
            rows.append(
                f"| {wl.describe()} | {side} | {_median(rs, lambda r: r.mib_s):.1f} "
                f"| {_median(rs, lambda r: r.blobs_s):.1f} "
                f"| {_median(rs, lambda r: r.server_cpu):.2f} | {by_role} | {ratio} | {per_blob} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.2, help="multiply the blob counts")
    p.add_argument("--workloads", nargs="+", choices=DEFAULT_WORKLOADS, default=DEFAULT_WORKLOADS)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--tmpdir", default="/tmp")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        p.error("--rounds must be ≥ 1 and --scale > 0")
    workloads = [WORKLOADS[n].scaled(args.scale) for n in args.workloads]
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-push-", dir=args.tmpdir))
    moto = MotoServer(log=tmp / "moto.log")
    sides: list[OursServer] = []
    results: list[RunResult] = []
    nonce = os.urandom(8).hex()
    common = {"frontends": 1, "worker_procs": 1, "worker_concurrency": args.worker_concurrency}
    try:
        try:
            moto.start()
            moto.create_bucket(BUCKET)
            fs = OursServer(tmp / "fs", name="fs", worker_pool="prefork", **common)
            sides.append(fs)
            fs.start()
            s3 = S3Side(moto, tmp / "s3", worker_pool="prefork", **common)
            sides.append(s3)
            s3.start()
        except (RuntimeError, OSError) as exc:
            print(f"error: could not start the servers: {exc}", file=sys.stderr)
            return 2
        content = Content()
        warm = Workload("warmup", "warm-up", 16, 256 * 1024, 4)
        for s in sides:
            w = run_one(s, content, warm, -1, nonce, args.timeout, Profiler())
            if w.failures or w.verify_failures:
                print(f"warm-up against {s.name} failed: {(w.failures + w.verify_failures)[:5]}")
                return 1
        for rnd in range(args.rounds):
            for wl in workloads:
                order = sides if rnd % 2 == 0 else sides[::-1]
                for s in order:
                    if isinstance(s, S3Side):
                        s.current_round = rnd
                    r = run_one(s, content, wl, rnd, nonce, args.timeout, Profiler())
                    results.append(r)
                    print_run(r)
        print()
        print(f"medians of {args.rounds} round(s); scale {args.scale}; 1 frontend, 1 worker")
        print(f"(prefork -c {args.worker_concurrency}); moto_server on the same cores\n")
        print(table(results, workloads))
        print()
        print(breakdown(workloads))
        bad = [m for r in results for m in r.failures + r.verify_failures]
        if bad:
            print(f"\n{len(bad)} failure(s); first ones:", file=sys.stderr)
            for m in bad[:20]:
                print(f"  {m}", file=sys.stderr)
            return 1
        return 0
    finally:
        for s in reversed(sides):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - tear down everything we can
                print(f"warning: stopping {s.name}: {exc}", file=sys.stderr)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
