"""Throughput vs the number of Celery pool processes, on this machine.

    .venv/bin/python bench/bench_scaling.py [--rounds 3] [--configs 1x1 1x2 2x1 1x4]
        [--scale 1.0] [--big-count 4] [--big-mib 256] [--tmpdir /tmp]
        [--go-config bench/peers/go-registry.yml]

Starts one "ours" stack per topology (each: a private Redis, one ``ingest serve``
frontend process, ``W`` Celery workers with ``-c C`` prefork pool slots; config
``WxC``), all kept running side by side (idle stacks cost nothing measurable),
plus Debian's ``docker-registry`` as the peer measured in the same run. Reuses
``bench_push.py``'s servers, content and push loop. Per round, in an order that
rotates every round:

* (a) ``medium-4m``: 100 x 4 MiB monolithic pushes, 4 concurrent connections;
* (b) ``small-64k``: 1000 x 64 KiB monolithic pushes, 8 concurrent connections;
  both against every stack and against Go (the Go figure is the same for every
  row: it does not depend on our topology);
* (c) verification only, no HTTP, the full pass (``INGEST_PREHASH_MIN_SIZE=0``: the
  worker reads and hashes every byte after ``finish``; a commit that took a prehash
  record fails the run): ``--big-count`` blobs of ``--big-mib`` MiB are
  staged through the Python API (untimed), then all finished at once; timed from
  the first ``finish()`` to the last committed result. The peer: plain
  ``hashlib.sha256`` over the same staged files with 1 thread and with 2 threads
  (OpenSSL releases the GIL: the 2-thread figure is this machine's ceiling).

Measured per run from /proc: server CPU seconds by role (frontend, worker and
pool children, redis), and Redis commands processed (INFO stats) per blob.
Medians over the rounds are printed as markdown tables.
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
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import redis
from bench_push import (
    MIB,
    WORKLOADS,
    Content,
    GoServer,
    OursServer,
    Profiler,
    RunResult,
    _on_sigterm,
    add_peer_config_options,
    run_one,
    server_cpu,
)

from ingest.api import Ingest
from ingest.config import Settings

ROLES = ("frontend", "worker", "redis")


@dataclass(frozen=True, slots=True)
class Topology:
    workers: int
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.concurrency}"

    @property
    def procs(self) -> int:
        return self.workers * self.concurrency

    def describe(self) -> str:
        w = "1 worker" if self.workers == 1 else f"{self.workers} workers"
        return f"{w} x -c {self.concurrency}"


def parse_topology(text: str) -> Topology:
    w, _, c = text.partition("x")
    return Topology(int(w), int(c))


@dataclass(slots=True)
class Stack:
    topo: Topology
    server: OursServer
    ingest: Ingest
    redis_client: redis.Redis[bytes]

    def redis_commands(self) -> int:
        return int(self.redis_client.info("stats")["total_commands_processed"])


@dataclass(slots=True)
class PushRun:
    result: RunResult
    redis_cmds: int = 0


@dataclass(slots=True)
class BigRun:
    seconds: float
    nbytes: int
    count: int
    cpu: dict[str, float] = field(default_factory=dict)
    redis_cmds: int = 0


# -- (c) verification of large blobs ---------------------------------------------------


def stage(ing: Ingest, repo: str, size: int, seed: bytes, block: bytearray) -> tuple[str, str]:
    """Stage ``size`` bytes (``seed`` makes them unique); (upload id, sha256 digest)."""
    block[: len(seed)] = seed
    h = hashlib.sha256()
    up = ing.start_upload(repo)
    left = size
    while left:
        piece = memoryview(block)[: min(left, len(block))]
        up.write(piece)
        h.update(piece)
        left -= len(piece)
    up.close()
    return up.id, "sha256:" + h.hexdigest()


def hash_files(files: list[Path], threads: int) -> float:
    """Wall seconds to sha256 ``files`` with ``threads`` threads (1 MiB readinto)."""
    todo = list(files)
    lock = threading.Lock()

    def run() -> None:
        buf = bytearray(MIB)
        view = memoryview(buf)
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    h.update(view[:n])

    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def big_run(
    stack: Stack,
    count: int,
    size: int,
    tag: str,
    hashlib_runs: dict[int, list[float]],
    *,
    peer_first: bool,
) -> BigRun:
    ing = stack.ingest
    repo = "bench/scaling-big"
    block = bytearray(os.urandom(16 * MIB))
    staged = [
        stage(ing, repo, size, f"{tag}:{i}".encode().ljust(32, b"."), block) for i in range(count)
    ]
    files = [stack.server.root / "storage" / "uploads" / uid / "data" for uid, _ in staged]
    # The peer, on the same files in the same page-cache state (alternating order).
    if peer_first:
        for t in (1, 2):
            hashlib_runs[t].append(hash_files(files, t))
    os.sync()
    cpu0 = server_cpu(stack.server)
    cmd0 = stack.redis_commands()
    t0 = time.perf_counter()
    tickets = [ing.resume(repo, uid).finish(digest) for uid, digest in staged]
    for tk in tickets:
        result = tk.wait(timeout=600)
        if result.get("status") != "committed":
            raise RuntimeError(f"big blob not committed: {result}")
        if result.get("prehashed"):
            raise RuntimeError("a big blob took the prehash path; (c) measures the full pass")
    seconds = time.perf_counter() - t0
    cpu1 = server_cpu(stack.server)
    cmds = stack.redis_commands() - cmd0
    if not peer_first:
        blobs_dir = stack.server.root / "storage" / "blobs" / "sha256"
        committed = [blobs_dir / d[7:9] / d[7:] / "data" for _, d in staged]
        for t in (1, 2):
            hashlib_runs[t].append(hash_files(committed, t))
    return BigRun(
        seconds, count * size, count, {k: cpu1.get(k, 0.0) - v for k, v in cpu0.items()}, cmds
    )


# -- tables -----------------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def push_table(
    name: str, runs: dict[str, list[PushRun]], go: list[RunResult], topos: list[Topology]
) -> str:
    wl = WORKLOADS[name]
    go_bs = _med([r.blobs_s for r in go])
    lines = [
        f"({wl.describe()}; Go 2.8 in the same run: {go_bs:.1f} blobs/s, "
        f"{_med([1000 * r.server_cpu / max(1, r.pushed) for r in go]):.2f} ms CPU/blob)",
        "",
        "| pool procs | topology | blobs/s | MiB/s | ratio ours/Go | vs 1 proc "
        "| server CPU ms/blob (frontend / worker / redis) | CPU busy of 2 cores "
        "| Redis cmds/blob |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = None
    for topo in topos:
        rs = runs.get(topo.name, [])
        if not rs:
            continue
        bs = _med([r.result.blobs_s for r in rs])
        base = base if base is not None else bs
        per = {
            k: _med([1000 * r.result.cpu.get(k, 0.0) / max(1, r.result.pushed) for r in rs])
            for k in ROLES
        }
        busy = _med([r.result.server_cpu / r.result.seconds / 2 for r in rs])
        cmds = _med([r.redis_cmds / max(1, r.result.pushed) for r in rs])
        bad = sum(len(r.result.failures) + len(r.result.verify_failures) for r in rs)
        flag = f" ⚠ {bad} failed" if bad else ""
        lines.append(
            f"| {topo.procs} | {topo.describe()}{flag} | {bs:.1f} "
            f"| {_med([r.result.mib_s for r in rs]):.0f} | **{bs / go_bs:.2f}** "
            f"| {bs / base:.2f} | {sum(per.values()):.2f} ({per['frontend']:.2f} / "
            f"{per['worker']:.2f} / {per['redis']:.2f}) | {busy:.0%} | {cmds:.1f} |"
        )
    return "\n".join(lines)


def big_table(
    runs: dict[str, list[BigRun]],
    hashlib_runs: dict[int, list[float]],
    topos: list[Topology],
    count: int,
    size: int,
) -> str:
    total = count * size
    h1 = total / _med(hashlib_runs[1]) / 1e6
    h2 = total / _med(hashlib_runs[2]) / 1e6
    lines = [
        f"({count} x {size // MIB} MiB finished at once; peer hashlib.sha256 on the same "
        f"files: {h1:.0f} MB/s with 1 thread, {h2:.0f} MB/s with 2 threads)",
        "",
        "| pool procs | topology | MB/s | blobs/s | ratio to hashlib 1 thread "
        "| ratio to hashlib 2 threads | worker CPU s | CPU busy of 2 cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for topo in topos:
        rs = runs.get(topo.name, [])
        if not rs:
            continue
        mbs = _med([r.nbytes / r.seconds / 1e6 for r in rs])
        lines.append(
            f"| {topo.procs} | {topo.describe()} | {mbs:.0f} "
            f"| {_med([r.count / r.seconds for r in rs]):.2f} | {mbs / h1:.2f} "
            f"| **{mbs / h2:.2f}** | {_med([r.cpu.get('worker', 0.0) for r in rs]):.2f} "
            f"| {_med([sum(r.cpu.values()) / r.seconds / 2 for r in rs]):.0%} |"
        )
    return "\n".join(lines)


# -- driver -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["1x1", "1x2", "2x1", "1x4"],
        help="topologies WxC: W celery workers with -c C each",
    )
    p.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--scale", type=float, default=1.0, help="scales the (a)/(b) blob counts")
    p.add_argument("--big-count", type=int, default=4)
    p.add_argument("--big-mib", type=int, default=256)
    p.add_argument("--tmpdir", default="/tmp")
    p.add_argument("--timeout", type=float, default=600.0)
    add_peer_config_options(p)
    args = p.parse_args(argv)
    topos = [parse_topology(c) for c in args.configs]

    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-", dir=args.tmpdir))
    stacks: list[Stack] = []
    go: GoServer | None = None
    nonce = os.urandom(8).hex()
    push_names = [n for part, n in (("a", "medium-4m"), ("b", "small-64k")) if part in args.parts]
    workloads = [WORKLOADS[n].scaled(args.scale) for n in push_names]
    push_runs: dict[str, dict[str, list[PushRun]]] = {n: {} for n in push_names}
    go_runs: dict[str, list[RunResult]] = {n: [] for n in push_names}
    big_runs: dict[str, list[BigRun]] = {}
    hashlib_runs: dict[int, list[float]] = {1: [], 2: []}
    profiler = Profiler()
    try:
        content = Content()
        try:
            for topo in topos:
                server = OursServer(
                    tmp / topo.name,
                    frontends=1,
                    worker_procs=topo.workers,
                    worker_concurrency=topo.concurrency,
                    worker_pool="prefork",
                )
                server.start()
                assert server.redis is not None
                env = {
                    "REDIS_URL": server.redis.url,
                    "INGEST_STORAGE_ROOT": str(server.root / "storage"),
                    # (c) measures the full verification pass: no upload of this client
                    # is hashed while it is staged (bench_verify.py measures that path).
                    "INGEST_PREHASH_MIN_SIZE": "0",
                }
                stacks.append(
                    Stack(
                        topo,
                        server,
                        Ingest.from_settings(Settings.from_env(env)),
                        redis.Redis.from_url(server.redis.url),
                    )
                )
            if workloads:
                go = GoServer(tmp / "go", args.go_config).start()
        except (RuntimeError, OSError) as exc:
            print(f"error: could not start the servers: {exc}", file=sys.stderr)
            return 2
        print(f"stacks: {', '.join(s.topo.describe() for s in stacks)}; data in {tmp}", flush=True)
        warm = WORKLOADS["medium-4m"].scaled(0.16)
        for s in stacks:  # warm-up: imports, first-use paths, every pool process
            run_one(s.server, content, warm, -1, nonce, args.timeout, profiler)
        if go is not None:
            run_one(go, content, warm, -1, nonce, args.timeout, profiler)

        for rnd in range(args.rounds):
            k = rnd % len(stacks)
            order = stacks[k:] + stacks[:k]
            for wl in workloads:
                # Go runs in the middle of our topologies, moving every round.
                sides: list[Stack | GoServer] = [*order]
                if go is not None:
                    sides.insert((rnd % (len(order) + 1)), go)
                for side in sides:
                    if isinstance(side, GoServer):
                        r = run_one(side, content, wl, rnd, nonce, args.timeout, profiler)
                        go_runs[wl.name].append(r)
                        label = "Go"
                        cmds = 0
                    else:
                        c0 = side.redis_commands()
                        r = run_one(side.server, content, wl, rnd, nonce, args.timeout, profiler)
                        cmds = side.redis_commands() - c0
                        push_runs[wl.name].setdefault(side.topo.name, []).append(PushRun(r, cmds))
                        label = side.topo.name
                    bad = len(r.failures) + len(r.verify_failures)
                    print(
                        f"  r{rnd} {wl.name:10} {label:4} {r.blobs_s:7.1f} blobs/s "
                        f"{r.mib_s:7.1f} MiB/s CPU {r.server_cpu:6.2f} s "
                        f"({' '.join(f'{a}={b:.2f}' for a, b in r.cpu.items())}) "
                        f"redis cmds/blob {cmds / max(1, r.pushed):.1f}"
                        + (
                            f" ⚠ {bad} failures: {(r.failures + r.verify_failures)[:2]}"
                            if bad
                            else ""
                        ),
                        flush=True,
                    )
            if "c" in args.parts:
                for s in order:
                    b = big_run(
                        s,
                        args.big_count,
                        args.big_mib * MIB,
                        f"{nonce}:{rnd}:{s.topo.name}",
                        hashlib_runs,
                        peer_first=rnd % 2 == 0,
                    )
                    big_runs.setdefault(s.topo.name, []).append(b)
                    print(
                        f"  r{rnd} big        {s.topo.name:4} "
                        f"{b.nbytes / b.seconds / 1e6:7.0f} MB/s "
                        f"{b.count / b.seconds:5.2f} blobs/s CPU "
                        f"({' '.join(f'{a}={v:.2f}' for a, v in b.cpu.items())}) | hashlib "
                        f"1t {b.nbytes / hashlib_runs[1][-1] / 1e6:.0f} MB/s "
                        f"2t {b.nbytes / hashlib_runs[2][-1] / 1e6:.0f} MB/s",
                        flush=True,
                    )
                    # Free the disk: the committed blobs are not needed any more.
                    shutil.rmtree(s.server.root / "storage" / "blobs", ignore_errors=True)

        print(
            f"\n{date.today().isoformat()}, {os.cpu_count()} CPUs, medians of {args.rounds} "
            f"round(s); each stack: 1 frontend process + its own Redis\n"
        )
        for part, name in (("a", "medium-4m"), ("b", "small-64k")):
            if name in push_runs:
                print(f"({part}) {name} ", end="")
                print(push_table(name, push_runs[name], go_runs[name], topos))
                print()
        if big_runs:
            print("(c) verification only ", end="")
            print(big_table(big_runs, hashlib_runs, topos, args.big_count, args.big_mib * MIB))
        bad = sum(
            len(r.result.failures) + len(r.result.verify_failures)
            for d in push_runs.values()
            for rs in d.values()
            for r in rs
        )
        return 1 if bad else 0
    finally:
        if go is not None:
            go.stop()
        for s in stacks:
            try:
                s.redis_client.close()
                s.server.stop()
            except Exception as exc:  # noqa: BLE001 - tear down everything we can
                print(f"warning: stopping {s.topo.name}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
