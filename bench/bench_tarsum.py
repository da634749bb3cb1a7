"""Throughput of TarSum v1+sha256 against plain hashlib.sha256 over the same file.

Usage: ``.venv/bin/python bench/bench_tarsum.py [--rounds 3] [--keep DIR]``

Builds (a) a 50 MiB single-file tar and (b) a tar of 10,000 small files (sizes
uniform in 0..8 KiB, so about 4 KiB on average), then times both hashers
alternately, reading 1 MiB at a time, and prints medians as a markdown table.
Goals: ratio tarsum/sha256 >= 0.85 for (a) and >= 0.15 for (b).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.tarsum import TarSum

CHUNK = 1 << 20
LABEL = "tarsum.v1+sha256"


def build_large(path: Path, size: int = 50 << 20) -> None:
    """A tar holding one file of ``size`` pseudo-random bytes."""
    rng = random.Random(1)
    data = rng.randbytes(size)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        info.mtime = 1_400_000_000
        tf.addfile(info, io.BytesIO(data))


def build_small(path: Path, count: int = 10_000, max_size: int = 8192) -> None:
    """A tar of ``count`` files in 100 directories, sizes uniform in [0, max_size]."""
    rng = random.Random(2)
    pool = rng.randbytes(max_size)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(count):
            size = rng.randint(0, max_size)
            info = tarfile.TarInfo(f"dir{i % 100:03d}/file{i:05d}.txt")
            info.size = size
            info.mtime = 1_400_000_000 + i
            info.mode = 0o644
            info.uname = info.gname = "root"
            tf.addfile(info, io.BytesIO(pool[:size]))


def run_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def run_tarsum(path: Path) -> str:
    ts = TarSum(LABEL)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            ts.update(chunk)
    return ts.finish()


def measure(path: Path, rounds: int) -> tuple[float, float]:
    """Median seconds of (sha256, tarsum), run alternately after one warm-up each."""
    runners: list[Callable[[Path], str]] = [run_sha256, run_tarsum]
    for run in runners:
        run(path)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for idx, run in enumerate(runners):
            start = time.perf_counter()
            run(path)
            times[idx].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="build the tars here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        cases: list[tuple[str, Path, Callable[[Path], None], float]] = [
            ("50 MiB single file", base / "large.tar", build_large, 0.85),
            ("10,000 small files", base / "small.tar", build_small, 0.15),
        ]
        print("| archive | size (MB) | sha256 MB/s | tarsum.v1 MB/s | ratio | goal |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        failed = False
        for title, path, build, goal in cases:
            if not path.exists():
                build(path)
            size_mb = path.stat().st_size / 1e6
            sha_s, ts_s = measure(path, args.rounds)
            ratio = sha_s / ts_s
            failed |= ratio < goal
            print(
                f"| {title} | {size_mb:.1f} | {size_mb / sha_s:.0f} | {size_mb / ts_s:.0f} "
                f"| {ratio:.2f} | >= {goal:.2f} |"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
