"""The filesystem driver against the shared storage contract, plus its own durability rules."""

from __future__ import annotations

import errno
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import StorageUnavailable
from ingest.storage import filesystem
from ingest.storage.base import InvalidPath, StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from tests.unit.storage.contract import StorageDriverContract


class TestFilesystemDriver(StorageDriverContract):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> StorageDriver:
        return FilesystemDriver(tmp_path / "root")
