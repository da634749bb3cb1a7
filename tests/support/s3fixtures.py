"""pytest fixtures over :mod:`tests.support.s3server`: import them into a test module
(``from tests.support.s3fixtures import s3_server``) to run it against a real S3 server."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from ingest.storage.s3 import S3Driver
from tests.support.s3server import MotoServer, S3ServerNotFound

__all__ = ["BUCKET", "new_s3_driver", "s3_server"]

BUCKET = "ingest-tests"
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """One moto server per session with :data:`BUCKET`; skips without moto locally,
    fails under CI=true (where scripts/test.sh installs it)."""
    try:
        server = MotoServer().start()
    except (S3ServerNotFound, RuntimeError) as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"S3 test server unavailable in CI: {exc}")
        pytest.skip(str(exc))
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def new_s3_driver(server: MotoServer, **kwargs: int) -> S3Driver:
    """A driver on a prefix of its own: tests never see each other's objects."""
    return S3Driver(server.client(), BUCKET, f"t{os.getpid()}-{next(_prefixes)}", **kwargs)
