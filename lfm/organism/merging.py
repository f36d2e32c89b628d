"""An organism pair plus one loaded LLaVA that merges are applied to in memory (no disk writes).

A thin pairing of ``lfm.evaluate.cache.DeltaCache`` (the pair in memory, C(i) once, each merge written into
a loaded model byte-identical to ``lfm.merge``) with the organism's own model loader and processor, for the
organism report, notebooks and tests.

    >>> from lfm.organism import base_dir, tuned_dir
    >>> from lfm.methods import Recipe
    >>> mp = MergeablePair(base_dir(), tuned_dir())
    >>> model = mp.apply(Recipe(method="hard"))   # returns mp.model with hard-merged LM weights
    >>> model = mp.tuned()                        # the tuned weights again
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..evaluate.cache import DeltaCache
from ..methods import Recipe
from ..neurons import neuron_axis, neuron_scores
from .evaluate import load_model


class MergeablePair:
    """An organism (base, tuned) pair held in memory, plus one tuned model to load merged weights into.

    Attributes:
        model, processor: the tuned LLaVA (its LM weights change with every ``apply``).
        cache: the DeltaCache doing the merges.
    """

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path):
        self.cache = DeltaCache(base_dir, tuned_dir, progress=False)
        self.model, self.processor = load_model(tuned_dir)

    def apply(self, recipe: Recipe):
        """Write the merged LM weights into ``self.model`` (in place) and return it."""
        return self.cache.apply(self.model, recipe)

    def tuned(self):
        """Put the tuned LM weights back into ``self.model`` and return it."""
        return self.cache.restore_tuned(self.model)

    def scores(self, shuffle_seed: int | None = None) -> dict[str, torch.Tensor]:
        """C(i) per linear-module tensor; with ``shuffle_seed``, of a delta whose entries were randomly permuted
        within the tensor (the null: same values, no neuron structure)."""
        if shuffle_seed is None:
            return dict(self.cache.scores)
        out = {}
        g = torch.Generator().manual_seed(shuffle_seed)
        for name, _, b, t in self.cache.entries:
            axis = neuron_axis(name)
            if axis is None:
                continue
            delta = t.float() - b.float()
            delta = delta.flatten()[torch.randperm(delta.numel(), generator=g)].view_as(delta)
            out[name] = neuron_scores(delta, axis)
        return out
