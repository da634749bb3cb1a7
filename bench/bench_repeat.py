"""One workload pushed N times in a row against one stack of ours: per-run CPU.

    .venv/bin/python bench/bench_repeat.py [--workload mono-1g] [--runs 5] [--drop-caches]

A diagnostic for run-to-run variance: it keeps one frontend, worker and Redis up
and reports wall time, MiB/s and the CPU of each server tree per run. Use
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
    p.add_argument("--drop-caches", action="store_true", help="empty the page cache first")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-repeat-", dir=args.tmpdir))
    wl = WORKLOADS[args.workload]
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
            print(
                f"run {run}: {seconds:.2f} s, {size / seconds / (1 << 20):.0f} MiB/s, CPU {cpu}"
                + (f", {len(failures)} failed" if failures else ""),
                flush=True,
            )
            failed |= bool(failures)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
