"""The StorageDriver contract every backend must pass.

Each backend's test module subclasses :class:`StorageDriverContract` and only
provides the ``driver`` fixture (like distribution's driver testsuites and
fsspec's abstract tests). Tests clean up the objects they create where natural.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.storage.base import (
    FileWriter,
    InvalidOffset,
    InvalidPath,
    ObjectSealed,
    PathNotFound,
    StorageDriver,
    StorageError,
)

INVALID_PATHS = [
    "",
    "relative/path",
    "a",
    "/",
    "//",
    "/a//b",
    "/a/",
    "/.",
    "/..",
    "/a/./b",
    "/a/../b",
    "/../etc/passwd",
    "/a/b/..",
    "/a\x00b",
    "/a b",
    "/a\\b",
    "/a:b",
    "/a?b",
    "/a*b",
    "/a~b",
    "/ümlaut",
    "/a\nb",
    "/" + "a" * 1024,
]

# Paths that are not valid even where a driver allows "/" (stat, list, walk).
INVALID_NON_ROOT_PATHS = [p for p in INVALID_PATHS if p != "/"]

# Characters a storage path may use, plus a few it may not, for property tests.
_PATH_ALPHABET = string.ascii_letters + string.digits + "._+=-/" + "\\ :\x00~ü"


def _call_each_method(driver: StorageDriver) -> list[tuple[str, Callable[[str], object]]]:
    return [
        ("get_content", driver.get_content),
        ("put_content", lambda p: driver.put_content(p, b"x")),
        ("put_if_absent", lambda p: driver.put_if_absent(p, b"x")),
        ("reader", driver.reader),
        ("writer", driver.writer),
        ("writer-append", lambda p: driver.writer(p, append=True)),
        ("stat", driver.stat),
        ("list", driver.list),
        ("move-source", lambda p: driver.move(p, "/ok/dest")),
        ("move-dest", lambda p: driver.move("/ok/source", p)),
        ("delete", driver.delete),
        ("sync", driver.sync),
        ("seal", driver.seal),
    ]


def _write(driver: StorageDriver, path: str, data: bytes, *, append: bool = False) -> FileWriter:
    w = driver.writer(path, append=append)
    w.write(data)
    w.commit()
    return w


class StorageDriverContract:
    """Mix-in test suite; subclasses override the ``driver`` fixture."""

    @pytest.fixture
    def driver(self) -> StorageDriver:
        raise NotImplementedError("a backend's test class provides the driver fixture")

    # -- put / get ---------------------------------------------------------------------

    def test_driver_satisfies_the_storage_driver_protocol(self, driver: StorageDriver) -> None:
        assert isinstance(driver, StorageDriver)
        assert isinstance(driver.name, str)
        assert driver.name

    def test_put_then_get_returns_the_same_bytes(self, driver: StorageDriver) -> None:
        content = bytes(range(256)) * 17
        driver.put_content("/round/trip/data", content)
        assert driver.get_content("/round/trip/data") == content
        driver.delete("/round")

    def test_put_of_empty_content_stores_an_empty_object(self, driver: StorageDriver) -> None:
        driver.put_content("/empty/data", b"")
        assert driver.get_content("/empty/data") == b""
        assert driver.stat("/empty/data").size == 0
        driver.delete("/empty")

    def test_put_overwrites_the_whole_object(self, driver: StorageDriver) -> None:
        driver.put_content("/over/data", b"a long original content")
        driver.put_content("/over/data", b"short")
        assert driver.get_content("/over/data") == b"short"
        assert driver.stat("/over/data").size == 5
        driver.delete("/over")

    def test_reader_opened_before_an_overwrite_keeps_seeing_the_old_bytes(
        self, driver: StorageDriver
    ) -> None:
        driver.put_content("/atomic/data", b"old content")
        with driver.reader("/atomic/data") as f:
            driver.put_content("/atomic/data", b"new!")
            assert f.read() == b"old content"
        assert driver.get_content("/atomic/data") == b"new!"
        driver.delete("/atomic")

    def test_get_of_a_missing_object_raises_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.get_content("/missing/data")

    def test_get_of_a_directory_raises_path_not_found(self, driver: StorageDriver) -> None:
        driver.put_content("/dir/child", b"x")
        with pytest.raises(PathNotFound):
            driver.get_content("/dir")
        driver.delete("/dir")

    def test_put_at_a_long_but_valid_name_round_trips(self, driver: StorageDriver) -> None:
        # check_path accepts any component length; 240 characters fits every
        # filesystem's NAME_MAX of 255.
        path = "/long/" + "n" * 240
        driver.put_content(path, b"long")
        assert driver.get_content(path) == b"long"
        driver.delete("/long")

    # -- reader ------------------------------------------------------------------------

    def test_reader_at_an_offset_starts_there(self, driver: StorageDriver) -> None:
        driver.put_content("/rd/data", b"0123456789")
        with driver.reader("/rd/data", offset=4) as f:
            assert f.read() == b"456789"
            f.seek(1)
            assert f.read(2) == b"12"
        with driver.reader("/rd/data", offset=10) as f:
            assert f.read() == b""
        driver.delete("/rd")

    @pytest.mark.parametrize("offset", [-1, 11, 1 << 40])
    def test_reader_offset_outside_the_object_raises_invalid_offset(
        self, driver: StorageDriver, offset: int
    ) -> None:
        driver.put_content("/rd/data", b"0123456789")
        with pytest.raises(InvalidOffset):
            driver.reader("/rd/data", offset=offset)
        driver.delete("/rd")

    def test_reader_of_a_missing_object_raises_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.reader("/missing/data")

    # -- writer ------------------------------------------------------------------------

    def test_writer_truncates_unless_appending(self, driver: StorageDriver) -> None:
        driver.put_content("/wr/data", b"previous content")
        w = _write(driver, "/wr/data", b"new")
        assert w.size == 3
        w.close()
        assert driver.get_content("/wr/data") == b"new"
        driver.delete("/wr")

    def test_writer_in_append_mode_continues_after_the_existing_bytes(
        self, driver: StorageDriver
    ) -> None:
        driver.put_content("/wr/data", b"abc")
        w = driver.writer("/wr/data", append=True)
        assert w.size == 3
        assert w.write(b"def") == 3
        assert w.write(memoryview(b"gh")) == 2
        assert w.size == 8
        w.commit()
        w.close()
        assert driver.get_content("/wr/data") == b"abcdefgh"
        driver.delete("/wr")

    def test_writer_creates_missing_parent_directories(self, driver: StorageDriver) -> None:
        w = _write(driver, "/deep/er/and/deeper/data", b"x")
        w.close()
        assert driver.stat("/deep/er/and").is_dir
        assert driver.get_content("/deep/er/and/deeper/data") == b"x"
        driver.delete("/deep")

    def test_append_to_a_missing_object_raises_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.writer("/missing/data", append=True)

    def test_writer_stays_usable_after_commit(self, driver: StorageDriver) -> None:
        w = driver.writer("/wr/data")
        w.write(b"one")
        w.commit()
        w.write(b"two")
        w.commit()
        w.close()
        assert driver.get_content("/wr/data") == b"onetwo"
        driver.delete("/wr")

    def test_writer_cancel_removes_the_object_and_is_idempotent(
        self, driver: StorageDriver
    ) -> None:
        w = _write(driver, "/wr/data", b"doomed")
        w.cancel()
        w.cancel()
        with pytest.raises(PathNotFound):
            driver.get_content("/wr/data")
        with pytest.raises(StorageError):
            w.write(b"more")
        w.close()

    def test_writer_close_is_idempotent_and_keeps_the_bytes(self, driver: StorageDriver) -> None:
        w = _write(driver, "/wr/data", b"kept")
        w.close()
        w.close()
        with pytest.raises(StorageError):
            w.write(b"more")
        assert driver.get_content("/wr/data") == b"kept"
        driver.delete("/wr")

    def test_an_append_by_a_stale_writer_is_invalid_offset_and_writes_nothing(
        self, driver: StorageDriver
    ) -> None:
        first = driver.writer("/stale/data")
        second = driver.writer("/stale/data", append=True)
        second.write(b"abc")
        with pytest.raises(InvalidOffset):
            first.write(b"xyz")
        assert driver.get_content("/stale/data") == b"abc"
        first.close()
        second.close()
        driver.delete("/stale")

    def test_a_writer_of_a_deleted_object_is_path_not_found(self, driver: StorageDriver) -> None:
        w = driver.writer("/gone/data")
        w.write(b"abc")
        driver.delete("/gone")
        with pytest.raises(PathNotFound):
            w.write(b"more")
        w.close()
        assert list(driver.walk("/")) == []

    # -- seal --------------------------------------------------------------------------

    def test_seal_returns_the_final_size_and_is_idempotent(self, driver: StorageDriver) -> None:
        _write(driver, "/sealed/data", b"12345").close()
        assert driver.seal("/sealed/data") == 5
        assert driver.seal("/sealed/data") == 5
        assert driver.get_content("/sealed/data") == b"12345"
        assert driver.stat("/sealed/data").size == 5
        driver.delete("/sealed")

    def test_seal_of_a_missing_object_is_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.seal("/no/such/object")

    def test_a_writer_opened_before_the_seal_writes_nothing_after_it(
        self, driver: StorageDriver
    ) -> None:
        w = _write(driver, "/sealed/data", b"before")
        driver.seal("/sealed/data")
        with pytest.raises(ObjectSealed):
            w.write(b"after")
        w.close()
        assert driver.get_content("/sealed/data") == b"before"
        driver.delete("/sealed")

    def test_no_writer_can_be_opened_on_a_sealed_object(self, driver: StorageDriver) -> None:
        _write(driver, "/sealed/data", b"frozen").close()
        driver.seal("/sealed/data")
        for append in (True, False):
            with pytest.raises(ObjectSealed):
                driver.writer("/sealed/data", append=append)
        assert driver.get_content("/sealed/data") == b"frozen"
        driver.delete("/sealed")

    def test_the_seal_travels_with_a_move(self, driver: StorageDriver) -> None:
        w = _write(driver, "/staged/data", b"verified")
        driver.seal("/staged/data")
        driver.move("/staged/data", "/blob/data")
        with pytest.raises(ObjectSealed):
            w.write(b"late")  # the old writer follows the object to its new name
        with pytest.raises(ObjectSealed):
            driver.writer("/blob/data", append=True)
        w.close()
        assert driver.get_content("/blob/data") == b"verified"
        driver.delete("/blob")
        with contextlib.suppress(PathNotFound):  # an empty directory, where there are any
            driver.delete("/staged")

    def test_put_content_over_a_sealed_object_stores_a_new_unsealed_one(
        self, driver: StorageDriver
    ) -> None:
        old = _write(driver, "/sealed/data", b"old")
        driver.seal("/sealed/data")
        driver.put_content("/sealed/data", b"new")
        w = driver.writer("/sealed/data", append=True)
        w.write(b"er")
        w.close()
        assert driver.get_content("/sealed/data") == b"newer"
        with pytest.raises((ObjectSealed, PathNotFound)):
            old.write(b"x")  # still the old, sealed object
        old.close()
        driver.delete("/sealed")

    # The commit's steps between "hashing starts" and "the blob is in place": a
    # writer opened before the seal tries to add bytes at each of them. The bytes
    # moved into place must be exactly the bytes hashed.
    LATE_WRITE_STEPS = ("sealed", "reading", "hashed", "moved")

    @pytest.mark.parametrize("step", LATE_WRITE_STEPS)
    def test_a_late_write_at_any_step_of_a_commit_never_reaches_the_moved_bytes(
        self, driver: StorageDriver, step: str
    ) -> None:
        content = bytes(range(256)) * 64
        late = _write(driver, "/uploads/u/data", content)  # a writer still streaming

        def inject(at: str) -> None:
            if at == step:
                with pytest.raises((ObjectSealed, PathNotFound)):
                    late.write(b"late bytes")

        size = driver.seal("/uploads/u/data")
        inject("sealed")
        hasher = hashlib.sha256()
        hashed = 0
        with driver.reader("/uploads/u/data") as f:
            while chunk := f.read(4096):
                hasher.update(chunk)
                hashed += len(chunk)
                if hashed == 4096:
                    inject("reading")
        inject("hashed")
        assert hashed == size == len(content)
        driver.move("/uploads/u/data", "/blobs/x/data")
        inject("moved")
        late.close()
        stored = driver.get_content("/blobs/x/data")
        assert hashlib.sha256(stored).digest() == hasher.digest()
        assert stored == content
        driver.delete("/blobs")
        with contextlib.suppress(PathNotFound):
            driver.delete("/uploads")

    def test_writes_racing_a_seal_either_land_before_it_or_change_nothing(
        self, driver: StorageDriver
    ) -> None:
        _write(driver, "/race/data", b"").close()
        landed: list[bytes] = []
        refused = threading.Event()
        start = threading.Barrier(2)

        def writer() -> None:
            w = driver.writer("/race/data", append=True)
            start.wait()
            for i in range(100_000):
                piece = i.to_bytes(4, "big") * 256
                try:
                    w.write(piece)
                except ObjectSealed:
                    refused.set()
                    break
                landed.append(piece)
            w.close()

        t = threading.Thread(target=writer)
        t.start()
        start.wait()
        while not landed:
            pass
        size = driver.seal("/race/data")
        t.join(timeout=60)
        assert refused.is_set()
        # Every accepted write is inside the seal, and nothing else is.
        assert size == sum(len(p) for p in landed)
        assert driver.get_content("/race/data") == b"".join(landed)
        driver.delete("/race")

    # -- put_if_absent (exclusive create) ---------------------------------------------

    def test_put_if_absent_creates_once_and_never_overwrites(self, driver: StorageDriver) -> None:
        assert driver.put_if_absent("/excl/a/verdict", b"first") is True
        assert driver.get_content("/excl/a/verdict") == b"first"
        assert driver.put_if_absent("/excl/a/verdict", b"second") is False
        assert driver.get_content("/excl/a/verdict") == b"first"
        driver.put_content("/excl/b", b"put")
        assert driver.put_if_absent("/excl/b", b"excl", durable=False) is False
        assert driver.get_content("/excl/b") == b"put"
        _write(driver, "/excl/c", b"appendable").close()  # a writer's object counts too
        assert driver.put_if_absent("/excl/c", b"excl") is False
        assert driver.get_content("/excl/c") == b"appendable"
        driver.delete("/excl/a/verdict")  # once deleted, the path is free again
        assert driver.put_if_absent("/excl/a/verdict", b"again") is True
        assert driver.get_content("/excl/a/verdict") == b"again"
        assert driver.stat("/excl/a/verdict").size == 5
        assert sorted(fi.path for fi in driver.walk("/excl")) == [
            "/excl/a/verdict",
            "/excl/b",
            "/excl/c",
        ]  # no temporary object is left behind
        driver.delete("/excl")

    def test_put_if_absent_of_an_empty_object(self, driver: StorageDriver) -> None:
        assert driver.put_if_absent("/excl-empty/x", b"") is True
        assert driver.get_content("/excl-empty/x") == b""
        assert driver.put_if_absent("/excl-empty/x", b"") is False
        driver.delete("/excl-empty")

    def test_exactly_one_of_many_racing_put_if_absent_wins(self, driver: StorageDriver) -> None:
        n, rounds = 8, 5

        def racer(
            path: str, i: int, start: threading.Barrier, won: list[int], errors: list[object]
        ) -> None:
            start.wait()
            try:
                if driver.put_if_absent(path, f"racer-{i}".encode() * 64):
                    won.append(i)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        for r in range(rounds):
            path = f"/excl-race/{r}/verdict"
            start = threading.Barrier(n)
            won: list[int] = []
            errors: list[object] = []
            threads = [
                threading.Thread(target=racer, args=(path, i, start, won, errors)) for i in range(n)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors
            assert len(won) == 1, (r, won)
            # The stored object is the winner's, whole.
            assert driver.get_content(path) == f"racer-{won[0]}".encode() * 64
        driver.delete("/excl-race")

    # -- stat / list -------------------------------------------------------------------

    def test_stat_reports_size_and_kind(self, driver: StorageDriver) -> None:
        driver.put_content("/st/dir/data", b"12345")
        obj = driver.stat("/st/dir/data")
        assert (obj.path, obj.size, obj.is_dir) == ("/st/dir/data", 5, False)
        assert obj.mod_time > 0
        d = driver.stat("/st/dir")
        assert (d.path, d.is_dir) == ("/st/dir", True)
        with pytest.raises(PathNotFound):
            driver.stat("/st/nothing")
        driver.delete("/st")

    def test_list_returns_direct_children_sorted(self, driver: StorageDriver) -> None:
        for p in ("/ls/c", "/ls/a/deep/x", "/ls/b", "/ls/a/y", "/lsx/other"):
            driver.put_content(p, b"x")
        assert driver.list("/ls") == ["/ls/a", "/ls/b", "/ls/c"]
        assert driver.list("/ls/a") == ["/ls/a/deep", "/ls/a/y"]
        assert driver.list("/") == ["/ls", "/lsx"]
        driver.delete("/ls")
        driver.delete("/lsx")

    def test_list_of_a_missing_directory_raises_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.list("/missing")

    # -- move --------------------------------------------------------------------------

    def test_move_renames_and_creates_parents(self, driver: StorageDriver) -> None:
        driver.put_content("/mv/src", b"payload")
        driver.move("/mv/src", "/mv/new/parent/dest")
        assert driver.get_content("/mv/new/parent/dest") == b"payload"
        with pytest.raises(PathNotFound):
            driver.get_content("/mv/src")
        driver.delete("/mv")

    def test_move_overwrites_the_destination(self, driver: StorageDriver) -> None:
        driver.put_content("/mv/src", b"new")
        driver.put_content("/mv/dest", b"old and longer")
        driver.move("/mv/src", "/mv/dest")
        assert driver.get_content("/mv/dest") == b"new"
        assert driver.list("/mv") == ["/mv/dest"]
        driver.delete("/mv")

    def test_move_of_a_missing_source_leaves_the_destination_untouched(
        self, driver: StorageDriver
    ) -> None:
        driver.put_content("/mv/dest", b"precious")
        with pytest.raises(PathNotFound):
            driver.move("/mv/missing", "/mv/dest")
        assert driver.get_content("/mv/dest") == b"precious"
        driver.delete("/mv")

    # -- sync --------------------------------------------------------------------------

    def test_sync_keeps_the_object_as_it_is(self, driver: StorageDriver) -> None:
        _write(driver, "/sync/obj", b"durable bytes").close()
        driver.sync("/sync/obj")
        assert driver.get_content("/sync/obj") == b"durable bytes"
        driver.delete("/sync")

    def test_sync_of_a_missing_object_is_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.sync("/sync/missing")

    # -- delete ------------------------------------------------------------------------

    def test_delete_removes_everything_below_the_path(self, driver: StorageDriver) -> None:
        for p in ("/del/a/x", "/del/a/b/y", "/del/a/b/c/z"):
            driver.put_content(p, b"x")
        driver.delete("/del/a")
        with pytest.raises(PathNotFound):
            driver.stat("/del/a")
        assert list(driver.walk("/del")) == []

    def test_delete_never_touches_siblings_with_a_shared_prefix(
        self, driver: StorageDriver
    ) -> None:
        for p in ("/a/b/inner", "/a/bc/d", "/a/bc/e", "/a/b-"):
            driver.put_content(p, b"x")
        driver.delete("/a/b")
        assert sorted(i.path for i in driver.walk("/a")) == ["/a/b-", "/a/bc/d", "/a/bc/e"]
        driver.put_content("/a/b", b"file")
        driver.delete("/a/b")
        assert sorted(i.path for i in driver.walk("/a")) == ["/a/b-", "/a/bc/d", "/a/bc/e"]
        driver.delete("/a")

    def test_delete_of_a_missing_path_raises_path_not_found(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.delete("/missing")

    # -- walk --------------------------------------------------------------------------

    def test_walk_yields_every_object_below_the_path(self, driver: StorageDriver) -> None:
        objects = {"/wk/a/x": b"1", "/wk/a/y/z": b"22", "/wk/b": b"333", "/wkk/no": b"4444"}
        for p, data in objects.items():
            driver.put_content(p, data)
        found = {i.path: (i.size, i.is_dir) for i in driver.walk("/wk")}
        assert found == {"/wk/a/x": (1, False), "/wk/a/y/z": (2, False), "/wk/b": (3, False)}
        everything = {i.path for i in driver.walk("/")}
        assert everything == set(objects)
        driver.delete("/wk")
        driver.delete("/wkk")

    def test_walk_of_a_missing_path_yields_nothing(self, driver: StorageDriver) -> None:
        assert list(driver.walk("/missing")) == []

    # -- path validation ---------------------------------------------------------------

    @pytest.mark.parametrize("path", INVALID_NON_ROOT_PATHS)
    def test_every_method_rejects_an_invalid_path(self, driver: StorageDriver, path: str) -> None:
        driver.put_content("/ok/source", b"source")
        failures = []
        for name, call in _call_each_method(driver):
            try:
                call(path)
            except InvalidPath:
                continue
            except Exception as exc:  # noqa: BLE001 - collect every method's outcome
                failures.append(f"{name}: {type(exc).__name__}")
            else:
                failures.append(f"{name}: no error")
        assert failures == []
        assert driver.get_content("/ok/source") == b"source"
        driver.delete("/ok")

    def test_walk_rejects_an_invalid_path(self, driver: StorageDriver) -> None:
        driver.put_content("/ok/data", b"x")
        for path in INVALID_NON_ROOT_PATHS:
            with pytest.raises(InvalidPath):
                list(driver.walk(path))
        driver.delete("/ok")

    @pytest.mark.parametrize("path", ["/", *INVALID_NON_ROOT_PATHS])
    def test_content_methods_reject_the_root_and_invalid_paths(
        self, driver: StorageDriver, path: str
    ) -> None:
        for call in (
            driver.get_content,
            lambda p: driver.put_content(p, b"x"),
            driver.reader,
            driver.writer,
            driver.delete,
        ):
            with pytest.raises(InvalidPath):
                call(path)

    @settings(
        max_examples=150,
        deadline=None,
        # One driver per example run is cleaned up by the test itself, and every
        # backend class is its own executor of this shared method.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(path=st.one_of(st.text(max_size=40), st.text(alphabet=_PATH_ALPHABET, max_size=40)))
    def test_arbitrary_text_is_either_rejected_or_stored_as_that_exact_key(
        self, driver: StorageDriver, path: str
    ) -> None:
        try:
            driver.put_content(path, b"prop")
        except InvalidPath:
            return
        try:
            assert driver.get_content(path) == b"prop"
            assert [i.path for i in driver.walk("/")] == [path]
        finally:
            driver.delete("/" + path.split("/")[1])
        assert list(driver.walk("/")) == []
