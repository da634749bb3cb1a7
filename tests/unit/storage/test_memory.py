"""The in-memory driver against the shared storage contract."""

from __future__ import annotations

import pytest

from ingest.storage.base import InvalidPath, StorageDriver
from ingest.storage.memory import MemoryDriver
from tests.unit.storage.contract import INVALID_NON_ROOT_PATHS, StorageDriverContract


class TestMemoryDriver(StorageDriverContract):
    @pytest.fixture
    def driver(self) -> StorageDriver:
        return MemoryDriver()


@pytest.mark.xfail(
    strict=True,
    reason="BUG: MemoryDriver.walk never calls check_path, so invalid paths yield nothing "
    "instead of raising InvalidPath (ingest/storage/memory.py walk)",
)
@pytest.mark.parametrize("path", ["/a//b", "/../etc", "relative"])
def test_memory_walk_rejects_an_invalid_path(path: str) -> None:
    with pytest.raises(InvalidPath):
        list(MemoryDriver().walk(path))


def test_invalid_paths_table_is_not_empty() -> None:
    assert len(INVALID_NON_ROOT_PATHS) > 10
