"""The filesystem driver against the shared storage contract, plus its own durability rules."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import StorageUnavailable
from ingest.storage.base import TMP_MARKER, InvalidPath, StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from tests.unit.storage.contract import StorageDriverContract


class TestFilesystemDriver(StorageDriverContract):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> StorageDriver:
        return FilesystemDriver(tmp_path / "root")


def test_a_name_of_exactly_name_max_round_trips_as_its_temporary_name_is_short(
    tmp_path: Path,
) -> None:
    # The contract's long name (240) leaves room for a suffix; this one does not: a
    # temporary name derived from the target's would not fit, a fixed-length one does.
    driver = FilesystemDriver(tmp_path / "root")
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = "/long/" + "n" * name_max
    driver.put_content(path, b"first")
    driver.put_content(path, b"second")  # the replace goes through a temporary name too
    assert driver.get_content(path) == b"second"
    assert _entries(tmp_path / "root") == ["long", "long/" + "n" * name_max]


def _entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_put_content_leaves_no_temporary_files(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    driver.put_content("/t/data", b"one")
    driver.put_content("/t/data", b"two")
    driver.put_content("/t/other", b"three")
    assert _entries(tmp_path / "root") == ["t", "t/data", "t/other"]
    assert not any(TMP_MARKER in name for name in _entries(tmp_path))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_an_os_error_during_put_is_storage_unavailable_and_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, failing: str
) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    driver.put_content("/t/data", b"old")

    def broken(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(StorageUnavailable) as info:
        driver.put_content("/t/data", b"new content")
    monkeypatch.undo()
    assert info.value.retryable
    assert info.value.detail["errno"] == errno.errorcode[code]
    assert info.value.detail["path"] == "/t/data"
    assert driver.get_content("/t/data") == b"old"
    assert _entries(tmp_path / "root") == ["t", "t/data"]


def test_an_os_error_during_a_first_put_leaves_the_object_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    driver.put_content("/t/keep", b"x")

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(StorageUnavailable):
        driver.put_content("/t/data", b"new")
    monkeypatch.undo()
    assert driver.list("/t") == ["/t/keep"]
    assert _entries(tmp_path / "root") == ["t", "t/keep"]


def test_an_os_error_while_writing_is_storage_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    w = driver.writer("/t/data")

    def io_error(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    w.write(b"x")
    with pytest.raises(StorageUnavailable) as info:
        w.commit()
    assert info.value.detail["errno"] == "EIO"
    w.close()


def test_a_missing_source_of_move_is_path_not_found_not_storage_unavailable(
    tmp_path: Path,
) -> None:
    from ingest.storage.base import PathNotFound

    driver = FilesystemDriver(tmp_path / "root")
    with pytest.raises(PathNotFound):
        driver.move("/nope/src", "/nope/dst")
    assert _entries(tmp_path / "root") == []


_GRAMMAR_ALPHABET = string.ascii_letters + string.digits + "._+=-/"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.one_of(
        st.text(max_size=40),
        st.text(alphabet=_GRAMMAR_ALPHABET + "\\\x00 ~", max_size=40),
        st.lists(st.sampled_from(["..", ".", "", "a", "b.c", "..."]), max_size=5).map(
            lambda parts: "/" + "/".join(parts)
        ),
    )
)
def test_nothing_is_ever_created_outside_the_root(tmp_path: Path, path: str) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    ops: list[Callable[[], object]] = [
        lambda: driver.put_content(path, b"x"),
        lambda: driver.writer(path).close(),
        lambda: driver.move("/src/data", path),
    ]
    for op in ops:
        driver.put_content("/src/data", b"s")
        with contextlib.suppress(InvalidPath):
            op()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
        for child in driver.list("/"):
            driver.delete(child)
    assert _entries(tmp_path / "root") == []


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def test_files_and_directories_are_private_by_default_and_sealed_files_read_only(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        driver = FilesystemDriver(tmp_path / "root")
        driver.put_content("/a/b/record.json", b"{}")
        w = driver.writer("/uploads/u/data")
        w.write(b"staged")
        w.close()
        driver.writer("/uploads/v/data").close()
        driver.seal("/uploads/v/data")
        driver.move("/uploads/v/data", "/blobs/x/data")
    finally:
        os.umask(old)
    modes = _modes(driver.root)
    assert modes == {
        "a": 0o750,
        "a/b": 0o750,
        "a/b/record.json": 0o640,
        "uploads": 0o750,
        "uploads/u": 0o750,
        "uploads/u/data": 0o640,
        "uploads/v": 0o750,
        "blobs": 0o750,
        "blobs/x": 0o750,
        "blobs/x/data": 0o440,
    }


def test_configured_modes_are_used_and_the_umask_can_only_take_bits_away(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        driver = FilesystemDriver(tmp_path / "root", file_mode=0o664, dir_mode=0o775)
        driver.put_content("/d/record.json", b"{}")
        driver.writer("/d/data").close()
    finally:
        os.umask(old)
    modes = _modes(driver.root)
    assert modes["d"] == 0o750
    assert modes["d/record.json"] == 0o640
    assert modes["d/data"] == 0o664  # staged data gets exactly the mode (fchmod)


@pytest.mark.parametrize(
    ("file_mode", "dir_mode"), [(0o440, 0o750), (0o640, 0o650), (0o1640, 0o750)]
)
def test_modes_that_would_break_the_seal_or_the_tree_are_refused(
    tmp_path: Path, file_mode: int, dir_mode: int
) -> None:
    with pytest.raises(ValueError, match="mode"):
        FilesystemDriver(tmp_path / "root", file_mode=file_mode, dir_mode=dir_mode)
