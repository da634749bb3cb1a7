"""pytest fixtures over :mod:`tests.support.s3server`: import them into a test module
(``from tests.support.s3fixtures import moto_s3_server, s3_server, seaweedfs_s3_server``,
all three: ``s3_server`` asks for the other two by name) to run it against each real S3
server, one session-wide instance per server."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from ingest.storage.s3 import S3Driver
from tests.support.s3server import MotoServer, S3Server, S3ServerNotFound, SeaweedServer

__all__ = [
    "BUCKET",
    "MOTO_IGNORES_COPY_SOURCE_IF_MATCH",
    "S3_SERVERS",
    "moto_s3_server",
    "new_s3_driver",
    "s3_server",
    "s3_server_of",
    "seaweedfs_s3_server",
    "xfail_on",
]

BUCKET = "ingest-tests"
#: The servers every S3 test runs against, by the name in their test ids.
S3_SERVERS: dict[str, type[S3Server]] = {"moto": MotoServer, "seaweedfs": SeaweedServer}
_prefixes = itertools.count()

#: A known limitation of the moto server (5.2.6): its S3 responses implement only
#: x-amz-copy-source-if-none-match, so a copy from a replaced source copies the new
#: version instead of failing with 412. SeaweedFS (and AWS) honour it.
MOTO_IGNORES_COPY_SOURCE_IF_MATCH = (
    "moto ignores CopySourceIfMatch (x-amz-copy-source-if-match) on CopyObject and UploadPartCopy"
)


def _serve(kind: str) -> Iterator[S3Server]:
    """Start the ``kind`` server with :data:`BUCKET`; skip without it locally, fail
    under CI=true (where scripts/test.sh installs every server)."""
    try:
        server = S3_SERVERS[kind]().start()
    except (S3ServerNotFound, RuntimeError) as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"S3 test server {kind} unavailable in CI: {exc}")
        pytest.skip(str(exc))
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[S3Server]:
    """The session's moto server."""
    yield from _serve("moto")


@pytest.fixture(scope="session")
def seaweedfs_s3_server() -> Iterator[S3Server]:
    """The session's SeaweedFS server."""
    yield from _serve("seaweedfs")


def s3_server_of(request: pytest.FixtureRequest, kind: str) -> S3Server:
    """The session's ``kind`` server (a key of :data:`S3_SERVERS`), for a fixture with
    parameters of its own (``s3_server``'s cannot be asked for from one)."""
    server: S3Server = request.getfixturevalue(f"{kind}_s3_server")
    return server


@pytest.fixture(scope="session", params=list(S3_SERVERS))
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn: a test that uses it runs once per server."""
    return s3_server_of(request, str(request.param))


def xfail_on(request: pytest.FixtureRequest, server: S3Server, kind: str, reason: str) -> None:
    """Mark the running test xfail(strict=True) on the ``kind`` server: a limitation of
    that server, which must keep failing there (when it passes, drop the mark)."""
    if server.kind == kind:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def new_s3_driver(server: S3Server, **kwargs: int) -> S3Driver:
    """A driver on a prefix of its own: tests never see each other's objects."""
    return S3Driver(server.client(), BUCKET, f"t{os.getpid()}-{next(_prefixes)}", **kwargs)
