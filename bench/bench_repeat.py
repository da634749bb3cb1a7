"""One workload pushed N times in a row against one stack of ours: per-run CPU.

    .venv/bin/python bench/bench_repeat.py [--workload mono-1g] [--runs 5] [--scale 1]
        [--drop-caches]

A diagnostic for run-to-run variance: it keeps one frontend, worker and Redis up
and reports wall time, MiB/s, the CPU of each server tree per run and the
frontend's peak RSS so far (``VmHWM``: with ``--scale 4`` a 4 GiB upload shows
whether the frontend's memory stays flat while it streams). Use
``--drop-caches`` (root only) to empty the page cache before every run. No Go
side and no ratio: compare its runs with each other only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_push import (
    WORKLOADS,
    Content,
    OursServer,
    drop_page_cache,
    make_blobs,
    run_pushes,
    server_cpu,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="mono-1g", choices=sorted(WORKLOADS))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="blob size/count multiplier")
    p.add_argument("--drop-caches", action="store_true", help="empty the page cache first")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-repeat-", dir=args.tmpdir))
    wl = WORKLOADS[args.workload].scaled(args.scale)
    content = Content()
    server = OursServer(
        root / "ours", frontends=1, worker_procs=1, worker_concurrency=2, worker_pool="prefork"
    ).start()
    failed = False
    try:
        for run in range(args.runs):
            blobs = make_blobs(content, wl, f"repeat:{time.time_ns()}:{run}")
            os.sync()
            if args.drop_caches:
                drop_page_cache()
            cpu0 = server_cpu(server)
            seconds, done, failures = run_pushes(
                server, content, wl, blobs, f"repeat/{wl.name}", args.timeout
            )
            cpu1 = server_cpu(server)
            size = sum(b.size for b, _ in done)
            cpu = ", ".join(f"{k} {cpu1[k] - cpu0[k]:.2f} s" for k in cpu0)
            peak = max(_peak_rss_mib(pid) for pid in server.pids()["frontend"])
            print(
                f"run {run}: {size >> 20} MiB in {seconds:.2f} s, "
                f"{size / seconds / (1 << 20):.0f} MiB/s, CPU {cpu}, "
                f"frontend peak RSS {peak:.1f} MiB"
                + (f", {len(failures)} failed" if failures else ""),
                flush=True,
            )
            failed |= bool(failures)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
