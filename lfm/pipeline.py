"""Bounded read-ahead, parallel work and write-behind: helper threads that overlap disk I/O and the merges
of several tensors while holding at most a given number of bytes (file reads and writes, torch and numpy
operations release the GIL, so the threads run alongside).

    read_ahead(keys, read, size_of, max_bytes)             yields (key, read(key)) in order
    map_in_order(work, items, size_of, max_bytes, workers) yields work(item, alone) in order
    WriteBehind(write, max_bytes)                          .submit(key, value, nbytes) ... .close()

Both bound bytes, not items: one 2 GB embedding counts as much as a hundred 20 MB weights. An item bigger
than the bound is still handled, alone. Errors on a helper thread are raised in the caller.

Every helper is stopped and joined when its user is done (or fails, or is interrupted), and ``stop_all``
stops any still running (the `lfm` command calls it before it exits; it also runs at interpreter exit):
a helper thread left inside a torch call while the interpreter exits is ended there by CPython
(pthread_exit), and the C++ below it aborts the process ("terminate called without an active exception").
A signal can land while a helper is being set up (between creating its thread and the ``try`` that would
stop it), so each helper registers its stop function before its thread starts.

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

import atexit
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

_RUNNING = set()  # the stop functions of the helpers whose threads may still run


def stop_all() -> None:
    """Stop every helper thread still running (what was not read, merged or written yet is dropped) and wait
    for each to finish the call it is in. For the end of a process: a stopped helper's user gets nothing more."""
    for stop in list(_RUNNING):
        stop()


atexit.register(stop_all)  # atexit runs before CPython ends the daemon threads that are still running


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

    def stop():
        with cond:
            state["stop"] = True
            ready.clear()
            cond.notify_all()
        if thread.is_alive():  # not yet alive: it sees "stop" before its first read
            thread.join()
        _RUNNING.discard(stop)

    thread = threading.Thread(target=reader, name="lfm-read-ahead", daemon=True)
    _RUNNING.add(stop)
    taken = 0
    try:
        thread.start()
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
        stop()


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
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lfm-work")

    def stop():  # closed early or failed: what has not started, never starts; what runs, finishes
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        _RUNNING.discard(stop)

    _RUNNING.add(stop)
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
        stop()


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
        self.dropping = False  # the caller failed: what is queued is not written
        self.thread = threading.Thread(target=self._run, name="lfm-write-behind", daemon=True)
        _RUNNING.add(self.stop)
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
                if self.error is None and not self.dropping:
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
            while self.queue and self.queued_bytes + nbytes > self.max_bytes and self.error is None \
                    and not self.dropping:
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
        _RUNNING.discard(self.stop)
        self._raise()

    def stop(self) -> None:
        """Drop what is queued, wait for a write under way to finish."""
        with self.cond:
            self.dropping = self.closing = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join()
        _RUNNING.discard(self.stop)

    def _raise(self):
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.close()
        else:  # the caller failed: what is queued is dropped (a write under way finishes)
            self.stop()
