"""Online garbage collection under load, with real processes: two pusher processes push
images through ``ingest serve`` and a ``celery worker`` (some reusing old blobs that
are garbage at that moment) while this process collects garbage again and again with
a tiny grace period. Afterwards fsck is clean, every accepted manifest is there with
every blob it references intact, and the garbage nobody referenced is gone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ingest import paths
from ingest.digests import parse_digest
from ingest.storage.base import PathNotFound
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRACE = 0.3
PUSH_SECONDS = 12.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def present(stack: Stack, digest: str) -> bool:
    try:
        stack.ingest.driver.stat(paths.blob_data_path(parse_digest(digest)))
    except PathNotFound:
        return False
    return True


def test_gc_while_pushing_never_loses_a_referenced_blob(stack: Stack, tmp_path: Path) -> None:
    stack.worker()
    url = stack.frontend().url
    repo = "gc/stress"
    # Old blobs: some a pusher will reference later (garbage until then), some never.
    reused = [os.urandom(20_000 + i) for i in range(8)]
    never = [os.urandom(10_000 + i) for i in range(8)]
    with httpx.Client(base_url=url, timeout=60) as client:
        for data in reused + never:
            r = client.post(
                f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data
            )
            assert r.status_code == 201, r.text
    seed_file = tmp_path / "seeds"
    seed_file.write_text("".join(d.hex() + "\n" for d in reused))
    time.sleep(2 * GRACE)

    pushers = []
    for i in range(2):
        out = tmp_path / f"pushed-{i}.jsonl"
        args = [url, f"{repo}{i}", str(seed_file), str(out), str(PUSH_SECONDS)]
        # Each pusher's repository holds the seeds too (a mount would also do).
        for data in reused:
            stack.ingest.mount(f"{repo}{i}", repo, parse_digest(sha256(data)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.gc_pusher", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pushers.append((proc, out))

    runs = []
    while any(p.poll() is None for p, _ in pushers):
        runs.append(stack.ingest.gc(grace=GRACE))
        time.sleep(0.2)
    stats = []
    for proc, _ in pushers:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr[-2000:]
        stats.append(json.loads(stdout.strip().splitlines()[-1]))
    time.sleep(2 * GRACE)
    final = stack.ingest.gc(grace=GRACE)
    runs.append(final)

    print(  # what the run exercised, for whoever reads the output (-s)
        "gc runs",
        len(runs),
        "freed",
        sum(r.blobs_deleted for r in runs),
        "rescued",
        sum(r.rescued for r in runs),
        "pushers",
        stats,
    )
    # The collector ran concurrently and freed something every so often.
    assert len(runs) >= 5
    assert sum(r.blobs_deleted for r in runs) >= len(never)
    assert all(r.swept for r in runs)
    # The pushers pushed, and some of them reused old blobs that were garbage.
    assert all(s["pushed"] > 0 for s in stats), stats
    assert sum(s["reused"] for s in stats) > 0, stats

    # fsck: every blob and alias hashes to its address, no link names a missing blob.
    report = stack.ingest.fsck()
    assert report.clean, report.to_dict()["findings"]
    # Every manifest a pusher got 201 for is there, with every blob it references
    # present, linked, and intact (sha256 recomputed).
    accepted = 0
    for i, (_, out) in enumerate(pushers):
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            m = stack.ingest.manifests.get(f"{repo}{i}", rec["tag"])
            assert sha256(m.body) == rec["digest"]
            for digest in rec["blobs"]:
                with stack.ingest.open(f"{repo}{i}", digest) as f:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 16):
                        h.update(chunk)
                assert "sha256:" + h.hexdigest() == digest
            accepted += 1
    assert accepted == sum(s["pushed"] for s in stats)
    # The garbage nobody referenced was freed, links and all.
    for data in never:
        assert not present(stack, sha256(data))
    assert not list(stack.ingest.driver.walk(paths.gc_verdicts_root()))
