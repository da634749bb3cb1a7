"""fsck against real processes: blobs committed by a real worker, corrupted on disk,
found and repaired by the ``ingest`` CLI, and a scheduled share run by the worker."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.errors import BlobUnknown
from ingest.queue import TASK_FSCK, CeleryTaskQueue
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def ingest(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def push(stack: Stack, repo: str, data: bytes, digest: str | None = None) -> dict[str, object]:
    up = stack.ingest.start_upload(repo)
    up.write(data)
    result = up.finish(digest or sha256(data)).wait(timeout=60)
    assert result["status"] == "committed"
    return result


def blob_file(stack: Stack, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return stack.storage / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def corrupt(path: Path, content: bytes) -> None:
    """Overwrite a committed (possibly read-only) blob file in place."""
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(content)
    path.chmod(stat.S_IMODE(mode))


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def test_fsck_finds_a_corrupted_blob_repair_quarantines_it_and_it_can_be_pushed_again(
    stack: Stack,
) -> None:
    stack.worker()
    frontend = stack.frontend()
    good, other = os.urandom(300_000), os.urandom(1000)
    push(stack, "fsck/a", good)
    push(stack, "fsck/b", good, sha512(good))
    push(stack, "fsck/a", other)
    clean = ingest(stack, "fsck")
    assert clean.returncode == 0, clean.stderr
    assert "checked 2 blob(s)" in clean.stdout
    assert "clean" in clean.stdout

    bad = bytearray(good)
    bad[1000] ^= 0x40  # one flipped bit, same size
    corrupt(blob_file(stack, sha256(good)), bytes(bad))
    found = ingest(stack, "--json", "fsck")
    assert found.returncode == 3, found.stderr
    report = json.loads(found.stdout)
    (f,) = report["findings"]
    assert (f["kind"], f["action"]) == ("blob-mismatch", "reported")
    assert (f["expected"], f["computed"], f["size"]) == (sha256(good), sha256(bytes(bad)), len(bad))
    assert f["path"] == "/" + str(blob_file(stack, sha256(good)).relative_to(stack.storage))

    human = ingest(stack, "fsck", "--repair")
    assert human.returncode == 3, human.stderr
    assert "blob-mismatch" in human.stdout
    assert "quarantined as" in human.stdout
    assert "3 link(s) removed" in human.stdout  # fsck/a and fsck/b, and b's sha512 alias
    assert not blob_file(stack, sha256(good)).exists()
    (record_file,) = (stack.storage / "quarantine").glob("*/record.json")
    record = json.loads(record_file.read_text())
    assert record["computed"] == sha256(bytes(bad))
    assert (record_file.parent / "data").read_bytes() == bytes(bad)

    # Every client now sees the digest as unknown, in every repository and alias.
    for repo, digest in (("fsck/a", sha256(good)), ("fsck/b", sha512(good))):
        with pytest.raises(BlobUnknown):
            stack.ingest.stat(repo, digest)
        head = httpx.head(f"{frontend.url}/v2/{repo}/blobs/{digest}")
        assert head.status_code == 404
    assert httpx.head(f"{frontend.url}/v2/fsck/a/blobs/{sha256(other)}").status_code == 200

    # Pushed again, it is verified and committed afresh (no dedup against bad bytes).
    again = push(stack, "fsck/b", good, sha512(good))
    assert again["deduplicated"] is False
    assert blob_file(stack, sha256(good)).read_bytes() == good
    assert httpx.head(f"{frontend.url}/v2/fsck/b/blobs/{sha512(good)}").status_code == 200
    assert ingest(stack, "fsck").returncode == 0


def test_the_scheduled_share_runs_on_a_real_worker_and_resumes_from_storage(
    stack: Stack,
) -> None:
    worker = stack.worker()
    datas = [os.urandom(2000 + i) for i in range(3)]
    for d in datas:
        push(stack, "fsck/share", d)
    corrupt(blob_file(stack, sha256(datas[1])), b"x" * len(datas[1]))
    queue = stack.ingest.queue
    assert isinstance(queue, CeleryTaskQueue)
    app = queue.app
    shares = [
        app.send_task(TASK_FSCK, kwargs={"budget_blobs": 2, "repair": True}).get(timeout=60)
        for _ in range(2)
    ]
    assert [s["status"] for s in shares] == ["done", "done"]
    assert [s["blobs_checked"] for s in shares] == [2, 1]
    assert [s["pass_completed"] for s in shares] == [False, True]
    findings = [f for s in shares for f in s["findings"]]
    assert [(f["kind"], f["expected"], f["action"]) for f in findings] == [
        ("blob-mismatch", sha256(datas[1]), "quarantined")
    ]
    state = json.loads((stack.storage / "maintenance" / "fsck.json").read_text())
    assert state["passes_completed"] == 1
    assert state["last_pass"]["blobs"] == 3
    assert state["last_pass"]["repaired"] == 1
    assert not blob_file(stack, sha256(datas[1])).exists()
    errors = [
        line
        for line in map(_json_or_none, worker.log().splitlines())
        if line and line.get("level") == "error" and line["msg"].startswith("fsck: blob-mismatch")
    ]
    assert len(errors) == 1  # one ERROR line per finding, with the details
    assert errors[0]["fsck"]["computed"] == sha256(b"x" * len(datas[1]))
    # Arguments from the broker are checked before anything runs.
    refused = app.send_task(TASK_FSCK, kwargs={"budget": "lots"})
    with pytest.raises(Exception, match="budget"):
        refused.get(timeout=60)
