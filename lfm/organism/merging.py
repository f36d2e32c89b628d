"""Apply a merge recipe to an in-memory organism MLLM (no disk writes), for evaluation and sweeps.

The math is the engine's (``lfm.methods.merge_tensor`` on the pair aligned by ``lfm.pair.open_pair``); this
module only keeps the small organism pair in memory and loads merged language-model tensors into one
LlavaForConditionalGeneration, whose vision tower and projector stay the tuned ones.

    >>> from lfm.organism import base_dir, tuned_dir
    >>> from lfm.methods import Recipe
    >>> mp = MergeablePair(base_dir(), tuned_dir())
    >>> model = mp.apply(Recipe(method="hard"))   # returns mp.model with hard-merged LM weights
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..methods import Recipe, merge_tensor
from ..neurons import neuron_axis, neuron_scores
from ..pair import open_pair
from .evaluate import load_model


class MergeablePair:
    """An organism (base, tuned) pair held in memory, plus one tuned model to load merged weights into.

    Attributes:
        model, processor: the tuned LLaVA (its LM weights change with every ``apply``).
        tensors: [(canonical_name, model_key, base [out, in] or [n], tuned)] for every LM tensor.
    """

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path):
        pair = open_pair(base_dir, tuned_dir)
        self.model, self.processor = load_model(tuned_dir)
        sd_keys = set(self.model.state_dict())
        self.tensors = []
        for entry, base_t, tuned_t in pair.iter_lm():
            key = _model_key(entry.tuned_key, sd_keys)
            self.tensors.append((entry.name, key, base_t.float(), tuned_t.float()))

    def merged_lm(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        """{model state_dict key: merged tensor} for every LM tensor under ``recipe``."""
        return {key: merge_tensor(b, t, recipe, name=name)[0] for name, key, b, t in self.tensors}

    @torch.no_grad()
    def apply(self, recipe: Recipe):
        """Load the merged LM weights into ``self.model`` (in place) and return it."""
        merged = self.merged_lm(recipe)
        missing = self.model.load_state_dict(merged, strict=False)
        if missing.unexpected_keys:
            raise KeyError(f"merged tensors not in the model: {missing.unexpected_keys[:5]}")
        return self.model

    def scores(self, shuffle_seed: int | None = None) -> dict[str, torch.Tensor]:
        """C(i) per linear-module tensor; with ``shuffle_seed``, of a delta whose entries were randomly permuted
        within the tensor (the null: same values, no neuron structure)."""
        out = {}
        g = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
        for name, _, b, t in self.tensors:
            axis = neuron_axis(name)
            if axis is None:
                continue
            delta = t - b
            if g is not None:
                delta = delta.flatten()[torch.randperm(delta.numel(), generator=g)].view_as(delta)
            out[name] = neuron_scores(delta, axis)
        return out


def _model_key(tuned_key: str, sd_keys: set[str]) -> str:
    """The in-memory model's state_dict key for a checkpoint key (transformers may rename on load)."""
    if tuned_key in sd_keys:
        return tuned_key
    candidates = [tuned_key.replace("language_model.model.", "model.language_model.", 1),
                  tuned_key.replace("language_model.lm_head.", "lm_head.", 1)]
    for c in candidates:
        if c in sd_keys:
            return c
    raise KeyError(f"checkpoint key {tuned_key!r} has no counterpart in the loaded model's state_dict")
