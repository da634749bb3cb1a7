"""The pipeline on the S3 driver: real Redis, real celery workers, a real S3 server
(moto_server and SeaweedFS on loopback), and a two-host simulation.

The two "hosts" are two frontends and two workers, each with its own directory (its
``INGEST_STORAGE_ROOT``, which must stay empty, and its logs), sharing nothing but
Redis and the S3 bucket. An upload is started on one frontend, continued on the
other, finished, verified by whichever worker takes it, and pulled from both.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from pathlib import Path

import httpx
import pytest

from devtools.devstack import Frontend, Worker
from devtools.localredis import free_port
from ingest.errors import DigestInvalid
from ingest.storage.s3 import S3Driver
from tests.integration.conftest import Stack
from tests.support.s3fixtures import moto_s3_server, s3_server, seaweedfs_s3_server
from tests.support.s3server import S3Server

__all__ = ["moto_s3_server", "s3_server", "seaweedfs_s3_server"]

pytestmark = pytest.mark.integration

_buckets = itertools.count()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """Settings for a fresh bucket of this test's own."""
    bucket = s3_server.create_bucket(f"it-{os.getpid()}-{next(_buckets)}")
    return s3_server.env(bucket, prefix="registry")


def _bucket_driver(s3_server: S3Server, env: dict[str, str]) -> S3Driver:
    return S3Driver(s3_server.client(), env["INGEST_S3_BUCKET"], env["INGEST_S3_PREFIX"])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_uploads_commit_through_a_real_worker_on_s3(
    redis_url: str, tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    stack = Stack(redis_url, tmp_path, **s3_env)
    try:
        stack.worker()
        ing = stack.ingest
        # Big enough for the prehash (a worker tails the staged object as it grows)
        # and for a composed move with buffered parts.
        data = os.urandom(stack.settings.prehash_min_size + (3 << 20)) + b"tail"
        up = ing.start_upload("s3/pipeline")
        up.write(data[: 1 << 20])
        up.read_from(io.BytesIO(data[1 << 20 :]))
        result = up.finish(sha256(data), size=len(data)).wait(timeout=120)
        assert result["status"] == "committed"
        assert result["canonical_digest"] == sha256(data)
        with ing.open("s3/pipeline", sha256(data)) as blob:
            blob.seek(len(data) - 4)
            assert blob.read() == b"tail"
            blob.seek(0)
            assert hashlib.sha256(blob.read()).hexdigest() == sha256(data)[7:]

        # A mismatch is refused and nothing is placed under either digest.
        bad = ing.start_upload("s3/pipeline")
        bad.write(b"not what is claimed")
        claimed = sha256(b"something else")
        outcome = bad.finish(claimed)
        with pytest.raises(DigestInvalid):
            outcome.wait(timeout=60)
        d = _bucket_driver(s3_server, s3_env)
        blobs = [fi.path for fi in d.walk("/blobs")]
        assert len(blobs) == 1
        assert sha256(data)[7:] in blobs[0]
    finally:
        stack.close()
    # Nothing went to the local disk.
    assert not stack.storage.exists() or _files(stack.storage) == []


def test_two_hosts_share_nothing_but_redis_and_the_bucket(
    redis_url: str, tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    # One Stack only for its isolated Redis database (flushed); each host below has its
    # own directory and storage root.
    shared = Stack(redis_url, tmp_path / "redis-only", **s3_env)
    hosts: list[tuple[Frontend, Worker, Path]] = []
    try:
        for name in ("host-a", "host-b"):
            home = tmp_path / name
            env = {**shared.env, "INGEST_STORAGE_ROOT": str(home / "storage")}
            frontend = Frontend(
                {**env, "INGEST_AUTH": "none"}, home / "frontend.log", port=free_port()
            )
            worker = Worker(env, home / "worker.log")
            hosts.append((frontend.start(), worker.start(), home))
        (fa, _, _), (fb, _, _) = hosts
        a, b = f"http://127.0.0.1:{fa.port}", f"http://127.0.0.1:{fb.port}"
        repo = "two/hosts"
        blobs = [os.urandom(6 << 20) + bytes([i]) for i in range(3)] + [b"small blob"]
        with httpx.Client(timeout=120) as client:
            for data in blobs:
                half = len(data) // 2
                start = client.post(f"{a}/v2/{repo}/blobs/uploads/")
                assert start.status_code == 202
                loc = start.headers["location"]
                first = client.patch(
                    a + loc if loc.startswith("/") else loc,
                    content=data[:half],
                    headers={"Content-Range": f"0-{half - 1}"},
                )
                assert first.status_code == 202
                # The other host resumes the same upload where the first one stopped.
                path = first.headers["location"]
                status = client.get(b + path)
                assert status.status_code == 204
                assert status.headers["range"] == f"0-{half - 1}"
                second = client.patch(
                    b + path,
                    content=data[half:],
                    headers={"Content-Range": f"{half}-{len(data) - 1}"},
                )
                assert second.status_code == 202
                put = client.put(b + second.headers["location"], params={"digest": sha256(data)})
                assert put.status_code == 201, put.text
                for base in (a, b):
                    got = client.get(f"{base}/v2/{repo}/blobs/{sha256(data)}")
                    assert got.status_code == 200
                    assert got.content == data
        # Each host's directory holds its logs only: nothing went to a local disk.
        for _, _, home in hosts:
            assert not (home / "storage").exists() or _files(home / "storage") == []
        worked = [w.log().count("ingest.verify") for _, w, _ in hosts]
        assert sum(worked) >= len(blobs), worked
    finally:
        for f, w, _ in hosts:
            f.stop()
            w.stop()
        shared.close()
