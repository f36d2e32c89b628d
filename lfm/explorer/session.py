"""The threads of one browser session's page: its work runs off the page's thread, its results come back on it.

Loading a pair and evaluating merges take seconds: in a served page (`background=True`) they run on two worker
threads (one for loads and evaluations, one for the trade-off sweep), and what they produce is handed back to
the page's document on its own thread (`Document.add_next_tick_callback`, Bokeh's thread-safe entry point),
so the page never freezes. A hand-back is held until the browser has connected to the page: Panel 1.9 loses
some changes made to a document served but not yet connected (a results folder whose load finished before a
slow browser connected showed empty tables under the right item counts). With `background=False` (tests,
notebooks) everything runs inline. When the browser leaves, queued work is dropped and running work stops at
its next hand-back (`SessionClosed`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import panel as pn


class SessionClosed(BaseException):
    """Raised in a worker thread whose page's session is gone, to stop its job.

    A BaseException (like GeneratorExit) so that the jobs' `except Exception` error reporting, which
    would hand an error back to the closed page, lets it through."""


class PageSession:
    """Worker threads for one page, and the way back to it.

    Attributes:
        work, sweeps: the executors (None when not ``background``).
    """

    def __init__(self, background: bool):
        self.background = background
        self._doc = pn.state.curdoc
        self.work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfm-explorer") if background else None
        self.sweeps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfm-sweep") if background else None
        self._closed = False
        self._latest, self._latest_lock = 0, threading.Lock()
        self._session = self._doc.session_context if self._doc is not None else None  # None: no server
        # hand-backs made before the browser connected wait here (not in the worker: a page nobody opens must
        # not hold a thread, or the server's exit); None once connected (at once without a server)
        self._unconnected: list[Callable[[], None]] | None = []
        self._unconnected_lock = threading.Lock()
        if self._session is not None and background:
            self._doc.on_session_destroyed(self._destroyed)
            pn.state.onload(self._on_connected)  # Panel runs it when the browser's websocket is ready
        else:
            self._unconnected = None

    def _on_connected(self):
        with self._unconnected_lock:  # held while scheduling: a hand-back made meanwhile comes after these
            waiting, self._unconnected = self._unconnected or [], None
            for apply in waiting:
                self._doc.add_next_tick_callback(apply)

    def _destroyed(self, session_context):
        """The browser left: drop queued work; running jobs stop at their next hand-back."""
        self._closed = True
        with self._unconnected_lock:
            self._unconnected = None  # what waited for the page is dropped with it
        for pool in (self.work, self.sweeps):
            pool.shutdown(wait=False, cancel_futures=True)

    def run(self, job: Callable, *args, sweep: bool = False) -> None:
        """``job(*args)`` on a worker thread (the sweeps' own with ``sweep``), or now when not ``background``."""
        if self.background:
            (self.sweeps if sweep else self.work).submit(job, *args)
        else:
            job(*args)

    def hand_back(self, apply: Callable[[], None]) -> None:
        """Run ``apply`` on the document's thread (or now, without a document or a worker thread), once the
        browser has connected (until then it waits in a queue; the worker goes on). Raises SessionClosed when the
        page is gone."""
        if self._doc is not None and self.background and threading.current_thread() is not threading.main_thread():
            if self._closed or (self._session is not None and self._session.destroyed):
                raise SessionClosed()  # (Bokeh destroys the session before it runs the destroyed callbacks)
            with self._unconnected_lock:
                if self._unconnected is not None:
                    self._unconnected.append(apply)
                    return
                try:
                    self._doc.add_next_tick_callback(apply)
                except AttributeError as e:  # Bokeh tore the document down between the check and the call
                    raise SessionClosed() from e
        else:
            apply()

    def new_request(self) -> int:
        """A ticket for a request that replaces every earlier one (the newest setting wins)."""
        with self._latest_lock:
            self._latest += 1
            return self._latest

    def is_latest(self, ticket: int) -> bool:
        return ticket == self._latest
