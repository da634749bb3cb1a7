"""The catalog walk (ingest.catalog) and the path parser it rests on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import catalog, paths
from ingest.digests import parse_digest
from ingest.storage.base import TMP_MARKER, FileInfo, StorageDriver
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import make_ingest, sha256

DIGEST = parse_digest(sha256(b"x"))


class CountingDriver:
    """A MemoryDriver that counts listings and refuses to read any object."""

    def __init__(self) -> None:
        self.inner = MemoryDriver()
        self.name = "counting"
        self.listed: list[str] = []
        self.reading = True

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def list(self, path: str) -> list[str]:
        self.listed.append(path)
        return self.inner.list(path)

    def get_content(self, path: str) -> bytes:
        assert self.reading, f"the catalog read {path}"
        return self.inner.get_content(path)

    def reader(self, path: str, offset: int = 0) -> Any:
        raise AssertionError(f"the catalog opened {path}")

    def walk(self, path: str) -> Iterator[FileInfo]:
        raise AssertionError(f"the catalog walked {path}")


def _conforms(driver: CountingDriver) -> StorageDriver:
    conforming: StorageDriver = driver
    return conforming


def _link(driver: Any, name: str) -> None:
    driver.put_content(paths.layer_link_path(name, DIGEST), str(DIGEST).encode())


def test_a_repository_is_a_directory_with_layers_or_manifests() -> None:
    driver = MemoryDriver()
    _link(driver, "library/ubuntu")
    driver.put_content(paths.manifest_tag_link_path("library", "v1"), b"sha256:00")
    driver.put_content(paths.manifest_tag_link_path("x/y/z", "v1"), b"sha256:00")
    # Not repositories: a parent only, foreign and temporary entries.
    driver.put_content(paths.repositories_root() + "/stray", b"")
    driver.put_content(paths.repositories_root() + "/_hidden/_layers/x", b"")
    driver.put_content(paths.repositories_root() + f"/{TMP_MARKER}tmp", b"")
    driver.put_content(paths.repository_dir("library") + "/Upper/_layers/x", b"")
    assert catalog.repositories(driver, 10) == ["library", "library/ubuntu", "x/y/z"]
    assert catalog.repositories(driver, 10, "library") == ["library/ubuntu", "x/y/z"]
    assert catalog.repositories(driver, 1, "library/ubuntu") == ["x/y/z"]
    assert catalog.repositories(driver, 0) == []
    assert catalog.repositories(MemoryDriver(), 5) == []


def test_the_walk_reads_listings_only() -> None:
    driver = CountingDriver()
    for name in ("a", "b/c", "d/e/f"):
        _link(driver, name)
    driver.reading = False
    assert catalog.repositories(_conforms(driver), 10) == ["a", "b/c", "d/e/f"]


def test_a_page_does_not_walk_the_whole_tree() -> None:
    driver = CountingDriver()
    names = [f"team{t:02d}/app{a:02d}" for t in range(30) for a in range(30)]
    for name in names:
        _link(driver, name)
    driver.listed.clear()
    page = catalog.repositories(_conforms(driver), 5, "team10/app27")
    assert page == ["team10/app28", "team10/app29", "team11/app00", "team11/app01", "team11/app02"]
    # The root, two team directories and the few apps on the way: not 930 listings.
    assert len(driver.listed) < 20, driver.listed


@given(
    st.lists(st.sampled_from(["a", "a-b", "a/b", "a_b", "ab", "a.b", "b", "a/b/c"]), unique=True)
)
def test_nested_and_prefix_names_come_in_string_order(names: list[str]) -> None:
    driver = MemoryDriver()
    for name in names:
        _link(driver, name)
    everything = sorted(names)
    assert catalog.repositories(driver, 100) == everything
    for i, last in enumerate(everything):
        assert catalog.repositories(driver, 2, last) == everything[i + 1 : i + 3]


def test_the_facade_lists_what_was_pushed() -> None:
    ing, _ = make_ingest(MemoryDriver())
    up = ing.start_upload("library/ubuntu")
    up.write(b"x")
    up.finish(sha256(b"x")).wait()
    assert ing.repositories(10) == ["library/ubuntu"]
    assert ing.repositories(10, "library/ubuntu") == []


# -- the parser ------------------------------------------------------------------------

names = st.from_regex(
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*){0,3}", fullmatch=True
)


@given(names)
def test_parse_repository_dir_inverts_repository_dir(name: str) -> None:
    if len(name) > 255:
        return
    assert paths.parse_repository_dir(paths.repository_dir(name)) == name


@given(st.text(max_size=80))
def test_parse_repository_dir_maps_back_to_exactly_its_input_or_none(text: str) -> None:
    for candidate in (text, paths.repositories_root() + "/" + text):
        name = paths.parse_repository_dir(candidate)
        if name is not None:
            assert paths.repository_dir(name) == candidate


@pytest.mark.parametrize(
    "path",
    [
        "/repositories",
        "/repositories/",
        "/repositories/a/_layers",
        "/repositories/a/_manifests",
        "/repositories/A",
        "/repositories/a//b",
        "/repositories/../etc",
        f"/repositories/{TMP_MARKER}x",
        "/blobs/a",
        "repositories/a",
    ],
)
def test_parse_repository_dir_refuses_anything_else(path: str) -> None:
    assert paths.parse_repository_dir(path) is None


def test_repository_content_dirs_are_the_layout_s() -> None:
    assert paths.repository_content_dirs("a/b") == (
        paths.layers_dir("a/b"),
        "/repositories/a/b/_manifests",
    )
