"""lfm.pipeline: read-ahead, parallel work and write-behind hold at most their byte bound, keep order, and surface errors.
Slow fake readers/writers (sleeps) make the helper thread run ahead as far as the bound lets it."""
from __future__ import annotations

import threading
import time

import pytest

from lfm.pipeline import WriteBehind, map_in_order, read_ahead

SIZES = {"a": 10, "b": 30, "c": 5, "d": 5, "e": 120, "f": 5, "g": 40, "h": 5, "i": 5, "j": 5}


class Ledger:
    """Bytes held: items read (or being read) minus the items the consumer is finished with."""

    def __init__(self):
        self.lock, self.held, self.peak, self.reads = threading.Lock(), 0, 0, []

    def read(self, key):
        with self.lock:
            self.held += SIZES[key]
            self.peak = max(self.peak, self.held)
            self.reads.append(key)
        time.sleep(0.002)
        return key.upper()

    def done(self, key):
        with self.lock:
            self.held -= SIZES[key]


@pytest.mark.parametrize("max_bytes", [1, 40, 60, 1000])
def test_read_ahead_holds_at_most_the_bound_and_keeps_order(max_bytes):
    ledger, got, ahead = Ledger(), [], 0
    for key, value in read_ahead(SIZES, ledger.read, SIZES.get, max_bytes):
        time.sleep(0.01)  # a slow merge: the reader runs ahead as far as the bound lets it
        ahead = max(ahead, len(ledger.reads) - len(got) - 1)
        got.append((key, value))
        ledger.done(key)
    assert got == [(k, k.upper()) for k in SIZES]
    # the bound, or one item alone when it is bigger
    assert ledger.peak <= max(max_bytes, max(SIZES.values()))
    if max_bytes >= 1000:
        assert ahead >= 3  # everything fits: the reader got several items ahead of the slow consumer
    if max_bytes == 1:
        assert ahead == 0  # nothing fits beside the current item: no read-ahead at all


def test_read_ahead_raises_a_read_error_at_its_item_and_stops_reading():
    def read(key):
        if key == "c":
            raise OSError(f"cannot read {key}")
        return key

    seen = []
    with pytest.raises(OSError, match="cannot read c"):
        for key, _ in read_ahead(SIZES, read, SIZES.get, 1000):
            seen.append(key)
    assert seen == ["a", "b"]


def test_read_ahead_closed_early_stops_the_reader():
    ledger = Ledger()
    items = read_ahead(SIZES, ledger.read, SIZES.get, 20)
    assert next(items) == ("a", "A")
    items.close()
    n = len(ledger.reads)
    time.sleep(0.05)
    assert len(ledger.reads) == n < len(SIZES)
    assert not [t for t in threading.enumerate() if t.name == "lfm-read-ahead"]


@pytest.mark.parametrize("max_bytes", [1, 40, 1000])
def test_write_behind_queues_at_most_the_bound_in_order(max_bytes):
    lock, pending, peak, written = threading.Lock(), [0], [0], []

    def write(key, value):
        time.sleep(0.005)  # a slow disk
        with lock:
            written.append((key, value))
            pending[0] -= SIZES[key]

    with WriteBehind(write, max_bytes) as writer:
        for key in SIZES:
            writer.submit(key, key.upper(), SIZES[key])
            with lock:
                pending[0] += SIZES[key]
                peak[0] = max(peak[0], pending[0])
    assert written == [(k, k.upper()) for k in SIZES]
    assert peak[0] <= max(max_bytes, max(SIZES.values()))
    if max_bytes >= 1000:
        assert peak[0] > max(SIZES.values())  # the queue did fill: the bound was what held it


def test_write_behind_error_reaches_the_caller_and_later_writes_are_skipped():
    written = []

    def write(key, value):
        if key == "b":
            raise OSError(28, "No space left on device")
        written.append(key)

    with pytest.raises(OSError, match="No space"):
        with WriteBehind(write, 1) as writer:
            for key in SIZES:
                writer.submit(key, None, SIZES[key])
    assert written == ["a"]


def test_write_behind_drops_the_queue_when_the_caller_fails():
    written = []

    def write(key, value):
        time.sleep(0.2)  # "a" may be under way when the caller fails
        written.append(key)

    with pytest.raises(ValueError, match="merge failed"):
        with WriteBehind(write, 1000) as writer:
            for key in "abc":
                writer.submit(key, None, 1)
            raise ValueError("merge failed")
    assert written in ([], ["a"])  # a write already under way finishes; the queued ones are dropped


class Workbench:
    """Items being worked on at once, and their bytes: the most of both, and who ran alone."""

    def __init__(self):
        self.lock, self.running, self.bytes, self.peak, self.peak_bytes = threading.Lock(), 0, 0, 0, 0
        self.alone, self.overlapped_alone = [], []

    def work(self, key, alone):
        with self.lock:
            self.running += 1
            self.bytes += SIZES[key]
            self.peak, self.peak_bytes = max(self.peak, self.running), max(self.peak_bytes, self.bytes)
            if alone:
                self.alone.append(key)
        time.sleep(0.003 if key in "bdg" else 0.001)  # uneven work: later items finish first
        with self.lock:
            if alone and self.running > 1:
                self.overlapped_alone.append(key)
            self.running -= 1
            self.bytes -= SIZES[key]
        return key.upper()


@pytest.mark.parametrize("max_bytes, workers", [(1, 2), (40, 2), (60, 3), (1000, 4), (1000, 1)])
def test_map_in_order_bounds_work_and_bytes_and_keeps_order(max_bytes, workers):
    bench = Workbench()
    got = list(map_in_order(bench.work, SIZES, SIZES.get, max_bytes, workers))
    assert got == [k.upper() for k in SIZES]
    assert bench.peak <= workers and not bench.overlapped_alone
    too_big = [k for k, n in SIZES.items() if n > max_bytes]
    if workers > 1:
        assert bench.alone == too_big  # exactly the items over the bound ran alone ...
        assert bench.peak_bytes <= max(max_bytes, max(SIZES.values()))  # ... and the others within it
    else:
        assert bench.alone == list(SIZES) and bench.peak == 1  # one worker: every item alone, in the caller


def test_map_in_order_raises_at_the_failed_item_and_starts_no_later_one():
    started = []

    def work(key, alone):
        started.append(key)
        if key == "c":
            raise OSError("disk gone")
        time.sleep(0.002)
        return key

    results = map_in_order(work, SIZES, SIZES.get, 1000, 2)
    assert [next(results), next(results)] == ["a", "b"]
    with pytest.raises(OSError, match="disk gone"):
        next(results)
    time.sleep(0.02)
    assert set(started) <= {"a", "b", "c", "d"}  # at most the ones already handed to the two workers


def test_map_in_order_runs_items_at_once():
    """'a' finishes only once 'b' has started: one worker at a time would wait forever (here: 5 s)."""
    b_started = threading.Event()

    def work(key, alone):
        if key == "b":
            b_started.set()
        return key, key != "a" or b_started.wait(timeout=5)

    assert list(map_in_order(work, ["a", "b", "c"], len, 10, 2)) == [("a", True), ("b", True), ("c", True)]
