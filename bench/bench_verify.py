"""Verification throughput and memory of one real worker, on both verification paths.

    .venv/bin/python bench/bench_verify.py [--size-mib 1024] [--rounds 5] [--rss-size-mib 4096]
        [--paths full,prehash]

A worker reaches a committed blob by one of two paths, and this benchmark measures
each, against plain ``hashlib.sha256`` over the same file in the same run:

* ``full``: the full verification pass. The upload is written with
  ``INGEST_PREHASH_MIN_SIZE=0`` (no prehash), so after ``finish`` the worker reads
  and hashes every staged byte, then fsyncs, renames into the blob store and links.
  This is the verification throughput (the issue-2 goal: ≥ 0.9 x hashlib).
* ``prehash``: the upload is written with the default ``INGEST_PREHASH_MIN_SIZE``
  (32 MiB), so while it is being written a worker already hashes it
  (``ingest.prehash_upload``); after ``finish`` the verification waits for that
  record, compares it with the claim, then fsyncs, renames and links. Its
  finish → committed time is the shortcut, NOT a hashing throughput: the hashing
  happened during the staging, which is reported next to it.

Per round and path: stage a distinct blob through the Python API (the digest is
computed first, untimed; the writes alone are timed as "staging"), then (a) hash
the staged file with ``hashlib.sha256`` in 1 MiB reads and (b) finish the upload
and let a real ``celery worker`` (prefork, one pool process) commit it, timed from
``finish()`` to the committed result (so it includes the Celery round trip, the
fsync + rename and the links). Both read the same file from the same page cache.
On the full path (a) and (b) alternate who goes first every round. On the prehash
path (b) always comes right after the staging, as a client's finish would, and
(a) reads the committed blob afterwards: hashing first would give the prehash
extra time to catch up. The order of the two paths flips every round. The path a
commit took is read from its result (``prehashed``) and counted; a mismatch is
flagged. Reports medians and the ratio (b)/(a) as throughput, per path.

Memory: verifies a ``--rss-size-mib`` blob on a fresh worker by the full pass
(no prehash) and reports the peak RSS (VmHWM) of the pool process that ran it, and
of the worker's main process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.devstack import Worker
from devtools.localredis import LocalRedis
from ingest.api import Ingest
from ingest.config import Settings

MIB = 1 << 20
BLOCK = 16 * MIB


@dataclass(frozen=True, slots=True)
class VerifyPath:
    """One verification path: how its uploads are written, and what it measures."""

    name: str
    title: str
    prehashed: bool  # the commit's ``prehashed`` flag this path must produce


FULL = VerifyPath(
    "full",
    "full verification pass (INGEST_PREHASH_MIN_SIZE=0): read + hash all bytes after finish",
    prehashed=False,
)
PREHASH = VerifyPath(
    "prehash",
    "prehash path (INGEST_PREHASH_MIN_SIZE={threshold}): hashed while staged, "
    "after finish only the tail + compare",
    prehashed=True,
)
PATHS = {p.name: p for p in (FULL, PREHASH)}


@dataclass(slots=True)
class Samples:
    plain: list[float] = field(default_factory=list)
    worker: list[float] = field(default_factory=list)
    staging: list[float] = field(default_factory=list)
    on_path: int = 0  # rounds whose commit took this path
    off_path: list[str] = field(default_factory=list)


def _block(seed: bytes) -> bytearray:
    block = bytearray(os.urandom(BLOCK))
    block[: len(seed)] = seed  # distinct content per round: no dedup short cut
    return block


def _pieces(block: bytearray, size: int) -> list[memoryview]:
    out, left = [], size
    while left:
        piece = memoryview(block)[: min(left, len(block))]
        out.append(piece)
        left -= len(piece)
    return out


def stage(ing: Ingest, repo: str, size: int, seed: bytes) -> tuple[str, str, float]:
    """Write ``size`` bytes into a new upload; return (upload id, sha256 digest, seconds
    spent writing). The digest is computed before, untimed."""
    block = _block(seed)
    pieces = _pieces(block, size)
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
    t0 = time.perf_counter()
    up = ing.start_upload(repo)
    for piece in pieces:
        up.write(piece)
    up.close()
    return up.id, "sha256:" + h.hexdigest(), time.perf_counter() - t0


def plain_sha256(path: Path) -> float:
    buf = bytearray(MIB)
    view = memoryview(buf)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return time.perf_counter() - t0


def through_worker(ing: Ingest, upload_id: str, repo: str, digest: str) -> tuple[float, bool]:
    """(finish → committed seconds, whether the commit used a prehash record)."""
    t0 = time.perf_counter()
    result = ing.resume(repo, upload_id).finish(digest).wait(timeout=600)
    elapsed = time.perf_counter() - t0
    assert result["status"] == "committed", result
    return elapsed, bool(result.get("prehashed"))


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def one_round(
    ing: Ingest, storage: Path, path: VerifyPath, size: int, rnd: int, hashlib_first: bool
) -> tuple[float, float, float, bool]:
    """(hashlib s, worker s, staging s, prehashed) for one blob on ``path``."""
    repo = f"bench/verify-{path.name}"
    uid, digest, staging = stage(ing, repo, size, f"{path.name}:{rnd}".encode())
    data = storage / "uploads" / uid / "data"
    if hashlib_first:
        plain = plain_sha256(data)
        worker, prehashed = through_worker(ing, uid, repo, digest)
    else:
        worker, prehashed = through_worker(ing, uid, repo, digest)
        plain = plain_sha256(blob_path(storage, digest))
    return plain, worker, staging, prehashed


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rss-size-mib", type=int, default=4096, help="0: skip the memory part")
    p.add_argument(
        "--paths",
        default="full,prehash",
        help="comma-separated verification paths to measure: full, prehash (default both)",
    )
    args = p.parse_args()
    wanted = [n.strip() for n in args.paths.split(",") if n.strip()]
    if not wanted or any(n not in PATHS for n in wanted):
        p.error(f"--paths: {args.paths!r}: choose from {', '.join(PATHS)}")
    paths = [PATHS[n] for n in dict.fromkeys(wanted)]

    size = args.size_mib * MIB
    with (
        tempfile.TemporaryDirectory(prefix="bench-verify-", dir=os.environ.get("BENCH_DIR")) as tmp,
        LocalRedis() as redis,
    ):
        storage = Path(tmp) / "storage"
        env = {"REDIS_URL": redis.url, "INGEST_STORAGE_ROOT": str(storage)}
        # The threshold is read where the upload is written (Upload.write starts the
        # prehash), so one worker serves both paths; only the writing side differs.
        ingests = {
            FULL.name: Ingest.from_settings(
                Settings.from_env({**env, "INGEST_PREHASH_MIN_SIZE": "0"})
            ),
            PREHASH.name: Ingest.from_settings(Settings.from_env(env)),
        }
        threshold = ingests[PREHASH.name].settings.prehash_min_size
        if PREHASH in paths and not 0 < threshold <= size:
            print(
                f"note: INGEST_PREHASH_MIN_SIZE is {threshold} bytes: a {args.size_mib} MiB "
                "upload gets no prehash, so the prehash path is not measured",
                file=sys.stderr,
            )
            paths.remove(PREHASH)
            if not paths:
                return 2
        titles = {pth.name: pth.title.format(threshold=f"{threshold // MIB} MiB") for pth in paths}
        samples = {pth.name: Samples() for pth in paths}
        with Worker(env, Path(tmp) / "worker.log"):
            through_worker(ingests[FULL.name], *_warm(ingests[FULL.name]))
            for r in range(args.rounds):
                order = paths if r % 2 == 0 else paths[::-1]
                for i, pth in enumerate(order):
                    # Full pass: alternate who reads first. Prehash: finish right away.
                    hashlib_first = pth is FULL and (r + i) % 2 == 0
                    plain, worker, staging, prehashed = one_round(
                        ingests[pth.name], storage, pth, size, r, hashlib_first
                    )
                    s = samples[pth.name]
                    s.plain.append(plain)
                    s.worker.append(worker)
                    s.staging.append(staging)
                    took = "prehash record" if prehashed else "full pass"
                    if prehashed == pth.prehashed:
                        s.on_path += 1
                    else:
                        s.off_path.append(f"round {r}: the commit took the {took}")
                    print(
                        f"round {r} {pth.name:7}: staging {staging:6.2f} s   "
                        f"hashlib {size / plain / 1e6:7.1f} MB/s   "
                        f"worker finish→committed {worker:6.3f} s "
                        f"({size / worker / 1e6:7.1f} MB/s, {took})"
                        + ("" if prehashed == pth.prehashed else "  ⚠ NOT THIS PATH"),
                        flush=True,
                    )
        print()
        print(
            f"| {args.size_mib} MiB, sha256 claim, median of {args.rounds} | hashlib.sha256 "
            "| worker, finish → committed | ratio worker/hashlib | staging s (writes) "
            "| staging + finish s | rounds on this path |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for pth in paths:
            s = samples[pth.name]
            mp, mw, ms = (statistics.median(v) for v in (s.plain, s.worker, s.staging))
            total = statistics.median(a + b for a, b in zip(s.staging, s.worker, strict=True))
            print(
                f"| {titles[pth.name]} | {size / mp / 1e6:.0f} MB/s "
                f"| {size / mw / 1e6:.0f} MB/s ({mw:.3f} s) | **{mp / mw:.2f}** "
                f"| {ms:.2f} | {total:.2f} | {s.on_path}/{args.rounds} |"
            )
        if PREHASH in paths:
            print(
                "\nThe prehash row is not a verification throughput: its bytes were hashed "
                "by a worker while they were written (the staging column), and "
                "finish → committed only waits for the tail and compares."
            )
        for pth in paths:
            for msg in samples[pth.name].off_path:
                print(f"⚠ {pth.name}: {msg}", file=sys.stderr)

        if args.rss_size_mib:
            big = args.rss_size_mib * MIB
            ing = ingests[FULL.name]  # no prehash: the pool process runs the full pass
            uid, digest, _ = stage(ing, "bench/rss", big, b"rss")
            w = Worker(env, Path(tmp) / "worker-rss.log").start()
            try:
                child = w.children()[0]
                peak_sampled = 0
                t0 = time.perf_counter()
                ticket = ing.resume("bench/rss", uid).finish(digest)
                while True:
                    peak_sampled = max(peak_sampled, vm(child, "VmRSS"))
                    if ing.queue.info(ticket.task_id).state in ("SUCCESS", "FAILURE"):
                        break
                    time.sleep(0.05)
                result = ticket.wait(timeout=10)
                elapsed = time.perf_counter() - t0
                hwm_child, hwm_main = vm(child, "VmHWM"), vm(w.pid, "VmHWM")
            finally:
                w.stop()
            took = "prehash record ⚠" if result.get("prehashed") else "full pass"
            print(
                f"\n| verify {args.rss_size_mib} MiB ({took}) | {big / elapsed / 1e6:.0f} MB/s "
                f"| pool child peak RSS {hwm_child / MIB:.1f} MiB "
                f"(sampled {peak_sampled / MIB:.1f}) | worker main {hwm_main / MIB:.1f} MiB |"
            )
        if any(samples[pth.name].off_path for pth in paths):
            return 1
    return 0


def _warm(ing: Ingest) -> tuple[str, str, str]:
    uid, digest, _ = stage(ing, "bench/warm", MIB, b"warm")
    return uid, "bench/warm", digest


def blob_path(storage: Path, digest: str) -> Path:
    # After the commit the staged bytes live in the blob store (same inode, renamed).
    hexpart = digest.split(":", 1)[1]
    return storage / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


if __name__ == "__main__":
    sys.exit(main())
