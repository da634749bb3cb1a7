"""Storage faults (ENOSPC, EIO) at every step of staging and commit.

A fault-injecting wrapper raises a real OSError inside the filesystem driver at
the chosen operation. Whatever step fails, the outcome is a clear, retryable
UNAVAILABLE error, never a partially visible blob or a link to nothing, and a
rerun after the fault clears commits.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import paths
from ingest.commit import commit_upload
from ingest.digests import parse_digest
from ingest.errors import StorageUnavailable
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadState, UploadWriter

DATA = os.urandom(3 << 20)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class Faults:
    """Holds the monkeypatch used to inject and clear faults."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    yield Faults(monkeypatch)
    monkeypatch.undo()


def staged(driver: FilesystemDriver) -> str:
    staging = Staging(driver)
    info = staging.create("faults/repo")
    w = driver.writer(paths.upload_data_path(info.id), append=True)
    w.write(DATA)
    w.commit()
    w.close()
    staging.transition(
        info.id,
        staging.state(info.id),
        UploadState.FINISHING,
        claimed_digest=DIGEST,
        size=len(DATA),
        task_id="t-1",
    )
    return info.id


def links(driver: FilesystemDriver) -> list[Path]:
    return (
        list((driver.root / "repositories").rglob("link"))
        if (driver.root / "repositories").exists()
        else []
    )


def blob_files(driver: FilesystemDriver) -> list[Path]:
    root = driver.root / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_consistent(driver: FilesystemDriver) -> None:
    # No temp files in the content-addressed tree, and every link names a whole blob.
    for blob in blob_files(driver):
        assert blob.name == "data"
        assert blob.stat().st_size == len(DATA)
    for link in links(driver):
        canonical = link.read_text().strip()
        hexd = canonical.split(":", 1)[1]
        assert (driver.root / "blobs" / "sha256" / hexd[:2] / hexd / "data").stat().st_size == len(
            DATA
        )


@pytest.mark.parametrize(
    ("name", "err"),
    [
        ("replace", errno.ENOSPC),  # renaming state.json / result.json / a link / the blob
        ("fsync", errno.EIO),  # making the staged data or a link durable
        ("open", errno.EIO),  # opening the staged data or a temp file
    ],
)
@pytest.mark.parametrize("skip", [0, 1, 2, 3, 4, 5, 6])
def test_a_fault_at_any_commit_step_is_retryable_and_never_half_visible(
    driver: FilesystemDriver, faults: Faults, name: str, err: int, skip: int
) -> None:
    uid = staged(driver)
    # Let ``skip`` calls through, then fail once: walks the fault across every step.
    real = getattr(os, name)
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == skip + 1:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    faults.monkeypatch.setattr(os, name, failing)
    failure: StorageUnavailable | None = None
    first = None
    try:
        first = commit_upload(driver, uid, parse_digest(DIGEST), task_id="t-1")
    except StorageUnavailable as exc:
        failure = exc
    if failure is not None:
        assert failure.retryable
        assert failure.code == "UNAVAILABLE"
        assert failure.detail["errno"] == errno.errorcode[err]
    assert_consistent(driver)
    faults.monkeypatch.setattr(os, name, real)
    result = first or commit_upload(driver, uid, parse_digest(DIGEST), task_id="t-1")
    assert result["status"] == "committed"
    assert_consistent(driver)
    assert len(blob_files(driver)) == 1
    assert len(links(driver)) == 1
    with open(blob_files(driver)[0], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == DIGEST[7:]


def test_enospc_while_staging_reports_unavailable_and_keeps_the_durable_offset(
    driver: FilesystemDriver, faults: Faults
) -> None:
    staging = Staging(driver)
    info = staging.create("faults/staging")
    w = UploadWriter(staging, info)
    w.write(DATA[:1000])

    def full_disk(fd: int, data: object) -> int:
        """A write to a filesystem that just ran out of space."""
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    faults.monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageUnavailable) as err:
        w.write(DATA[1000:2000])
    assert err.value.detail["errno"] == "ENOSPC"
    assert err.value.http_status == 503
    faults.monkeypatch.undo()
    w.close()
    assert staging.size(info.id) == 1000
    # Space comes back: the upload continues from where it durably was.
    w2 = UploadWriter(staging, staging.info(info.id))  # reopened, as resume() does
    w2.write_at(1000, DATA[1000:2000])
    w2.close()
    assert staging.size(info.id) == 2000
