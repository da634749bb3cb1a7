"""The pipeline end to end: Python API → Redis → real celery worker → storage."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.localredis import free_port
from ingest import paths
from ingest.digests import parse_digest
from ingest.errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid
from ingest.queue import TASK_VERIFY
from tests.data import TARSUM_VECTORS
from tests.integration.conftest import REPO_ROOT, Stack, stage_large, wait_for_progress

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stored_files(stack: Stack) -> list[str]:
    return sorted(
        str(p.relative_to(stack.storage)) for p in stack.storage.rglob("*") if p.is_file()
    )


def test_finish_commits_and_the_blob_reads_back_with_seek(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    data = os.urandom(3 << 20) + b"tail"
    up = ing.start_upload("it/commit")
    up.write(data[: 1 << 20])
    up.read_from(io.BytesIO(data[1 << 20 :]))
    result = up.finish(sha256(data), size=len(data)).wait(timeout=30)

    assert result["status"] == "committed"
    assert result["digest"] == result["canonical_digest"] == sha256(data)
    assert result["size"] == len(data)
    assert result["repository"] == "it/commit"
    assert result["deduplicated"] is False
    with ing.open("it/commit", sha256(data)) as blob:
        assert blob.size == len(data)
        blob.seek(len(data) - 4)
        assert blob.read() == b"tail"
        blob.seek(10)
        assert blob.read(5) == data[10:15]
    assert ing.status(up.id).state == "committed"
    assert not (shared_stack.storage / "uploads" / up.id / "data").exists()


def _wait_for(lease: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not lease.exists():
        assert time.monotonic() < deadline, "no worker took the prehash"
        time.sleep(0.005)


def test_a_large_upload_is_hashed_by_a_worker_while_it_arrives(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    threshold = shared_stack.settings.prehash_min_size
    up = ing.start_upload("it/prehash")
    lease = shared_stack.storage / "uploads" / up.id / "prehash.lease"
    h = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    size = threshold + (8 << 20)
    for i in range(size >> 20):
        piece = i.to_bytes(8, "big") + chunk[8:]
        up.write(piece)
        h.update(piece)
        if (i + 1) << 20 == threshold:
            # The write that crossed the threshold asked for a prehash: wait until a
            # worker holds it, so the rest of the upload is hashed as it lands.
            _wait_for(lease)
    result = up.finish("sha256:" + h.hexdigest()).wait(timeout=60)
    assert (result["status"], result["size"], result["prehashed"]) == ("committed", size, True)
    assert not lease.exists()
    with ing.open("it/prehash", result["digest"]) as blob:
        assert hashlib.sha256(blob.read()).hexdigest() == h.hexdigest()

    # A wrong claim on a prehashed upload is judged by a full read of the bytes.
    up2 = ing.start_upload("it/prehash")
    up2.read_from(io.BytesIO(chunk * ((threshold >> 20) + 2)))
    _wait_for(shared_stack.storage / "uploads" / up2.id / "prehash.lease")
    with pytest.raises(DigestInvalid) as err:
        up2.finish(sha256(b"not it")).wait(timeout=60)
    assert err.value.detail["computed"] == sha256(chunk * ((threshold >> 20) + 2))


def test_digest_mismatch_is_recorded_and_a_retry_after_fixing_the_data_commits(
    shared_stack: Stack,
) -> None:
    ing = shared_stack.ingest
    good = os.urandom(1 << 20)
    up = ing.start_upload("it/retry")
    up.write(good)
    up.close()
    # A storage fault flips a byte of the staged copy before verification.
    staged = shared_stack.storage / "uploads" / up.id / "data"
    with open(staged, "r+b") as f:
        f.seek(1234)
        f.write(bytes([good[1234] ^ 0xFF]))

    ticket = ing.resume("it/retry", up.id).finish(sha256(good))
    with pytest.raises(DigestInvalid) as err:
        ticket.wait(timeout=30)
    assert err.value.detail["claimed"] == sha256(good)
    assert err.value.detail["computed"] != sha256(good)
    status = ing.status(up.id)
    assert status.state == "failed"
    assert status.error is not None
    assert status.error["code"] == "DIGEST_INVALID"
    assert staged.exists(), "failed uploads keep their data for a retry"
    with pytest.raises(BlobUnknown) as unknown:  # the failed claim linked nothing
        ing.open("it/retry", sha256(good))
    assert unknown.value.code == "BLOB_UNKNOWN"
    assert unknown.value.http_status == 404
    assert unknown.value.detail == {"repository": "it/retry", "digest": sha256(good)}

    with open(staged, "r+b") as f:  # the operator restores the right bytes
        f.seek(1234)
        f.write(good[1234:1235])
    retry = ing.retry(up.id)
    assert retry.task_id != ticket.task_id
    result = retry.wait(timeout=30)
    assert result["status"] == "committed"
    assert ing.status(up.id).attempt == 2
    with pytest.raises(BlobUploadInvalid):
        ing.retry(up.id)


def test_a_second_client_resumes_an_upload_and_finishes_it(shared_stack: Stack) -> None:
    first, second = shared_stack.ingest, shared_stack.new_client()
    up = first.start_upload("it/resume")
    up.write(b"a" * 1000)
    up.close()
    again = second.resume("it/resume", up.id)
    assert again.offset == 1000
    again.write_at(1000, b"b" * 24)
    data = b"a" * 1000 + b"b" * 24
    assert again.finish(sha256(data)).wait(timeout=30)["size"] == 1024
    with first.open("it/resume", sha256(data)) as blob:
        assert blob.read() == data


def test_duplicate_delivery_and_double_finish_commit_exactly_once(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    data = os.urandom(2 << 20)
    up = ing.start_upload("it/dup")
    up.write(data)
    up.close()
    t1 = ing.resume("it/dup", up.id).finish(sha256(data))
    t2 = ing.finish("it/dup", up.id, sha256(data))  # the client calls finish again
    assert t2.task_id == t1.task_id
    # The broker delivers the very same task message twice more.
    app = ing.queue.app  # type: ignore[attr-defined]
    for _ in range(2):
        app.send_task(TASK_VERIFY, args=(up.id, sha256(data), None), task_id=t1.task_id)
    first = t1.wait(timeout=30)
    time.sleep(1.0)  # let the duplicates run
    assert ing.status(up.id).result == first
    blob_files = [p for p in stored_files(shared_stack) if p.startswith("blobs/")]
    assert (
        f"blobs/sha256/{first['canonical_digest'][7:9]}/{first['canonical_digest'][7:]}/data"
        in blob_files
    )
    assert not any(".tmp-" in p for p in stored_files(shared_stack))


def test_cancel_makes_the_upload_unknown_everywhere(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    up = ing.start_upload("it/cancel")
    up.write(b"x" * 100)
    uid = up.id
    up.cancel()
    with pytest.raises(BlobUploadUnknown):
        ing.status(uid)
    with pytest.raises(BlobUploadUnknown):
        ing.resume("it/cancel", uid)
    assert not (shared_stack.storage / "uploads" / uid).exists()
    # A verification that still reaches a worker reports the upload unknown.
    app = ing.queue.app  # type: ignore[attr-defined]
    res = app.send_task(TASK_VERIFY, args=(uid, sha256(b"x" * 100), None))
    with pytest.raises(BlobUploadUnknown):
        ing.queue.wait(res.id, timeout=30)


def test_sha512_claim_is_stored_once_under_sha256_with_an_alias(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    data = os.urandom(100_000)
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    up = ing.start_upload("it/alias")
    up.write(data)
    result = up.finish(d512).wait(timeout=30)
    assert result["digest"] == d512
    assert result["canonical_digest"] == sha256(data)
    with ing.open("it/alias", d512) as a, ing.open("it/alias", sha256(data)) as b:
        assert a.read() == b.read() == data


def test_killing_the_worker_child_mid_verification_redelivers_and_commits_once(
    stack: Stack,
) -> None:
    worker = stack.worker()
    ing = stack.ingest
    size = 768 << 20
    uid, claim, canonical = stage_large(ing, "it/crash", size)
    # sha512 + sha256 in one pass is the slowest plain verification: widest window.
    ticket = ing.resume("it/crash", uid).finish(claim)
    wait_for_progress(ing, ticket.task_id)
    children = worker.children()
    assert children, "prefork worker has a pool child"
    os.kill(children[0], 9)

    result = ticket.wait(timeout=120)
    assert result["status"] == "committed"
    assert result["canonical_digest"] == canonical
    log = worker.log()
    assert "WorkerLostError" in log or "SIGKILL" in log or "signal 9" in log
    assert log.count(f"Task {TASK_VERIFY}[{ticket.task_id}] received") == 2, "redelivered once"
    files = stored_files(stack)
    assert [f for f in files if f.startswith("blobs/")] == [
        paths.blob_data_path(parse_digest(result["canonical_digest"])).lstrip("/")
    ]
    assert not any(".tmp-" in f for f in files)
    assert not (stack.storage / "uploads" / uid / "data").exists()
    with ing.open("it/crash", result["digest"]) as blob:
        assert blob.size == size


VECTORS = TARSUM_VECTORS
LAYER_46AF = "testdata/46af0962ab5afeb5ce6740d4d91652e69206fc991fd5328c1a94d364ad00e457/layer.tar"
TARSUM_46AF = "tarsum.v1+sha256:41cd5c911333ee394776e432fc5a27cc82dfea313e5feff965e31c0fddd9213d"


def _layer() -> bytes:
    return (VECTORS / LAYER_46AF).read_bytes()


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_tarsum_claim_commits_under_sha256_with_a_tarsum_alias(
    shared_stack: Stack, compress: bool
) -> None:
    ing = shared_stack.ingest
    data = _layer()
    if compress:
        data = gzip.compress(data, mtime=0)
    repo = f"it/tarsum-{'gz' if compress else 'tar'}"
    up = ing.start_upload(repo)
    up.write(data)
    result = up.finish(TARSUM_46AF).wait(timeout=30)
    assert result["digest"] == TARSUM_46AF
    assert result["canonical_digest"] == sha256(data)
    with ing.open(repo, TARSUM_46AF) as by_tarsum, ing.open(repo, sha256(data)) as by_sha:
        assert by_tarsum.read() == by_sha.read() == data


def test_tarsum_mismatch_is_digest_invalid_with_both_tarsums(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    up = ing.start_upload("it/tarsum-bad")
    up.write(_layer())
    wrong = "tarsum.v1+sha256:" + "0" * 64
    with pytest.raises(DigestInvalid) as err:
        up.finish(wrong).wait(timeout=30)
    assert err.value.detail["claimed"] == wrong
    assert err.value.detail["computed"] == TARSUM_46AF
    assert ing.status(up.id).state == "failed"


def test_a_malformed_tar_claimed_as_tarsum_is_a_clean_digest_invalid(shared_stack: Stack) -> None:
    ing = shared_stack.ingest
    up = ing.start_upload("it/tarsum-broken")
    up.write(_layer()[:700])  # cut inside the first entry
    with pytest.raises(DigestInvalid) as err:
        up.finish("tarsum.v1+sha256:" + "1" * 64).wait(timeout=30)
    assert err.value.detail["reason"] == "tar-error"


def test_the_main_job_ingests_rejects_retries_and_serves(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/15"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.demo",
            "--exit",
            "--size",
            str(3 << 20),
            "--storage",
            str(tmp_path / "storage"),
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"status": "committed"' in run.stdout
    assert "rejected: DIGEST_INVALID" in run.stdout
    assert "retried with the right digest: committed" in run.stdout
    assert "pushed over the OCI API: 201 Created sha256:" in run.stdout
    # The debug listener's deep check passes; Flower runs with a password made for the run.
    assert "health: 200 ok (broker ok" in run.stdout
    assert re.search(
        r"^flower: +http://127\.0\.0\.1:\d+ \(user admin, password \S{20,}\)$",
        run.stdout,
        re.MULTILINE,
    ), run.stdout
