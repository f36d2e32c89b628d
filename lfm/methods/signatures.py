"""The signatures of a method's functions (Sub, F and the top-k counts of a Sub), and how a registry row names a
function without importing it ('module:function', imported at its first call: reading the registry imports no
torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Generator, Tensor

    from lfm.methods.recipe import Recipe


class Sub(Protocol):
    """Which entries of delta survive: (mask [delta's shape] bool, or None for every entry; keep probabilities
    [delta's shape] or None). ``sorted_abs``: thresholds of |delta| to look up (``top_k_mask``), or None."""

    def __call__(self, delta: Tensor, recipe: Recipe, generator: Generator | None = None,
                 sorted_abs=None) -> tuple[Tensor | None, Tensor | None]: ...


class F(Protocol):
    """How the survivors are scaled back: (new delta [delta's shape], located neurons restored by replace
    because nothing of them survived Sub). ``located``: [n_neurons] bool along the neuron ``axis`` (Neuron-
    Locate, for a neuron-restoring row); ``scores``: C(i) of delta when the caller has it."""

    def __call__(self, delta: Tensor, mask: Tensor | None, keep_prob: Tensor | None, recipe: Recipe,
                 located: Tensor | None = None, axis: int | None = None,
                 scores: Tensor | None = None) -> tuple[Tensor, int]: ...


class TopK(Protocol):
    """The k of the top-|delta| sets a Sub is made of, for a tensor of ``numel`` entries: (k,) = the k largest;
    (k, j) = the k largest but the j largest."""

    def __call__(self, recipe: Recipe, numel: int) -> tuple[int, ...]: ...


class FunctionRef:
    """A function named 'module:function', imported at its first call (so reading a row imports no torch)."""

    def __init__(self, path: str):
        self.path, self._function = path, None

    def resolve(self) -> Callable:
        if self._function is None:
            module, _, name = self.path.partition(":")
            try:
                self._function = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"method function {self.path!r} cannot be imported ({e}); fix the method's "
                                 f"registration (a 'module:function' path)") from e
        return self._function

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other):  # the function it names: a row compares equal to one holding the function
        return self.resolve() == (other.resolve() if isinstance(other, FunctionRef) else other)

    def __hash__(self):
        return hash(self.path)

    def __repr__(self):
        return f"FunctionRef({self.path!r})"
