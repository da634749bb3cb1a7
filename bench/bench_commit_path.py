"""What the integrity machinery costs: this tree's write/commit path against another's.

    .venv/bin/python bench/bench_commit_path.py --base /tmp/wt-base [--rounds 5]
        [--small 2000] [--large-mib 1024]

``--base`` is a checkout of an earlier commit (``git worktree add /tmp/wt-base
<commit>``). Both trees run the same two workloads in subprocesses (``PYTHONPATH`` set
to the tree), alternating which goes first every round, on the same filesystem:

* ``small``: N x 64 KiB blobs, each staged through :class:`ingest.uploads.UploadWriter`,
  frozen as ``finish`` does, and verified and committed by
  :func:`ingest.commit.commit_upload`: the per-blob cost (seal, lease, extra stats);
* ``large``: one blob staged in 1 MiB writes, then committed: the per-write cost of
  the append lock and the seal check, and a large commit.

Reported per workload: medians of wall seconds and CPU seconds (user + system of the
subprocess) per tree, and the ratio this tree / base. No Celery and no HTTP: only the
storage path, where the mechanism lives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUNNER = r"""
import hashlib, json, os, sys, time, uuid
from ingest.commit import commit_upload
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadState, UploadWriter
try:  # newer checkouts take the claim as a parsed Digest (check_supported came with it)
    from ingest.digests import check_supported, parse_digest as as_claim
except ImportError:  # older ones as text
    as_claim = str

root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
driver = FilesystemDriver(root)
staging = Staging(driver)
block = os.urandom(1 << 20)

def one(i):
    info = staging.create("bench/commit-path")
    w = UploadWriter(staging, info)
    h = hashlib.sha256()
    left = size
    while left:
        piece = block[: min(left, len(block))]
        piece = i.to_bytes(8, "big") + piece[8:] if left == size else piece
        w.write(piece)
        h.update(piece)
        left -= len(piece)
    w.close()
    # What finish() does: freeze (where the tree can), record the attempt.
    frozen = staging.seal(info.id) if hasattr(staging, "seal") else staging.size(info.id)
    task = str(uuid.uuid4())
    digest = "sha256:" + h.hexdigest()
    staging.transition(info.id, staging.state(info.id), UploadState.FINISHING,
                       claimed_digest=digest, size=frozen, task_id=task)
    commit_upload(driver, info.id, as_claim(digest), task_id=task)

t0, c0 = time.perf_counter(), os.times()
for i in range(count):
    one(i)
c1 = os.times()
print(json.dumps({"wall": time.perf_counter() - t0,
                  "cpu": (c1.user - c0.user) + (c1.system - c0.system)}))
"""


def drop_caches() -> None:
    """Start every run from an empty page cache (root only), so neither tree pays
    for the other's dirty pages or profits from its cached ones."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(
    tree: Path, workload: str, count: int, size: int, tmp: Path, empty_cache: bool
) -> dict[str, float]:
    if empty_cache:
        drop_caches()
    root = tempfile.mkdtemp(prefix=f"{workload}-", dir=tmp)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, root, str(count), str(size)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subprocess.run(["rm", "-rf", root], check=True)
    subprocess.run(["sync"], check=True)
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=2000, help="number of 64 KiB blobs")
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--tmpdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--workloads", nargs="+", default=["small", "large"])
    parser.add_argument(
        "--drop-caches", action="store_true", help="empty the page cache before every run"
    )
    args = parser.parse_args()
    this = Path(__file__).resolve().parent.parent
    every = {"small": (args.small, 64 << 10), "large": (1, args.large_mib << 20)}
    workloads = {name: every[name] for name in args.workloads}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for name, (count, size) in workloads.items():
            order = [("this", this), ("base", args.base)]
            if r % 2:
                order.reverse()
            for label, tree in order:
                results.setdefault((name, label), []).append(
                    run(tree, name, count, size, args.tmpdir, args.drop_caches)
                )
    print(f"rounds: {args.rounds}; base: {args.base}")
    columns = ("this wall s", "base wall s", "wall ratio", "this CPU s", "base CPU s", "CPU ratio")
    print("| workload | " + " | ".join(columns) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (count, size) in workloads.items():
        med = {
            (label, k): statistics.median(x[k] for x in results[(name, label)])
            for label in ("this", "base")
            for k in ("wall", "cpu")
        }
        desc = f"{count} x {size >> 10} KiB" if size < 1 << 20 else f"{count} x {size >> 20} MiB"
        print(
            f"| {name} ({desc}) | {med['this', 'wall']:.3f} | {med['base', 'wall']:.3f} | "
            f"{med['this', 'wall'] / med['base', 'wall']:.3f} | {med['this', 'cpu']:.3f} | "
            f"{med['base', 'cpu']:.3f} | {med['this', 'cpu'] / med['base', 'cpu']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
