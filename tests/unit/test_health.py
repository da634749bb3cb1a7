"""The deep health checks (ingest.health) against the memory driver and a recording queue."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ingest import paths
from ingest.errors import StorageUnavailable
from ingest.health import check_storage, run_checks
from ingest.storage.base import PathNotFound
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import RecordingQueue, make_ingest


class FaultyDriver(MemoryDriver):
    """A memory driver whose writes fail, or whose reads return other bytes."""

    def __init__(self, *, fail_writes: bool = False, garble: bool = False) -> None:
        super().__init__()
        self.fail_writes = fail_writes
        self.garble = garble
        self.deleted: list[str] = []

    def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        if self.fail_writes:
            raise StorageUnavailable("storage unavailable", {"error": "EROFS"})
        super().put_content(path, content, durable=durable)

    def get_content(self, path: str) -> bytes:
        data = super().get_content(path)
        return data[::-1] if self.garble else data

    def delete(self, path: str) -> None:
        self.deleted.append(path)
        super().delete(path)


def _health_entries(driver: MemoryDriver) -> list[str]:
    try:
        return driver.list("/health")
    except PathNotFound:
        return []


def test_a_healthy_stack_passes_every_check_and_leaves_no_probe_behind() -> None:
    driver = MemoryDriver()
    ing, queue = make_ingest(driver)
    report = ing.health(broker_timeout=0.5, worker_timeout=0.25)
    assert report.ok
    doc = report.to_dict()
    assert doc["status"] == "ok"
    assert set(doc["checks"]) == {"broker", "storage", "workers"}
    for check in doc["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["latency_ms"], float)
        assert check["latency_ms"] >= 0
        assert "error" not in check
    assert doc["checks"]["workers"]["workers"] == ["fake-worker@localhost"]
    # The timeouts reach the queue; the worker ping returns at the first answer.
    assert ("broker", 0.5) in queue.pings
    assert ("workers", 0.25) in queue.pings
    assert _health_entries(driver) == []


def test_a_broker_that_does_not_answer_fails_the_broker_and_worker_checks() -> None:
    driver = MemoryDriver()
    queue = RecordingQueue(driver)
    queue.broker_up = False
    report = run_checks(driver, queue, broker_timeout=0.1, worker_timeout=0.1)
    assert not report.ok
    checks = report.to_dict()["checks"]
    assert checks["broker"]["status"] == "fail"
    assert "UNAVAILABLE" in checks["broker"]["error"]
    assert "fake: down" in checks["broker"]["error"]
    assert checks["workers"]["status"] == "fail"
    assert checks["storage"]["status"] == "ok"
    assert report.to_dict()["status"] == "fail"


def test_no_worker_answering_fails_only_the_worker_check() -> None:
    driver = MemoryDriver()
    queue = RecordingQueue(driver)
    queue.workers = []
    report = run_checks(driver, queue, broker_timeout=0.1, worker_timeout=0.1)
    checks = report.to_dict()["checks"]
    assert checks["workers"] == {
        "status": "fail",
        "latency_ms": checks["workers"]["latency_ms"],
        "error": "RuntimeError: no worker answered a ping within 0.1 s",
    }
    assert checks["broker"]["status"] == "ok"
    assert checks["storage"]["status"] == "ok"
    assert not report.ok


def test_storage_that_refuses_writes_fails_the_storage_check() -> None:
    driver = FaultyDriver(fail_writes=True)
    check = check_storage(driver)
    assert not check.ok
    assert check.error is not None
    assert check.error.startswith("UNAVAILABLE: storage unavailable (EROFS)")


def test_storage_that_returns_other_bytes_fails_and_the_probe_is_still_deleted() -> None:
    driver = FaultyDriver(garble=True)
    check = check_storage(driver)
    assert not check.ok
    assert check.error is not None
    assert "differs" in check.error
    (probe,) = driver.deleted
    assert probe.startswith("/health/")
    paths.health_probe_path(probe.rsplit("/", 1)[1])  # a key the mapper builds
    assert _health_entries(driver) == []


def test_a_check_that_hangs_fails_after_the_longest_timeout_plus_the_grace() -> None:
    driver = MemoryDriver()
    release = threading.Event()

    class HangingQueue(RecordingQueue):
        def ping_workers(self, timeout: float, limit: int | None = None) -> list[str]:
            release.wait(10)
            return []

    start = time.perf_counter()
    try:
        report = run_checks(driver, HangingQueue(driver), broker_timeout=0.05, worker_timeout=0.05)
    finally:
        release.set()
    elapsed = time.perf_counter() - start
    assert 1.0 <= elapsed < 3.0  # the longest timeout plus one second of grace
    checks = report.to_dict()["checks"]
    assert checks["workers"]["status"] == "fail"
    assert checks["workers"]["error"].startswith("no answer within")
    assert checks["broker"]["status"] == "ok"


@pytest.mark.parametrize("name", ["broker", "storage", "workers"])
def test_each_check_reports_its_latency_in_milliseconds(name: str) -> None:
    driver = MemoryDriver()
    doc: dict[str, Any] = run_checks(driver, RecordingQueue(driver)).to_dict()
    latency = doc["checks"][name]["latency_ms"]
    assert 0 <= latency < 1000


def test_a_password_in_an_error_message_is_masked() -> None:
    driver = MemoryDriver()

    class LeakyQueue(RecordingQueue):
        def ping_broker(self, timeout: float) -> None:
            raise StorageUnavailable(
                "the task broker does not answer",
                {"error": "cannot connect to redis://:hunter2@redis:6379/0"},
            )

    report = run_checks(driver, LeakyQueue(driver), broker_timeout=0.1, worker_timeout=0.1)
    error = report.to_dict()["checks"]["broker"]["error"]
    assert "hunter2" not in error
    assert "redis://:***@redis:6379/0" in error
