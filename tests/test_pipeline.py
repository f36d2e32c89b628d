"""lfm.pipeline: read-ahead and write-behind hold at most their byte bound, keep order, and surface errors.
Slow fake readers/writers (sleeps) make the helper thread run ahead as far as the bound lets it."""
from __future__ import annotations

import threading
import time

import pytest

from lfm.pipeline import WriteBehind, read_ahead

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
