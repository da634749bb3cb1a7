"""The batcher: who waits, who sends, and that every caller learns its own send's fate."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from ingest.batching import Batcher
from ingest.errors import StorageUnavailable


class Sends:
    def __init__(self, fail: bool = False) -> None:
        self.lock = threading.Lock()
        self.singles: list[int] = []
        self.batches: list[list[int]] = []
        self.fail = fail

    def one(self, entry: int) -> None:
        with self.lock:
            self.singles.append(entry)

    def many(self, entries: Sequence[int]) -> None:
        if self.fail:
            raise StorageUnavailable("broker down")
        with self.lock:
            self.batches.append(list(entries))

    def sent(self) -> list[int]:
        return sorted(self.singles + [e for b in self.batches for e in b])


def submit_together(batcher: Batcher[int], entries: list[int]) -> list[BaseException | None]:
    """Submit ``entries`` from one thread each, all at once; each thread's outcome."""
    outcomes: list[BaseException | None] = [None] * len(entries)
    start = threading.Barrier(len(entries))

    def run(i: int) -> None:
        start.wait()
        try:
            batcher.submit(entries[i])
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(entries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return outcomes


def test_a_lone_finish_is_sent_at_once_and_alone() -> None:
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=1.0, max_entries=8)
    took = []
    for entry in (1, 2):
        started = time.monotonic()
        batcher.submit(entry)
        took.append(time.monotonic() - started)
        time.sleep(1.1)  # past the window: quiet again
    assert max(took) < 0.5  # neither waited for the window
    assert (sends.singles, sends.batches) == ([1, 2], [])


def test_finishes_arriving_together_go_out_as_one_batch() -> None:
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=0.3, max_entries=32)
    batcher.submit(0)  # recent activity: the next finishes wait for company
    outcomes = submit_together(batcher, list(range(1, 9)))
    assert outcomes == [None] * 8
    assert sends.sent() == list(range(9))
    assert sends.singles[0] == 0
    # Eight near-simultaneous finishes: at most a couple of sends, not eight.
    assert len(sends.batches) + len(sends.singles) - 1 <= 2
    assert max(len(b) for b in sends.batches) >= 4


def test_a_batch_never_exceeds_its_cap_and_a_full_one_goes_without_waiting() -> None:
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=2.0, max_entries=3)
    batcher.submit(0)
    started = time.monotonic()
    outcomes = submit_together(batcher, list(range(1, 10)))
    assert outcomes == [None] * 9
    assert sends.sent() == list(range(10))  # every entry exactly once
    assert all(len(b) <= 3 for b in sends.batches)
    # Full batches leave at once; only a last, partial one may wait out the window.
    assert time.monotonic() - started < 2.0 + 1.0


def test_every_member_of_a_batch_learns_that_its_send_failed() -> None:
    sends = Sends(fail=True)
    batcher = Batcher(sends.one, sends.many, window=0.3, max_entries=32)
    batcher.submit(0)
    outcomes = submit_together(batcher, [1, 2, 3, 4])
    batched = [o for o in outcomes if o is not None]
    # Whoever went in a (failed) batch gets the error; a lone send succeeds.
    assert batched
    assert all(isinstance(o, StorageUnavailable) for o in batched)
    assert len(batched) + len(sends.singles) - 1 == 4


@pytest.mark.parametrize(("window", "cap"), [(0.0, 32), (0.3, 1)])
def test_batching_switched_off_sends_each_alone(window: float, cap: int) -> None:
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=window, max_entries=cap)
    batcher.submit(0)
    assert submit_together(batcher, [1, 2, 3]) == [None] * 3
    assert (sorted(sends.singles), sends.batches) == ([0, 1, 2, 3], [])


def test_without_company_a_finish_goes_at_once_even_right_after_another() -> None:
    # A sequential client: its previous finish committed, nobody else is waiting.
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=1.0, max_entries=8, company=lambda: False)
    started = time.monotonic()
    for entry in range(5):
        batcher.submit(entry)
    assert time.monotonic() - started < 0.5
    assert (sends.singles, sends.batches) == ([0, 1, 2, 3, 4], [])


def test_with_company_recent_finishes_wait_for_each_other() -> None:
    sends = Sends()
    batcher = Batcher(sends.one, sends.many, window=0.3, max_entries=8, company=lambda: True)
    batcher.submit(0)
    assert submit_together(batcher, [1, 2, 3, 4]) == [None] * 4
    assert sends.batches
    assert sends.sent() == [0, 1, 2, 3, 4]
