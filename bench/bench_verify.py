"""Verification throughput and memory of one real worker.

    .venv/bin/python bench/bench_verify.py [--size-mib 1024] [--rounds 5] [--rss-size-mib 4096]

Throughput: stages a blob, then alternately (a) hashes the staged file with plain
``hashlib.sha256`` in 1 MiB reads and (b) finishes the upload and lets a real
``celery worker`` verify and commit it (time = finish → committed result, so it
includes the Celery round trip, the move and the links). Both read the same
file in the same page-cache state. Reports medians and the ratio (b)/(a).

Memory: verifies a ``--rss-size-mib`` blob on a fresh worker and reports the
peak RSS (VmHWM) of the pool process that ran it, and of the worker's main process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from devtools.devstack import Worker
from devtools.localredis import LocalRedis
from ingest.api import Ingest
from ingest.config import Settings

MIB = 1 << 20


def stage(ing: Ingest, repo: str, size: int, seed: bytes) -> tuple[str, str]:
    """Write ``size`` bytes into a new upload; return (upload id, sha256 digest)."""
    block = bytearray(os.urandom(16 * MIB))
    block[: len(seed)] = seed  # distinct content per round: no dedup short cut
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


def plain_sha256(path: Path) -> float:
    buf = bytearray(MIB)
    view = memoryview(buf)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return time.perf_counter() - t0


def through_worker(ing: Ingest, upload_id: str, repo: str, digest: str) -> float:
    t0 = time.perf_counter()
    result = ing.resume(repo, upload_id).finish(digest).wait(timeout=600)
    elapsed = time.perf_counter() - t0
    assert result["status"] == "committed", result
    return elapsed


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rss-size-mib", type=int, default=4096)
    args = p.parse_args()

    size = args.size_mib * MIB
    with (
        tempfile.TemporaryDirectory(prefix="bench-verify-", dir=os.environ.get("BENCH_DIR")) as tmp,
        LocalRedis() as redis,
    ):
        storage = Path(tmp) / "storage"
        env = {"REDIS_URL": redis.url, "INGEST_STORAGE_ROOT": str(storage)}
        ing = Ingest.from_settings(Settings.from_env(env))
        plain: list[float] = []
        ours: list[float] = []
        with Worker(env, Path(tmp) / "worker.log"):
            through_worker(ing, *_warm(ing))
            for r in range(args.rounds):
                uid, digest = stage(ing, "bench/verify", size, r.to_bytes(4, "big"))
                data = storage / "uploads" / uid / "data"
                # Alternate the order so neither side always runs on a warmer cache.
                if r % 2 == 0:
                    plain.append(plain_sha256(data))
                    ours.append(through_worker(ing, uid, "bench/verify", digest))
                else:
                    ours.append(through_worker(ing, uid, "bench/verify", digest))
                    plain.append(plain_sha256(blob_path(storage, digest)))
                print(
                    f"round {r}: hashlib {size / plain[-1] / 1e6:7.1f} MB/s   "
                    f"worker {size / ours[-1] / 1e6:7.1f} MB/s",
                    flush=True,
                )
        mp, mo = statistics.median(plain), statistics.median(ours)
        print(
            f"\n| verify {args.size_mib} MiB sha256 | hashlib {size / mp / 1e6:.0f} MB/s "
            f"| worker {size / mo / 1e6:.0f} MB/s | ratio {mp / mo:.3f} |"
        )

        if args.rss_size_mib:
            big = args.rss_size_mib * MIB
            uid, digest = stage(ing, "bench/rss", big, b"rss")
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
                ticket.wait(timeout=10)
                elapsed = time.perf_counter() - t0
                hwm_child, hwm_main = vm(child, "VmHWM"), vm(w.pid, "VmHWM")
            finally:
                w.stop()
            print(
                f"| verify {args.rss_size_mib} MiB | {big / elapsed / 1e6:.0f} MB/s "
                f"| pool child peak RSS {hwm_child / MIB:.1f} MiB "
                f"(sampled {peak_sampled / MIB:.1f}) | worker main {hwm_main / MIB:.1f} MiB |"
            )
    return 0


def _warm(ing: Ingest) -> tuple[str, str, str]:
    uid, digest = stage(ing, "bench/warm", MIB, b"warm")
    return uid, "bench/warm", digest


def blob_path(storage: Path, digest: str) -> Path:
    # After the commit the staged bytes live in the blob store (same inode, renamed).
    hexpart = digest.split(":", 1)[1]
    return storage / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


if __name__ == "__main__":
    sys.exit(main())
