"""The ``ingest`` CLI against the real frontend, worker and Redis, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.localredis import free_port
from tests.data import TARSUM_VECTORS
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(shared_stack: Stack) -> str:
    return shared_stack.frontend().url


def ingest(
    stack: Stack, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        env={**os.environ, **stack.env},
        input=stdin.decode("latin-1") if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_push_uploads_in_chunks_and_prints_the_committed_digest(
    shared_stack: Stack, url: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    f = tmp_path / "layer.bin"
    f.write_bytes(data)
    run = ingest(
        shared_stack,
        "--json",
        "push",
        str(f),
        "--repo",
        "cli/push",
        "--chunk-size",
        "1MiB",
        "--url",
        url,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "committed"
    assert result["digest"] == sha256(data)
    assert result["size"] == len(data)
    human = ingest(shared_stack, "push", str(f), "--repo", "cli/push2", "--url", url)
    assert human.returncode == 0
    assert f"committed cli/push2@{sha256(data)}" in human.stdout


def test_push_from_stdin_with_a_tarsum_claim(shared_stack: Stack, url: str) -> None:
    layer = (
        TARSUM_VECTORS
        / "testdata/46af0962ab5afeb5ce6740d4d91652e69206fc991fd5328c1a94d364ad00e457/layer.tar"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "--json",
            "push",
            "-",
            "--repo",
            "cli/tarsum",
            "--tarsum",
            "v1",
            "--url",
            url,
        ],
        env={**os.environ, **shared_stack.env},
        stdin=layer.open("rb"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["digest"] == (
        "tarsum.v1+sha256:41cd5c911333ee394776e432fc5a27cc82dfea313e5feff965e31c0fddd9213d"
    )


def test_a_broken_digest_fails_with_exit_3_and_can_be_retried_by_id_and_in_bulk(
    shared_stack: Stack, url: str, tmp_path: Path
) -> None:
    data = os.urandom(500_000)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    wrong = sha256(b"not it")
    run = ingest(
        shared_stack, "push", str(f), "--repo", "cli/broken", "--digest", wrong, "--url", url
    )
    assert run.returncode == 3
    assert "DIGEST_INVALID" in run.stderr
    assert sha256(data) in run.stderr  # the computed digest is shown
    upload_id = run.stderr.split('"upload_id": "', 1)[1].split('"', 1)[0]

    status = ingest(shared_stack, "--json", "status", upload_id)
    assert status.returncode == 0
    st = json.loads(status.stdout)
    assert st["state"] == "failed"
    assert st["error"]["code"] == "DIGEST_INVALID"

    # Bulk retry re-queues it (same wrong claim: it fails again, still exit 0 for the queueing).
    bulk = ingest(shared_stack, "--json", "retry", "--failed", "--code", "DIGEST_INVALID")
    assert bulk.returncode == 0, bulk.stderr
    assert upload_id in [q["upload_id"] for q in json.loads(bulk.stdout)["queued"]]

    # Retry with the right digest commits it (once the bulk attempt has failed again).
    for _ in range(100):
        if (
            json.loads(ingest(shared_stack, "--json", "status", upload_id).stdout)["state"]
            == "failed"
        ):
            break
    fixed = ingest(shared_stack, "--json", "retry", upload_id, "--digest", sha256(data))
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["status"] == "committed"
    again = ingest(shared_stack, "retry", upload_id)
    assert again.returncode == 3  # already committed: BLOB_UPLOAD_INVALID


def test_an_unreachable_frontend_is_exit_4(shared_stack: Stack, tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"x")
    run = ingest(shared_stack, "push", str(f), "--url", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 4
    assert "UNAVAILABLE" in run.stderr


def test_usage_and_configuration_errors_are_exit_2(shared_stack: Stack) -> None:
    assert ingest(shared_stack, "retry").returncode == 2
    bad = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "status", "x"],
        env={**os.environ, **shared_stack.env, "INGEST_MAX_BLOB_SIZE": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "INGEST_MAX_BLOB_SIZE" in bad.stderr


def test_the_readme_walkthrough_push_break_see_and_retry_over_http_only(
    shared_stack: Stack, url: str, tmp_path: Path
) -> None:
    # Only the frontend URL: no Redis or storage reachable from this shell.
    env = {
        **os.environ,
        "INGEST_URL": url,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "INGEST_STORAGE_ROOT": str(tmp_path / "not-the-storage"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    data = os.urandom(2 * 1024 * 1024)
    f = tmp_path / "walk.bin"
    f.write_bytes(data)
    ok = cli("push", str(f), "--repo", "cli/walk", "--progress", "--chunk-size", "512KiB")
    assert ok.returncode == 0, ok.stderr
    assert "upload" in ok.stderr  # the upload progress bar
    assert "verify" in ok.stderr  # then the verification's
    assert f"committed cli/walk@{sha256(data)} ({len(data)} bytes), upload " in ok.stdout
    again = cli("push", str(f), "--repo", "cli/walk")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"skipped cli/walk@{sha256(data)}")

    broken = cli("push", str(f), "--repo", "cli/walk", "--digest", sha256(b"typo"))
    assert broken.returncode == 3
    assert "DIGEST_INVALID" in broken.stderr
    upload_id = broken.stderr.split('"upload_id": "', 1)[1].split('"', 1)[0]

    seen = cli("--json", "status", upload_id)
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout)["error"]["code"] == "DIGEST_INVALID"

    fixed = cli("--json", "retry", upload_id, "--digest", sha256(data))
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["status"] == "committed"

    back = tmp_path / "back.bin"
    pulled = cli("pull", "cli/walk", sha256(data), "-o", str(back))
    assert pulled.returncode == 0, pulled.stderr
    assert back.read_bytes() == data


def run(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a user runs it, with ``stdin`` through a pipe (no size to fstat)."""
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def http_only(url: str, tmp_path: Path) -> dict[str, str]:
    """Only the frontend URL: no Redis or storage reachable from this shell."""
    return {
        "INGEST_URL": url,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "INGEST_STORAGE_ROOT": str(tmp_path / "not-the-storage"),
    }


def test_push_from_a_pipe_streams_with_a_bar_of_bytes_and_rate_but_no_total(
    url: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)
    env = http_only(url, tmp_path)
    piped = run(
        env, "push", "-", "--repo", "cli/pipe", "--progress", "--chunk-size", "1MiB", stdin=data
    )
    assert piped.returncode == 0, piped.stderr.decode()
    out, err = piped.stdout.decode(), piped.stderr.decode()
    assert f"committed cli/pipe@{sha256(data)} ({len(data)} bytes), upload " in out
    upload_id = out.rsplit("upload ", 1)[1].strip()
    bar = [line for line in re.split(r"[\r\n]+", err) if line.startswith("upload:")]
    assert bar, err
    assert re.fullmatch(r"upload: 3\.0 MiB  (?:[\d.]+|--) MiB/s\s*", bar[-1]), bar[-1]
    assert "ETA" not in err.split("verify:", 1)[0]  # no total, no ETA
    seen = run(env, "status", upload_id)
    assert seen.returncode == 0, seen.stderr.decode()
    fields = dict(line.split(": ", 1) for line in seen.stdout.decode().splitlines())
    assert fields["state"] == "committed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["started_at"])
    # The same bytes from a file: hashed first, found by a HEAD, not sent again.
    f = tmp_path / "same.bin"
    f.write_bytes(data)
    again = run(env, "push", str(f), "--repo", "cli/pipe")
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout.decode().startswith(f"skipped cli/pipe@{sha256(data)}")


def test_put_with_the_broker_down_is_exit_4_within_seconds(tmp_path: Path) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(300_000))
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "INGEST_STORAGE_ROOT": str(tmp_path / "storage"),
        # Crossing it sends a prehash on the way: the Celery path, not just the LPUSH.
        "INGEST_PREHASH_MIN_SIZE": "64KiB",
    }
    start = time.monotonic()
    down = run(env, "put", str(f), "--repo", "cli/down", timeout=60)
    took = time.monotonic() - start
    err = down.stderr.decode()
    assert down.returncode == 4, err
    assert "error: UNAVAILABLE: the task broker is unreachable" in err
    assert "Traceback" not in err
    assert took < 10, f"took {took:.1f} s"


def test_retry_failed_cancel_and_purge_with_only_INGEST_URL(  # noqa: N802
    url: str, tmp_path: Path
) -> None:
    env = http_only(url, tmp_path)
    f = tmp_path / "blob.bin"
    data = os.urandom(200_000)
    f.write_bytes(data)
    broken = run(env, "push", str(f), "--repo", "cli/bulk", "--digest", sha256(b"typo"))
    assert broken.returncode == 3
    upload_id = broken.stderr.decode().split('"upload_id": "', 1)[1].split('"', 1)[0]

    bulk = run(env, "--json", "retry", "--failed", "--code", "DIGEST_INVALID", "--since", "1h")
    assert bulk.returncode == 0, bulk.stderr.decode()
    assert upload_id in [q["upload_id"] for q in json.loads(bulk.stdout)["queued"]]
    # The frontend really re-queued it: a second attempt, which fails the same way.
    for _ in range(200):
        st = json.loads(run(env, "--json", "status", upload_id).stdout)
        if st["attempt"] == 2 and st["state"] == "failed":
            break
        time.sleep(0.05)
    assert (st["attempt"], st["state"]) == (2, "failed"), st
    human = run(env, "retry", "--failed", "--code", "NO_SUCH_CODE")
    assert human.stdout.decode().startswith(f"re-queued 0 failed verification(s) ({url})")

    cancelled = run(env, "cancel", upload_id)
    assert cancelled.returncode == 0, cancelled.stderr.decode()
    gone = run(env, "status", upload_id)
    assert gone.returncode == 3
    assert "BLOB_UPLOAD_UNKNOWN" in gone.stderr.decode()

    for command in ("purge", "reconcile"):
        refused = run(env, command)
        assert refused.returncode == 2
        assert "has no HTTP form" in refused.stderr.decode()


def test_pull_verifies_while_downloading_and_keeps_nothing_of_a_mismatch(
    shared_stack: Stack, url: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    env = http_only(url, tmp_path)
    assert run(env, "push", str(f), "--repo", "cli/pull").returncode == 0
    out = tmp_path / "pulled" / "blob.bin"
    out.parent.mkdir()
    ok = run(env, "pull", "cli/pull", sha256(data), "-o", str(out))
    assert ok.returncode == 0, ok.stderr.decode()
    assert out.read_bytes() == data

    # Rot on disk: the registry now serves other bytes under the same digest.
    hexdigest = sha256(data).split(":", 1)[1]
    stored = shared_stack.storage / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"
    stored.chmod(0o640)
    with stored.open("r+b") as blob:
        blob.write(bytes([data[0] ^ 0xFF]))
    out.unlink()
    bad = run(env, "pull", "cli/pull", sha256(data), "-o", str(out))
    assert bad.returncode == 3
    assert "DIGEST_INVALID" in bad.stderr.decode()
    assert list(out.parent.iterdir()) == []  # neither the file nor a partial one
