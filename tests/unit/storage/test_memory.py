"""The in-memory driver against the shared storage contract."""

from __future__ import annotations

import pytest

from ingest.storage.base import StorageDriver
from ingest.storage.memory import MemoryDriver
from tests.unit.storage.contract import StorageDriverContract


class TestMemoryDriver(StorageDriverContract):
    @pytest.fixture
    def driver(self) -> StorageDriver:
        return MemoryDriver()
