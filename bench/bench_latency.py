"""Finish-to-committed latency of small blobs with a warm worker, vs the Go registry.

    .venv/bin/python bench/bench_latency.py [--count 500] [--block 100] [--size-kib 64]
        [--worker-concurrency 2] [--tmpdir /tmp] [--go-config bench/peers/go-registry.yml]

Starts the same servers as ``bench_push.py`` (a private Redis, one ``ingest serve``
frontend, one Celery worker; Debian's ``docker-registry`` with ``--go-config``,
default ``bench/peers/go-registry.yml``), all on loopback, then pushes ``--count``
distinct blobs *sequentially* per series, in blocks of ``--block`` that alternate
between the series (the order rotates every block round):

* ``ours HTTP``   POST, then ``PUT ?digest=`` with the 64 KiB body on the same
  keep-alive connection (bench/httpclient.py). Timed: the PUT request alone. It
  answers 201 only after the worker verified and committed the blob.
* ``Go HTTP``     the same against docker-registry (it hashes inside the request).
* ``ours API``    no HTTP: ``up = ing.start_upload(repo); up.write(data)``, then
  timed ``up.finish(digest).wait(30)``: state write + Celery send + worker
  verify/commit + result through Redis pub/sub. The Celery round trip alone.
  The ``finish()`` call alone is reported too (state write + ``send_task``).
* ``ours async``  the PUT with ``Prefer: respond-async``: 202 right after the
  enqueue (HTTP + staging write + send, no waiting). Commit awaited untimed.
* ``ours GET /v2/``, ``Go GET /v2/``  an empty request: each HTTP stack's floor.

Reports p50/p90/p99/max per series (all samples pooled) and the median of the
per-block p50s, the ratios ours/Go, and server CPU per operation from /proc
(the async series' CPU includes its untimed HEAD polling).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from bench_push import (
    KIB,
    Content,
    GoServer,
    OursServer,
    Server,
    _on_sigterm,
    add_peer_config_options,
    server_cpu,
)
from httpclient import Connection, Response, upload_target

from ingest.api import Ingest
from ingest.config import Settings

GOAL_P50_MS = 5.0
GOAL_P99_MS = 20.0


class BenchError(Exception):
    pass


@dataclass(slots=True)
class Series:
    name: str
    samples: list[float] = field(default_factory=list)  # seconds
    block_p50: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # role → CPU seconds, summed
    blobs: int = 0

    def add_block(self, values: list[float]) -> None:
        self.samples += values
        self.block_p50.append(statistics.median(values))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1])."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))] if s else float("nan")


def _expect(r: Response, status: int, what: str) -> None:
    if r.status != status:
        raise BenchError(f"{what} → {r.status} {r.reason}: {r.body[:300]!r}")


class Blobs:
    """Distinct blobs: a 32-byte unique prefix + shared random content."""

    def __init__(self, size: int, nonce: str) -> None:
        self.size = size
        self.nonce = nonce
        self.content = Content(base_size=max(size, 1 << 20))
        self.counter = 0

    def next(self, tag: str) -> tuple[bytes, str]:
        self.counter += 1
        prefix = hashlib.sha256(f"{self.nonce}:{tag}:{self.counter}".encode()).digest()
        data = self.content.whole(prefix, self.size)
        return data, "sha256:" + hashlib.sha256(data).hexdigest()


def put_block(
    conn: Connection, blobs: Blobs, tag: str, count: int, *, respond_async: bool = False
) -> list[float]:
    """``count`` sequential POST + monolithic PUT; the PUT's duration each."""
    out: list[float] = []
    repo = f"bench/latency-{tag}"
    headers = {"Content-Type": "application/octet-stream"}
    if respond_async:
        headers["Prefer"] = "respond-async"
    for _ in range(count):
        data, digest = blobs.next(tag)
        r = conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        _expect(r, 202, "POST")
        target = upload_target(r.header("location"), digest)
        t0 = time.perf_counter()
        r = conn.request("PUT", target, headers=headers, body=data)
        t1 = time.perf_counter()
        if respond_async:
            _expect(r, 202, "PUT (respond-async)")
            _await_blob(conn, repo, digest)  # untimed: the next PUT starts on an idle worker
        else:
            _expect(r, 201, "PUT")
        out.append(t1 - t0)
    return out


def _await_blob(conn: Connection, repo: str, digest: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
            return
        time.sleep(0.0005)
    raise BenchError(f"{digest} not committed after {timeout} s")


def api_block(ing: Ingest, blobs: Blobs, count: int, send: Series) -> list[float]:
    """``count`` sequential finish().wait(); the finish() calls alone go to ``send``."""
    out: list[float] = []
    sends: list[float] = []
    for _ in range(count):
        data, digest = blobs.next("api")
        up = ing.start_upload("bench/latency-api")
        up.write(data)
        t0 = time.perf_counter()
        ticket = up.finish(digest)
        ts = time.perf_counter()
        result = ticket.wait(30)
        t1 = time.perf_counter()
        sends.append(ts - t0)
        if result.get("status") != "committed":
            raise BenchError(f"API finish → {result}")
        out.append(t1 - t0)
    send.add_block(sends)
    send.blobs += len(sends)
    return out


def get_v2_block(conn: Connection, count: int) -> list[float]:
    out: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        r = conn.request("GET", "/v2/")
        t1 = time.perf_counter()
        _expect(r, 200, "GET /v2/")
        out.append(t1 - t0)
    return out


def measured(
    series: Series, server: Server | None, fn: Callable[[int], list[float]], n: int
) -> None:
    cpu0 = server_cpu(server) if server is not None else {}
    values = fn(n)
    if server is not None:
        cpu1 = server_cpu(server)
        for k, v in cpu0.items():
            series.cpu[k] = series.cpu.get(k, 0.0) + cpu1.get(k, 0.0) - v
    series.blobs += len(values)
    series.add_block(values)


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def table(series: list[Series]) -> str:
    lines = [
        "| series | n | p50 ms | p90 ms | p99 ms | max ms | median of block p50s ms "
        "| server CPU ms/op |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in series:
        cpu = sum(s.cpu.values()) / max(1, s.blobs) * 1000 if s.cpu else float("nan")
        roles = " (" + ", ".join(f"{k} {v / max(1, s.blobs) * 1000:.2f}" for k, v in s.cpu.items())
        roles = roles + ")" if len(s.cpu) > 1 else ""
        lines.append(
            f"| {s.name} | {len(s.samples)} | {ms(pct(s.samples, 0.5))} "
            f"| {ms(pct(s.samples, 0.9))} | {ms(pct(s.samples, 0.99))} | {ms(max(s.samples))} "
            f"| {ms(statistics.median(s.block_p50))} "
            f"| {'' if cpu != cpu else f'{cpu:.2f}'}{roles} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count", type=int, default=500, help="blobs per series")
    p.add_argument("--block", type=int, default=100, help="blobs per alternating block")
    p.add_argument("--size-kib", type=int, default=64)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--no-extras", action="store_true", help="only ours/Go HTTP and ours API")
    p.add_argument("--tmpdir", default="/tmp")
    add_peer_config_options(p)
    args = p.parse_args(argv)
    if args.count < 1 or args.block < 1:
        p.error("--count and --block must be ≥ 1")

    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-", dir=args.tmpdir))
    servers: list[OursServer | GoServer] = []
    try:
        ours = OursServer(
            tmp / "ours",
            frontends=1,
            worker_procs=1,
            worker_concurrency=args.worker_concurrency,
            worker_pool="prefork",
        )
        servers.append(ours)
        go = GoServer(tmp / "go", args.go_config)
        servers.append(go)
        try:
            ours.start()
            go.start()
        except (RuntimeError, OSError) as exc:
            print(f"error: could not start the servers: {exc}", file=sys.stderr)
            return 2
        assert ours.redis is not None
        env = {"REDIS_URL": ours.redis.url, "INGEST_STORAGE_ROOT": str(ours.root / "storage")}
        ing = Ingest.from_settings(Settings.from_env(env))
        blobs = Blobs(args.size_kib * KIB, os.urandom(8).hex())
        c_ours = Connection("127.0.0.1", ours.port, timeout=60)
        c_go = Connection("127.0.0.1", go.port, timeout=60)

        s_ours = Series("ours HTTP: PUT → 201 committed")
        s_go = Series("Go 2.8 HTTP: PUT → 201")
        s_api = Series("ours API: finish().wait() (no HTTP)")
        s_send = Series("ours API: finish() alone (state write + send_task)")
        s_async = Series("ours HTTP: PUT, Prefer: respond-async → 202 (enqueued)")
        s_get_ours = Series("ours GET /v2/ (HTTP floor)")
        s_get_go = Series("Go GET /v2/ (HTTP floor)")

        runs: list[tuple[Series, Server | None, Callable[[int], list[float]]]] = [
            (s_ours, ours, lambda n: put_block(c_ours, blobs, "ours", n)),
            (s_go, go, lambda n: put_block(c_go, blobs, "go", n)),
            (s_api, ours, lambda n: api_block(ing, blobs, n, s_send)),
        ]
        if not args.no_extras:
            runs += [
                (s_async, ours, lambda n: put_block(c_ours, blobs, "async", n, respond_async=True)),
                (s_get_ours, None, lambda n: get_v2_block(c_ours, n)),
                (s_get_go, None, lambda n: get_v2_block(c_go, n)),
            ]

        print(
            f"ours: port {ours.port}, worker -c {args.worker_concurrency}; Go: port {go.port}; "
            f"{args.count} x {args.size_kib} KiB per series, blocks of {args.block}",
            flush=True,
        )
        for _, _, fn in runs:  # warm-up: imports, connections, first-use paths
            fn(args.warmup)
        s_send.samples.clear()  # api_block fed it during the warm-up
        s_send.block_p50.clear()
        s_send.blobs = 0
        os.sync()
        done = 0
        rnd = 0
        while done < args.count:
            n = min(args.block, args.count - done)
            k = rnd % len(runs)
            for series, server, fn in runs[k:] + runs[:k]:  # rotate who goes first
                measured(series, server, fn, n)
                print(
                    f"  block {rnd} {series.name:58} p50 {ms(series.block_p50[-1])} ms",
                    flush=True,
                )
            done += n
            rnd += 1
        c_ours.close()
        c_go.close()

        all_series = [r[0] for r in runs]
        all_series.insert(3, s_send)
        print(
            f"\n{date.today().isoformat()}: {args.count} sequential x {args.size_kib} KiB per "
            f"series, blocks of {args.block}, worker -c {args.worker_concurrency}\n"
        )
        print(table(all_series))
        r50 = pct(s_ours.samples, 0.5) / pct(s_go.samples, 0.5)
        r99 = pct(s_ours.samples, 0.99) / pct(s_go.samples, 0.99)
        p50, p99 = pct(s_ours.samples, 0.5) * 1000, pct(s_ours.samples, 0.99) * 1000
        print(
            f"\nratio ours/Go: p50 **{r50:.2f}**, p99 **{r99:.2f}**; "
            f"median of block p50s "
            f"{statistics.median(s_ours.block_p50) / statistics.median(s_go.block_p50):.2f}"
        )
        print(
            f"goals: p50 {p50:.2f} ms ≤ {GOAL_P50_MS} ms: "
            f"{'met' if p50 <= GOAL_P50_MS else 'NOT met'}; "
            f"p99 {p99:.2f} ms ≤ {GOAL_P99_MS} ms: {'met' if p99 <= GOAL_P99_MS else 'NOT met'}"
        )
        api50 = pct(s_api.samples, 0.5)
        print(
            f"Celery round trip (API p50) is {api50 / pct(s_ours.samples, 0.5):.0%} of the "
            f"HTTP finish p50; HTTP adds {ms(pct(s_ours.samples, 0.5) - api50)} ms at p50"
        )
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in reversed(servers):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - tear down everything we can
                print(f"warning: stopping {s.name}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
