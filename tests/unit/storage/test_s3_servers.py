"""What the S3 driver relies on from the server, probed with plain boto3 on each test
server (moto, SeaweedFS): conditional writes that are honoured and decided atomically,
the answers the driver maps, and the test servers' own set-up and clean-up.

A server that ignored a precondition would fail here by name, before the driver tests
fail in some roundabout way."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.s3fixtures import (
    BUCKET,
    MOTO_IGNORES_COPY_SOURCE_IF_MATCH,
    moto_s3_server,
    s3_server,
    seaweedfs_s3_server,
    xfail_on,
)
from tests.support.s3server import (
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    S3ServerNotFound,
    SeaweedServer,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

__all__ = ["moto_s3_server", "s3_server", "seaweedfs_s3_server"]

_STALE = '"0123456789abcdef0123456789abcdef"'  # an ETag no object here has


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.fixture
def key(s3_server: S3Server) -> Iterator[str]:
    """A key of this test's own, holding b"one"; it and its siblings go afterwards."""
    k = f"probe-{uuid.uuid4().hex}/key"
    c = s3_server.client()
    c.put_object(Bucket=BUCKET, Key=k, Body=b"one")
    yield k
    for o in c.list_objects_v2(Bucket=BUCKET, Prefix=k).get("Contents", ()):
        c.delete_object(Bucket=BUCKET, Key=o["Key"])


def _body(server: S3Server, key: str) -> bytes:
    return bytes(server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_put_if_match_replaces_only_the_version_it_names(s3_server: S3Server, key: str) -> None:
    c = s3_server.client()
    with pytest.raises(ClientError) as info:
        c.put_object(Bucket=BUCKET, Key=key, Body=b"two", IfMatch=_STALE)
    assert _code(info) in ("PreconditionFailed", "412")
    assert _body(s3_server, key) == b"one"
    etag = c.head_object(Bucket=BUCKET, Key=key)["ETag"]
    c.put_object(Bucket=BUCKET, Key=key, Body=b"two", IfMatch=etag)
    assert _body(s3_server, key) == b"two"


def test_put_if_none_match_never_overwrites(s3_server: S3Server, key: str) -> None:
    c = s3_server.client()
    with pytest.raises(ClientError) as info:
        c.put_object(Bucket=BUCKET, Key=key, Body=b"two", IfNoneMatch="*")
    assert _code(info) in ("PreconditionFailed", "412")
    assert _body(s3_server, key) == b"one"


def test_delete_if_match_keeps_a_changed_object(s3_server: S3Server, key: str) -> None:
    c = s3_server.client()
    with pytest.raises(ClientError) as info:
        c.delete_object(Bucket=BUCKET, Key=key, IfMatch=_STALE)
    assert _code(info) in ("PreconditionFailed", "412")
    assert _body(s3_server, key) == b"one"
    c.delete_object(Bucket=BUCKET, Key=key, IfMatch=c.head_object(Bucket=BUCKET, Key=key)["ETag"])
    assert c.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount") == 0


def test_a_ranged_read_honours_if_match(s3_server: S3Server, key: str) -> None:
    with pytest.raises(ClientError) as info:
        s3_server.client().get_object(Bucket=BUCKET, Key=key, Range="bytes=0-1", IfMatch=_STALE)
    assert _code(info) in ("PreconditionFailed", "412")


def test_copy_object_honours_copy_source_if_match(
    s3_server: S3Server, key: str, request: pytest.FixtureRequest
) -> None:
    xfail_on(request, s3_server, "moto", MOTO_IGNORES_COPY_SOURCE_IF_MATCH)
    c = s3_server.client()
    src: CopySourceTypeDef = {"Bucket": BUCKET, "Key": key}
    with pytest.raises(ClientError) as info:
        c.copy_object(Bucket=BUCKET, Key=key + "-copy", CopySource=src, CopySourceIfMatch=_STALE)
    assert _code(info) in ("PreconditionFailed", "412")
    assert c.list_objects_v2(Bucket=BUCKET, Prefix=key + "-copy").get("KeyCount") == 0


def test_upload_part_copy_honours_copy_source_if_match(
    s3_server: S3Server, key: str, request: pytest.FixtureRequest
) -> None:
    xfail_on(request, s3_server, "moto", MOTO_IGNORES_COPY_SOURCE_IF_MATCH)
    c = s3_server.client()
    upload = c.create_multipart_upload(Bucket=BUCKET, Key=key + "-mpu")["UploadId"]
    try:
        with pytest.raises(ClientError) as info:
            c.upload_part_copy(
                Bucket=BUCKET,
                Key=key + "-mpu",
                UploadId=upload,
                PartNumber=1,
                CopySource={"Bucket": BUCKET, "Key": key},
                CopySourceRange="bytes=0-1",
                CopySourceIfMatch=_STALE,
            )
        assert _code(info) in ("PreconditionFailed", "412")
    finally:
        c.abort_multipart_upload(Bucket=BUCKET, Key=key + "-mpu", UploadId=upload)


@pytest.mark.parametrize("condition", ["IfNoneMatch", "IfMatch"])
def test_exactly_one_of_racing_conditional_puts_wins(
    s3_server: S3Server, key: str, condition: str
) -> None:
    # The check and the write must be one step on the server, not a read then a write.
    c = s3_server.client()
    create = condition == "IfNoneMatch"
    target = key + "-new" if create else key
    etag = c.head_object(Bucket=BUCKET, Key=key)["ETag"]
    n = 8
    start = threading.Barrier(n)
    winners: list[int] = []
    refusals: list[str] = []

    def put(i: int) -> None:
        start.wait()
        try:
            if create:
                c.put_object(Bucket=BUCKET, Key=target, Body=bytes([65 + i]), IfNoneMatch="*")
            else:
                c.put_object(Bucket=BUCKET, Key=target, Body=bytes([65 + i]), IfMatch=etag)
        except ClientError as exc:
            refusals.append(str(exc.response["Error"]["Code"]))
        else:
            winners.append(i)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(winners) == 1
    assert set(refusals) <= {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
    assert _body(s3_server, target) == bytes([65 + winners[0]])


def test_a_conditional_write_on_a_missing_key_is_404_on_moto_and_412_on_seaweedfs(
    s3_server: S3Server,
) -> None:
    # AWS answers 404 (NoSuchKey), as moto does; SeaweedFS answers 412, as for a
    # changed object. The driver takes both as "changed or gone" and, where the two
    # differ, looks (S3Driver._delete_if_match). Pinned, so a change on either side
    # is seen here.
    expected = {"moto": "NoSuchKey", "seaweedfs": "PreconditionFailed"}[s3_server.kind]
    c = s3_server.client()
    for call in (
        lambda: c.put_object(Bucket=BUCKET, Key="probe/missing", Body=b"x", IfMatch=_STALE),
        lambda: c.delete_object(Bucket=BUCKET, Key="probe/missing", IfMatch=_STALE),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert _code(info) == expected
    assert c.list_objects_v2(Bucket=BUCKET, Prefix="probe/missing").get("KeyCount") == 0


def test_wrong_credentials_and_missing_buckets_are_refused(s3_server: S3Server) -> None:
    # The servers must check the test keys (SeaweedFS's s3.json) and not create
    # buckets on upload (SeaweedFS does by default), as AWS neither would.
    client = s3_server.client()
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"")
    assert _code(info) == "NoSuchBucket"
    if s3_server.kind == "moto":
        return  # moto accepts any credentials
    bad = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server.url,
        region_name="us-east-1",
        aws_access_key_id="not-" + ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as info:
        bad.list_objects_v2(Bucket=BUCKET)
    assert _code(info) in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")


def test_a_seaweedfs_server_listens_on_loopback_only_and_leaves_nothing_behind() -> None:
    try:
        server = SeaweedServer()
    except S3ServerNotFound as exc:
        pytest.skip(str(exc))
    with server:
        proc = server._proc
        data = server._dir
        assert proc is not None
        assert data is not None
        assert data.is_dir()
        assert server.url == f"http://127.0.0.1:{server.port}"
        # Every listener weed opened is one of the ports it was given, on 127.0.0.1.
        listening = _listening(proc.pid)
        assert {address for address, _ in listening} == {"127.0.0.1"}
        ports = {port for _, port in listening}
        assert server.port in ports
        assert ports <= set(server._ports())
        server.create_bucket("lifecycle")
    assert proc.poll() is not None
    assert not data.exists()
    assert not [p for p in Path("/tmp").glob("seaweedfs-*.sock") if _port_of(p) in server._ports()]
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), timeout=1),
    ):
        pass


def _port_of(sock: Path) -> int:
    return int(sock.stem.rsplit("-", 1)[-1])


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                # IPv4 in /proc/net/tcp is little-endian hex; anything else stays hex.
                if len(address) == 8:
                    address = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
                found.add((address, int(port, 16)))
    return found
