"""An organism pair held in memory (``lfm.resident.ResidentPair``) plus one loaded LLaVA that merges are
written into and evaluated on (no disk writes): the organism report, the explorer and notebooks use it.

    >>> from lfm.organism import base_dir, tuned_dir
    >>> from lfm.methods import Recipe
    >>> mp = MergeablePair(base_dir(), tuned_dir())
    >>> model = mp.apply(Recipe(method="hard"))   # returns mp.model with hard-merged LM weights
    >>> model = mp.tuned()                        # the tuned weights again
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..methods import Recipe
from ..neurons import neuron_axis, neuron_scores
from ..resident import ResidentPair
from .evaluate import evaluate, load_model


class MergeablePair:
    """An organism (base, tuned) pair held in memory, plus one tuned model to load merged weights into.

    Args:
        base: the base directory, an opened ``lfm.pair.Pair``, or a ``ResidentPair`` already holding the pair.
        tuned_dir: the tuned LLaVA directory (the model and processor are loaded from it).
        device: where the pair is held and the model runs (default: a given ResidentPair's device, else cpu).
    Attributes:
        model, processor: the tuned LLaVA (its LM weights change with every ``apply``).
        resident: the ResidentPair doing the merges.
    """

    def __init__(self, base, tuned_dir: str | Path, device=None):
        if device is None:
            device = base.device if isinstance(base, ResidentPair) else "cpu"
        # the model first: a directory that is no organism fails fast
        self.model, self.processor = load_model(tuned_dir, device)
        self.resident = base if isinstance(base, ResidentPair) else ResidentPair(base, tuned_dir, progress=False,
                                                                                 device=device)
        self._lock = threading.Lock()

    def apply(self, recipe: Recipe):
        """Write the merged LM weights into ``self.model`` (in place) and return it."""
        return self.resident.apply(self.model, recipe)

    def tuned(self):
        """Put the tuned LM weights back into ``self.model`` and return it."""
        return self.resident.restore_tuned(self.model)

    def evaluate(self, recipe: Recipe | None, items: dict | None = None) -> dict:
        """``lfm.organism.evaluate.evaluate`` of ``recipe`` (None: the tuned model itself) on ``items``
        ({'language': [...], 'visual': [...]}, default all); one apply + evaluate at a time."""
        with self._lock:
            model = self.tuned() if recipe is None else self.apply(recipe)
            return evaluate((model, self.processor), items=items)

    def scores(self, shuffle_seed: int | None = None) -> dict[str, torch.Tensor]:
        """C(i) per linear-module tensor; with ``shuffle_seed``, of a delta whose entries were randomly permuted
        within the tensor (the null: same values, no neuron structure)."""
        if shuffle_seed is None:
            return dict(self.resident.scores)
        out = {}
        g = torch.Generator().manual_seed(shuffle_seed)
        for entry in self.resident.entries:
            axis = neuron_axis(entry.name)
            if axis is None:
                continue
            delta = entry.tuned.float() - entry.base.float()
            delta = delta.flatten()[torch.randperm(delta.numel(), generator=g)].view_as(delta)
            out[entry.name] = neuron_scores(delta, axis)
        return out
