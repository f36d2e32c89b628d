"""Bounded read-ahead, parallel work and write-behind: helper threads that overlap disk I/O and the merges
of several tensors while holding at most a given number of bytes (file reads and writes, torch and numpy
operations release the GIL, so the threads run alongside).

    read_ahead(keys, read, size_of, max_bytes)             yields (key, read(key)) in order
    map_in_order(work, items, size_of, max_bytes, workers) yields work(item, alone) in order
    WriteBehind(write, max_bytes)                          .submit(key, value, nbytes) ... .close()

Both bound bytes, not items: one 2 GB embedding counts as much as a hundred 20 MB weights. An item bigger
than the bound is still handled, alone. Errors on a helper thread are raised in the caller.

    >>> list(read_ahead(["a", "bb"], str.upper, len, max_bytes=2))
    [('a', 'A'), ('bb', 'BB')]
    >>> list(map_in_order(lambda word, alone: (word, alone), ["a", "bb", "cccc"], len, max_bytes=3, workers=2))
    [('a', False), ('bb', False), ('cccc', True)]
    >>> done = []
    >>> with WriteBehind(lambda key, value: done.append(key), max_bytes=10) as writer:
    ...     writer.submit("x", None, 4); writer.submit("y", None, 20)
    >>> done
    ['x', 'y']
"""

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor


def read_ahead(keys, read, size_of, max_bytes: int):
    """Yield (key, read(key)) for every key, in order, reading on a helper thread ahead of the caller.

    The bytes held (``size_of(key)`` summed over the item the caller holds, the items read and waiting,
    and the one being read) stay within ``max_bytes``; the next item is read before the caller is done
    with the current one only when both fit. The caller's item counts until it asks for the next one.
    """
    keys = list(keys)
    cond = threading.Condition()
    ready = deque()  # (key, value, nbytes, error)
    state = {"held": 0, "stop": False}

    def reader():
        for key in keys:
            n = size_of(key)
            with cond:
                while not state["stop"] and state["held"] and state["held"] + n > max_bytes:
                    cond.wait()
                if state["stop"]:
                    return
                state["held"] += n  # counted before the read, so the bound holds while reading
            try:
                item = (key, read(key), n, None)
            except BaseException as e:  # raised in the caller, who named nothing wrong yet
                item = (key, None, n, e)
            failed = item[3] is not None
            with cond:
                ready.append(item)
                cond.notify_all()
            item = None  # only the queue holds the value now
            if failed:
                return

    thread = threading.Thread(target=reader, name="lfm-read-ahead", daemon=True)
    thread.start()
    taken = 0
    try:
        for _ in keys:
            with cond:
                state["held"] -= taken
                cond.notify_all()
                while not ready:
                    cond.wait()
                key, value, taken, error = ready.popleft()
            if error is not None:
                raise error
            yield key, value
            value = None  # the caller's reference is the only one left
    finally:
        with cond:
            state["stop"] = True
            ready.clear()
            cond.notify_all()
        thread.join()


def map_in_order(work, items, size_of, max_bytes: int, workers: int):
    """Yield ``work(item, alone)`` for every item, in order, running up to ``workers`` items at once on helper
    threads while the items being worked on add up to at most ``max_bytes`` (``size_of(item)``). An item
    bigger than that runs alone, after the others finish and before the next starts: then ``alone`` is
    True (the work may use every core itself). An error in the work is raised at its item; items not
    started yet are then dropped (the caller's iterator is not read further).
    """
    if workers <= 1:
        for item in items:
            yield work(item, True)
        return
    pending = deque()  # (future, nbytes), in order
    with ThreadPoolExecutor(workers, thread_name_prefix="lfm-work") as pool:
        try:
            running = 0
            for item in items:
                n = size_of(item)
                alone = n > max_bytes
                while pending and (alone or len(pending) >= workers or running + n > max_bytes):
                    future, done_bytes = pending.popleft()
                    running -= done_bytes
                    yield future.result()
                if alone:  # nothing runs beside it: run it here
                    result, item = work(item, True), None
                    yield result
                    continue
                pending.append((pool.submit(work, item, False), n))
                running += n
                item = None  # only the work holds it now
            while pending:
                yield pending.popleft()[0].result()
        finally:
            for future, _ in pending:  # closed early or failed: what has not started, never starts
                future.cancel()


class WriteBehind:
    """Run ``write(key, value)`` on a helper thread, in submission order, with at most ``max_bytes`` of
    submitted values not yet written (one value bigger than that is written alone: ``submit`` waits until
    the queue is empty). The first error of a write is raised by the next ``submit`` or by ``close``;
    leaving the ``with`` block on an error drops what was not written yet."""

    def __init__(self, write, max_bytes: int):
        self.write, self.max_bytes = write, max_bytes
        self.cond = threading.Condition()
        self.queue = deque()  # (key, value, nbytes)
        self.queued_bytes = 0  # in the queue or being written
        self.error = None
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="lfm-write-behind", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                key, value, n = self.queue[0]
            try:
                if self.error is None:
                    self.write(key, value)
            except BaseException as e:
                self.error = e
            with self.cond:
                self.queue.popleft()
                self.queued_bytes -= n
                self.cond.notify_all()
            del value

    def submit(self, key, value, nbytes: int) -> None:
        with self.cond:
            while self.queue and self.queued_bytes + nbytes > self.max_bytes and self.error is None:
                self.cond.wait()
            self._raise()
            self.queue.append((key, value, nbytes))
            self.queued_bytes += nbytes
            self.cond.notify_all()

    def close(self) -> None:
        """Wait until everything submitted is written; raise the first write error."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join()
        self._raise()

    def _raise(self):
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.close()
            return
        with self.cond:  # the caller failed: what is queued is dropped (a write under way finishes)
            self.error = self.error or error
            self.closing = True
            self.cond.notify_all()
        self.thread.join()
