"""Stopping an evaluation nobody waits for any more.

The explorer evaluates a recipe per slider move; when the user moves again, the running evaluation's numbers
are no longer wanted, and on a real pair it would hold the one loaded model for seconds more (a key press then
waits for the last move's work to finish). So the explorer's worker runs its evaluation inside
``cancel_when(stale)``, and a model that ``watch`` was called on checks ``stale()`` at the start of every
forward pass (every generated token, every batch of continuations) and of every layer in it (one forward of a
batch of 32 items takes over a second on a real pair): once stale, the model raises ``Superseded``.
``ResidentPair.apply`` checks between two tensors (a merge into the model takes a second or two on a real pair).

Nothing else changes: a thread that never entered ``cancel_when`` (``lfm eval``, ``lfm sweep``, the tests) runs
every forward pass as before, and an evaluation is either finished or raises (nothing half-done is cached: the
callers cache a result only once it returns).

    >>> import torch
    >>> model = watch(torch.nn.Embedding(4, 2))
    >>> with cancel_when(lambda: True):
    ...     model(torch.tensor([1]))
    Traceback (most recent call last):
    ...
    lfm.cancel.Superseded: a newer request replaced this evaluation
    >>> model(torch.tensor([1])).shape  # outside cancel_when: never stopped
    torch.Size([1, 2])
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Callable

_local = threading.local()  # per thread: the explorer's worker, not the sweep thread or the page's thread


class Superseded(BaseException):
    """Raised in a forward pass whose evaluation became stale (``cancel_when``).

    A BaseException, like KeyboardInterrupt: the harnesses' and the jobs' ``except Exception`` handlers would
    report it as an error; only the code that asked for cancelling catches it."""

    def __init__(self):
        super().__init__("a newer request replaced this evaluation")


@contextmanager
def cancel_when(stale: Callable[[], bool]):
    """Within this block, on this thread, a watched model's forward pass raises ``Superseded`` once ``stale()``."""
    previous = getattr(_local, "stale", None)
    _local.stale = stale
    try:
        yield
    finally:
        _local.stale = previous


def check() -> None:
    """Raise ``Superseded`` when this thread's evaluation is stale (``cancel_when``); else nothing."""
    stale = getattr(_local, "stale", None)
    if stale is not None and stale():
        raise Superseded()


def watch(model):
    """Make ``model`` (a torch module) check ``cancel_when`` at the start of each forward pass and of each of its
    layers; returns it.

    The hooks sit on the input embeddings, which every forward of a transformers model goes through once (an
    MLLM's text and visual paths, the language model called alone, each generation step), and on every element
    of a ``layers`` list (the decoder's and the vision tower's blocks); on the module itself when it has
    neither. Watching twice adds no hook."""
    get = getattr(model, "get_input_embeddings", None)
    targets = [get()] if callable(get) else []
    targets += [m for name, m in model.named_modules() if re.search(r"(^|\.)layers\.\d+$", name)]
    for target in targets or [model]:
        if not getattr(target, "_lfm_cancel_watched", False):
            target.register_forward_pre_hook(lambda module, args: check())
            target._lfm_cancel_watched = True
    return model
