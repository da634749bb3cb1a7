"""Leases: written, renewed while held, removed after, judged stale by age."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import StorageUnavailable
from ingest.leases import LEASE_STALE, Lease, hold_lease, read_lease
from ingest.storage.base import StorageDriver
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import DRIVER_KINDS, make_driver

PATH = "/uploads/u/verify.lease"


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(request.param, tmp_path)


def test_a_lease_is_stale_only_after_it_went_unrenewed_for_the_limit() -> None:
    lease = Lease("t", renewed_at=100.0)
    assert not lease.stale(100.0 + LEASE_STALE)
    assert lease.stale(100.0 + LEASE_STALE + 0.001)
    assert not lease.stale(200.0, stale_after=200.0)


def test_a_held_lease_is_renewed_and_removed_when_the_work_ends(driver: StorageDriver) -> None:
    renewals: list[float] = []
    with hold_lease(driver, PATH, "task-1", renew_every=0.02):
        first = read_lease(driver, PATH)
        assert first is not None
        assert first.task_id == "task-1"
        deadline = time.monotonic() + 5
        while len(set(renewals)) < 3 and time.monotonic() < deadline:
            lease = read_lease(driver, PATH)
            assert lease is not None
            assert lease.holder == first.holder
            renewals.append(lease.renewed_at)
            time.sleep(0.01)
    assert len(set(renewals)) >= 3
    assert read_lease(driver, PATH) is None


def test_short_work_with_a_delayed_first_write_leaves_no_trace(driver: StorageDriver) -> None:
    with hold_lease(driver, PATH, "task-1", first_after=0.5):
        assert read_lease(driver, PATH) is None
    time.sleep(0.6)
    assert read_lease(driver, PATH) is None


def test_work_outlasting_the_delay_gets_its_lease(driver: StorageDriver) -> None:
    with hold_lease(driver, PATH, "task-1", first_after=0.05, renew_every=0.05):
        deadline = time.monotonic() + 5
        while read_lease(driver, PATH) is None:
            assert time.monotonic() < deadline, "the lease was never written"
            time.sleep(0.01)
    assert read_lease(driver, PATH) is None


def test_the_lease_is_removed_when_the_work_fails(driver: StorageDriver) -> None:
    with pytest.raises(RuntimeError), hold_lease(driver, PATH, "task-1"):
        raise RuntimeError("verification failed")
    assert read_lease(driver, PATH) is None


def test_no_renewal_lands_after_the_lease_is_released(driver: StorageDriver) -> None:
    # The renewal thread may be mid-write when the work ends: it finishes first, and
    # nothing is written after the removal (a stale lease would look like a dead worker).
    for _ in range(50):
        with hold_lease(driver, PATH, "task-1", renew_every=0.0005):
            time.sleep(0.002)
        time.sleep(0.003)
        assert read_lease(driver, PATH) is None


def test_leases_held_at_once_are_renewed_independently(driver: StorageDriver) -> None:
    other = "/uploads/w/verify.lease"
    with hold_lease(driver, PATH, "a", renew_every=0.01):
        with hold_lease(driver, other, "b", renew_every=0.01):
            first = read_lease(driver, other)
            time.sleep(0.1)
            later = read_lease(driver, other)
            assert first is not None
            assert later is not None
            assert later.renewed_at > first.renewed_at
        assert read_lease(driver, other) is None
        assert read_lease(driver, PATH) is not None
    assert read_lease(driver, PATH) is None


def test_the_work_goes_on_when_the_lease_cannot_be_written() -> None:
    class FullDisk(MemoryDriver):
        def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
            raise StorageUnavailable("no space left on device", {"errno": "ENOSPC"})

    ran = False
    with hold_lease(FullDisk(), PATH, "task-1", renew_every=0.01):
        time.sleep(0.05)
        ran = True
    assert ran


@given(raw=st.binary(max_size=200))
def test_any_stored_bytes_read_as_a_lease_or_as_none(raw: bytes) -> None:
    driver = MemoryDriver()
    driver.put_content(PATH, raw)
    lease = read_lease(driver, PATH)
    assert lease is None or isinstance(lease.renewed_at, float)
