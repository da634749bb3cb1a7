"""The main job, end to end on one machine: ``python -m workers.demo``.

Starts a private Redis (unless ``REDIS_URL`` is set) and a real Celery worker,
then ingests a sample blob through the Python API -- chunked writes, finish,
verification on the worker, commit -- and prints the committed result. It also
shows a rejected claim (DIGEST_INVALID, kept for retry) and its retry.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from ingest.api import Ingest
from ingest.config import Settings
from ingest.errors import IngestError
from workers.devstack import Worker
from workers.localredis import LocalRedis


def _sample(size: int) -> bytes:
    # Deterministic, incompressible-looking bytes without holding a PRNG state.
    out = bytearray()
    block = hashlib.sha256(b"verified-ingest demo").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", help="storage root (default: a fresh temporary directory)")
    parser.add_argument("--size", type=int, default=8 << 20, help="sample blob size in bytes")
    parser.add_argument("--repository", default="demo/sample")
    args = parser.parse_args(argv)

    storage = args.storage or tempfile.mkdtemp(prefix="ingest-demo-")
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_url = stack.enter_context(LocalRedis()).url
        print(f"redis:   {redis_url}")
        print(f"storage: {storage}")
        env = {"REDIS_URL": redis_url, "INGEST_STORAGE_ROOT": storage}
        worker = stack.enter_context(
            Worker(env, Path(storage).parent / f"{Path(storage).name}.worker.log")
        )
        print(f"worker:  pid {worker.pid} ({worker.name})")

        ing = Ingest.from_settings(Settings.from_env({**os.environ, **env}))
        data = _sample(args.size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        up = ing.start_upload(args.repository)
        for i in range(0, len(data), 1 << 20):
            up.write_at(i, data[i : i + (1 << 20)])
        ticket = up.finish(digest, size=len(data))
        result = ticket.wait(timeout=60)
        print("committed:")
        print(json.dumps(result, indent=2, sort_keys=True))

        with ing.open(args.repository, digest) as blob:
            assert hashlib.sha256(blob.read()).hexdigest() == digest.split(":", 1)[1]
        print(f"read back {len(data)} bytes from {args.repository}@{digest[:19]}…: ok")

        # A wrong claim is rejected with a stable code and kept for retry.
        bad = ing.start_upload(args.repository)
        bad.write(b"not what was claimed")
        try:
            bad.finish(digest).wait(timeout=60)
        except IngestError as exc:
            print(f"rejected: {exc.code} {json.dumps(exc.detail, sort_keys=True)}")
        right = "sha256:" + hashlib.sha256(b"not what was claimed").hexdigest()
        retried = ing.retry(bad.id, right).wait(timeout=60)
        print(f"retried with the right digest: {retried['status']} {retried['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
