"""The ``ingest`` CLI and its HTTP client, in process: CliRunner against a fake
registry (an httpx MockTransport) or a recording queue. The real frontend, workers
and Redis are in tests/integration/test_cli.py."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ingest import client as client_module
from ingest.cli import MIB, Context, _ByteBar, cli
from ingest.client import SLICE, RegistryClient
from ingest.config import Settings
from ingest.errors import DigestInvalid
from ingest.storage.filesystem import FilesystemDriver
from tests.data import TARSUM_VECTORS
from tests.unit.fakes import RecordingQueue, make_ingest, sha256

UPLOAD_ID = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"


class FakeRegistry:
    """Just enough of the frontend for the client. Each PATCH body is read the way a
    server reads it, piece by piece, noting how many ``on_upload`` calls the client
    had made by then (``seen``): progress that moves during a chunk shows there."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.staged = bytearray()
        self.methods: list[str] = []
        self.patches: list[list[int]] = []  # per PATCH: ``len(seen)`` at each piece
        self.seen: list[int] = []  # the client's on_upload calls, when a test wires it
        self.serve_instead: bytes | None = None  # a GET answers these bytes (corruption)

    def transport(self) -> httpx.BaseTransport:
        registry = self

        class Transport(httpx.BaseTransport):
            # Not httpx.MockTransport: that reads the whole body before the handler runs.
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                return registry.handle(request)

        return Transport()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.methods.append(request.method)
        path = request.url.path
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/", path):
            return httpx.Response(
                202,
                headers={
                    "Location": f"/v2/{m[1]}/blobs/uploads/{UPLOAD_ID}",
                    "Docker-Upload-UUID": UPLOAD_ID,
                },
            )
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/" + UPLOAD_ID, path):
            if request.method == "PATCH":
                marks: list[int] = []
                assert isinstance(request.stream, httpx.SyncByteStream)
                for piece in request.stream:
                    self.staged += piece
                    marks.append(len(self.seen))
                self.patches.append(marks)
                return httpx.Response(202, headers={"Range": f"0-{len(self.staged) - 1}"})
            digest = request.url.params["digest"]
            self.blobs[(m[1], digest)] = bytes(self.staged)
            self.result = {
                "status": "committed",
                "upload_id": UPLOAD_ID,
                "repository": m[1],
                "digest": digest,
                "size": len(self.staged),
                "committed_at": 1795806467.8,
            }
            return httpx.Response(202, headers={"Docker-Upload-UUID": UPLOAD_ID})
        if path == f"/ingest/v1/uploads/{UPLOAD_ID}":
            return httpx.Response(200, json={"state": "committed", "result": self.result})
        if m := re.fullmatch(r"/v2/(.+)/blobs/(.+)", path):
            data = self.blobs.get((m[1], m[2]))
            if data is None:
                return httpx.Response(
                    404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "x", "detail": {}}]}
                )
            body = b"" if request.method == "HEAD" else (self.serve_instead or data)
            return httpx.Response(200, content=body, headers={"Content-Length": str(len(data))})
        return httpx.Response(404)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    """The CLI's RegistryClient talks to a FakeRegistry instead of the network."""
    fake = FakeRegistry()

    class Wired(RegistryClient):
        def __init__(self, base_url: str, **kwargs: Any) -> None:
            super().__init__(base_url, transport=fake.transport(), **kwargs)

    monkeypatch.setattr(client_module, "RegistryClient", Wired)
    return fake


def invoke(*args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, env=env)


class Reads(io.BytesIO):
    """A stream of unknown length (no fileno) that records the size of every read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n: int | None = -1, /) -> bytes:
        self.asked.append(-1 if n is None else n)
        return super().read(n)


# -- push ------------------------------------------------------------------------------


def test_push_streams_each_chunk_in_slices_and_reports_progress_during_it(
    registry: FakeRegistry,
) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    stream = Reads(data)
    with RegistryClient("http://registry.test", transport=registry.transport()) as client:
        result = client.push("r/s", stream, chunk_size=1 << 20, on_upload=registry.seen.append)
    assert result["digest"] == sha256(data)
    assert bytes(registry.staged) == data
    assert sum(registry.seen) == len(data)
    # Four PATCHes of at most 1 MiB, each sent as several slices...
    assert [len(marks) for marks in registry.patches] == [4, 4, 4, 1]
    # ...with progress reported while the chunk was still being read by the server.
    first = registry.patches[0]
    assert first[-1] > first[0]
    # Nothing larger than a slice was ever read from the input: no chunk is buffered.
    assert max(stream.asked) <= SLICE


def test_push_from_a_pipe_of_unknown_length_shows_bytes_and_rate_but_no_total(
    registry: FakeRegistry,
) -> None:
    data = os.urandom(700_000)
    run = invoke(
        "push", "-", "--repo", "r/pipe", "--progress", "--chunk-size", "256KiB", input=data
    )
    assert run.exit_code == 0, run.output
    assert bytes(registry.staged) == data
    assert f"committed r/pipe@{sha256(data)} ({len(data)} bytes), upload {UPLOAD_ID}" in run.stdout
    bar = [line for line in re.split(r"[\r\n]+", run.stderr) if line.startswith("upload:")]
    assert bar, run.stderr
    assert re.fullmatch(r"upload: 0\.7 MiB  (?:[\d.]+|--) MiB/s\s*", bar[-1]), bar  # bytes, rate
    uploading = run.stderr.split("verify:", 1)[0]
    assert "%" not in uploading  # no total, so no percentage...
    assert "ETA" not in uploading  # ...and no ETA
    assert "HEAD" not in registry.methods  # a pipe is hashed on the way, not before


def test_push_from_a_pipe_with_a_tarsum_claim_computes_it_on_the_way(
    registry: FakeRegistry,
) -> None:
    layer = (
        TARSUM_VECTORS
        / "testdata/46af0962ab5afeb5ce6740d4d91652e69206fc991fd5328c1a94d364ad00e457/layer.tar"
    )
    run = invoke(
        "--json", "push", "-", "--repo", "r/ts", "--tarsum", "v1", input=layer.read_bytes()
    )
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["digest"] == (
        "tarsum.v1+sha256:41cd5c911333ee394776e432fc5a27cc82dfea313e5feff965e31c0fddd9213d"
    )


def test_push_of_a_file_shows_mib_rate_and_eta(registry: FakeRegistry, tmp_path: Path) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(3 << 20))
    run = invoke("push", str(f), "--repo", "r/file", "--progress", "--chunk-size", "1MiB")
    assert run.exit_code == 0, run.output
    bar = [line for line in re.split(r"[\r\n]+", run.stderr) if line.startswith("upload:")]
    assert re.fullmatch(
        r"upload: 100% \|#+\| 3\.0/3\.0 MiB  (?:[\d.]+|--) MiB/s  ETA 00:00\s*", bar[-1]
    )


def test_push_skips_a_blob_the_repository_already_has(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    data = b"already there"
    registry.blobs[("r/has", sha256(data))] = data
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    run = invoke("push", str(f), "--repo", "r/has")
    assert run.exit_code == 0, run.output
    assert run.stdout.strip() == (
        f"skipped r/has@{sha256(data)} ({len(data)} bytes): the repository already has it"
    )
    assert registry.methods == ["HEAD"]  # nothing uploaded
    as_json = invoke("--json", "push", str(f), "--repo", "r/has", "--digest", sha256(data))
    assert json.loads(as_json.stdout)["skipped"] is True
    # Another repository does not have it: uploaded.
    other = invoke("push", str(f), "--repo", "r/other")
    assert other.exit_code == 0, other.output
    assert other.stdout.startswith(f"committed r/other@{sha256(data)}")
    assert "PATCH" in registry.methods


def test_a_bar_shows_mib_rate_and_eta_and_redraws_during_a_chunk() -> None:
    now = [100.0]
    bar = _ByteBar("upload", 64 * MIB, clock=lambda: now[0])
    drawn: list[str] = []
    runner = CliRunner()
    with runner.isolation() as (_, err, _):
        for _ in range(8):  # 8 MiB in a second, in 1 MiB slices of one 16 MiB chunk
            now[0] += 0.125
            bar.update(MIB)
        drawn = err.getvalue().decode().split("\r")[1:]
    assert bar.line(now[0]).startswith("upload:  12% |###   ")
    assert bar.line(now[0]).endswith("8.0/64.0 MiB  8.0 MiB/s  ETA 00:07")
    assert 4 <= len(drawn) <= 8  # redrawn while the chunk goes, at most every 0.2 s
    unknown = _ByteBar("upload", None, clock=lambda: now[0])
    now[0] += 2
    unknown.update(3 * MIB)
    assert unknown.line(now[0]) == "upload: 3.0 MiB  1.5 MiB/s"
    # A verification a prehash had half done: the rate counts only what it saw happen.
    half = _ByteBar("verify", 10 * MIB, clock=lambda: now[0])
    half.start_at(5 * MIB)
    now[0] += 1
    half.n += MIB
    assert half.line(now[0]).endswith("6.0/10.0 MiB  1.0 MiB/s  ETA 00:04")


# -- pull ------------------------------------------------------------------------------


def test_pull_writes_the_file_once_the_digest_matched(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(SLICE * 3 + 7)
    registry.blobs[("r/p", sha256(data))] = data
    out = tmp_path / "out.bin"
    run = invoke("pull", "r/p", sha256(data), "-o", str(out))
    assert run.exit_code == 0, run.output
    assert out.read_bytes() == data
    assert f"verified r/p@{sha256(data)}" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_pull_of_corrupt_content_is_digest_invalid_and_leaves_no_file(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(SLICE * 2)
    registry.blobs[("r/p", sha256(data))] = data
    registry.serve_instead = b"X" + data[1:]
    out = tmp_path / "out.bin"
    out.write_bytes(b"an older copy")
    run = invoke("pull", "r/p", sha256(data), "-o", str(out))
    assert run.exit_code == 3, run.output
    assert "DIGEST_INVALID" in run.stderr
    assert sha256(registry.serve_instead) in run.stderr  # the computed digest
    assert out.read_bytes() == b"an older copy"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no partial file
    fresh = tmp_path / "fresh.bin"
    assert invoke("pull", "r/p", sha256(data), "-o", str(fresh)).exit_code == 3
    assert not fresh.exists()


def test_pull_of_an_unknown_blob_is_exit_3_and_leaves_no_file(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    run = invoke("pull", "r/p", sha256(b"nope"), "-o", str(tmp_path / "x"))
    assert run.exit_code == 3
    assert "BLOB_UNKNOWN" in run.stderr
    assert list(tmp_path.iterdir()) == []


# -- usage errors ----------------------------------------------------------------------


def test_a_bad_tarsum_label_is_a_usage_error(tmp_path: Path) -> None:
    f = tmp_path / "layer.tar"
    f.write_bytes(b"")
    for label in ("tarsum.v2+sha256", "tarsum.v1+md5", "nolabel"):
        run = invoke("tarsum", "--label", label, str(f))
        assert run.exit_code == 2, (label, run.output)
        assert "--label" in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["retry", "--failed"],
        ["retry", UPLOAD_ID],
        ["status", UPLOAD_ID],
        ["cancel", UPLOAD_ID],
        ["purge"],
        ["reconcile"],
    ],
)
def test_a_command_without_local_storage_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "no-storage"
    env = {"INGEST_STORAGE_ROOT": str(missing), "INGEST_URL": ""}
    run = invoke(*args, env=env)
    assert run.exit_code == 2, run.output
    assert f"no storage at {missing}" in run.stderr
    assert "re-queued" not in run.stdout
    assert not missing.exists()


def test_purge_and_reconcile_say_they_have_no_http_form(tmp_path: Path) -> None:
    env = {"INGEST_STORAGE_ROOT": str(tmp_path / "none"), "INGEST_URL": "http://registry.test"}
    for command in ("purge", "reconcile"):
        run = invoke(command, env=env)
        assert run.exit_code == 2
        assert f"`ingest {command}` has no HTTP form (INGEST_URL is not used)" in run.stderr


# -- status and retry on local storage -------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> tuple[Context, RecordingQueue]:
    root = tmp_path / "storage"
    root.mkdir()
    settings = Settings.from_env({"INGEST_STORAGE_ROOT": str(root)})
    obj = Context(settings, as_json=False)
    obj._ingest, queue = make_ingest(FilesystemDriver(root), settings)
    return obj, queue


def test_status_prints_times_as_iso_8601(local: tuple[Context, RecordingQueue]) -> None:
    obj, _ = local
    up = obj.ingest.start_upload("r/s")
    up.write(b"abc")
    result = CliRunner().invoke(cli, ["status", up.id], obj=obj)
    assert result.exit_code == 0, result.output
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(iso, fields["started_at"]), fields
    assert re.fullmatch(iso, fields["last_activity"]), fields
    as_json = CliRunner().invoke(cli, ["--json", "status", up.id], obj=obj)
    assert isinstance(json.loads(as_json.stdout)["started_at"], float)  # machines get numbers


def test_retry_failed_on_local_storage_requeues_every_failed_upload(
    local: tuple[Context, RecordingQueue],
) -> None:
    obj, queue = local
    up = obj.ingest.start_upload("r/s")
    up.write(b"abc")
    with pytest.raises(DigestInvalid):
        up.finish(sha256(b"other")).wait()
    run = CliRunner().invoke(cli, ["retry", "--failed", "--code", "DIGEST_INVALID"], obj=obj)
    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[0].startswith("re-queued 1 failed verification(s)")
    assert up.id in run.stdout
    assert [c.upload_id for c in queue.calls] == [up.id, up.id]  # the first attempt, the retry
    none = CliRunner().invoke(cli, ["retry", "--failed", "--code", "UNAVAILABLE"], obj=obj)
    assert none.stdout.startswith("re-queued 0")
    assert len(queue.calls) == 2
