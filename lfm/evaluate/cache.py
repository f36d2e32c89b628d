"""DeltaCache: a (base, tuned) pair held in memory with what every merge of a sweep reuses.

A sweep evaluates many recipes on one pair. Re-merging from disk for each point repeats work that does
not depend on the point: reading both checkpoints, the change scores C(i) (one per neuron, independent of
K and M), and the |delta| thresholds (the K-th largest |delta| of a tensor is the same for TIES at K and for
every Neuron-Fusion M at that K). DeltaCache keeps the pair's LM tensors in memory (in their stored dtype),
computes C(i) once per tensor and each threshold once per (tensor, k), and hands them to the engine's own
``lfm.methods.merge_tensor`` (``scores=``, ``sorted_abs=``), so a point is exactly ``lfm.merge``'s math
without the disk. ``apply(model, recipe)`` writes the merged LM tensors into a loaded model in place, one
tensor at a time (no second copy of the model; the vision tower and projector are left as loaded).

    >>> cache = DeltaCache("data/organism/base", "data/organism/tuned")       # doctest: +SKIP
    >>> em = load_eval_model("data/organism/tuned")                           # doctest: +SKIP
    >>> for recipe in recipes:                                                # doctest: +SKIP
    ...     cache.apply(em.model, recipe); evaluate(em, "organism")
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lfm.merge import make_recipe
from lfm.methods import Recipe, kth_largest, merge_tensor, source_of
from lfm.neurons import neuron_axis, neuron_scores
from lfm.pair import Pair, open_pair


class Thresholds:
    """The k-th largest |delta| of one tensor for the k a recipe needs: ``t[k - 1]``, as ``top_k_mask``
    reads a descending-sorted |delta|, without sorting. Filled by ``DeltaCache`` before each merge."""

    def __init__(self):
        self.values: dict[int, torch.Tensor] = {}

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            return self.values[int(index) + 1]
        except KeyError:
            raise KeyError(f"threshold for k={int(index) + 1} was not precomputed (DeltaCache.needed_ks is "
                           f"missing a case for this recipe)") from None


def needed_ks(recipe: Recipe, numel: int) -> list[int]:
    """The k values ``top_k_mask`` will ask for when merging a tensor of ``numel`` entries under ``recipe``."""
    sub = recipe.suppress if recipe.method == "neuron_fusion" else recipe.method
    n_keep = int(recipe.density * numel)
    if sub == "ties":
        ks = [n_keep]
    elif sub == "breadcrumbs":
        n_top = min(int(recipe.gamma * numel), numel - n_keep)
        ks = [n_top + n_keep, n_top]
    else:
        ks = []
    return [k for k in ks if 0 < k < numel]


class DeltaCache:
    """The LM tensors of a pair in memory + cached C(i) and |delta| thresholds.

    Attributes:
        pair: the validated Pair (lfm.pair.open_pair).
        entries: [(canonical name, tuned_key, base tensor, tuned tensor)] in checkpoint order.
        scores: {name: C [n_neurons]} for the seven linear modules (computed at construction).
    """

    def __init__(self, base, tuned=None, *, device: str = "cpu", progress: bool = True, allow_pickle: bool = False):
        self.pair: Pair = base if isinstance(base, Pair) else open_pair(base, tuned, allow_pickle=allow_pickle)
        self.device = torch.device(device)
        self.entries = []
        self.scores: dict[str, torch.Tensor] = {}
        self._thresholds: dict[str, Thresholds] = {}
        for entry, b, t in tqdm(self.pair.iter_lm(self.device), total=len(self.pair.entries), desc="caching pair",
                                unit="tensor", disable=not progress):
            self.entries.append((entry.name, entry.tuned_key, b, t))
            axis = neuron_axis(entry.name)
            if axis is not None:
                self.scores[entry.name] = neuron_scores(t.float() - b.float(), axis)
            self._thresholds[entry.name] = Thresholds()
        self._key_maps: dict[int, dict[str, str]] = {}

    def _thresholds_for(self, name: str, base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe) -> Thresholds:
        th = self._thresholds[name]
        numel = base.numel()  # shared rows only (extra vocabulary rows are not merged)
        missing = [k for k in needed_ks(recipe, numel) if k not in th.values]
        if missing:
            magnitude = (tuned[: base.shape[0]].float() - base.float()).abs().reshape(-1)
            for k in missing:
                th.values[k] = kth_largest(magnitude, k)
        return th

    def merged_tensor(self, index: int, recipe: Recipe) -> torch.Tensor:
        """The merged tensor of entry ``index`` (same bytes as ``lfm.merge`` writes for it)."""
        name, _, b, t = self.entries[index]
        sorted_abs = None
        if source_of(name, recipe) == "method":
            sorted_abs = self._thresholds_for(name, b, t, recipe)
        merged, _, _ = merge_tensor(b, t, recipe, name=name, sorted_abs=sorted_abs, scores=self.scores.get(name))
        return merged

    def merged(self, recipe: Recipe | dict | str | None = None, *, progress: bool = False, **fields) -> dict:
        """{tuned_key: merged tensor} for every LM tensor (like ``lfm.merged_state_dict`` without passthrough)."""
        recipe = make_recipe(recipe, **fields)
        return {self.entries[i][1]: self.merged_tensor(i, recipe)
                for i in tqdm(range(len(self.entries)), desc="merging", disable=not progress)}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, recipe: Recipe | dict | str | None = None, *, progress: bool = False,
              **fields) -> torch.nn.Module:
        """Copy the merged LM tensors into ``model`` (loaded from the tuned directory) in place; returns it."""
        recipe = make_recipe(recipe, **fields)
        params = self._model_tensors(model)
        for i in tqdm(range(len(self.entries)), desc="applying", disable=not progress):
            target = params[self.entries[i][1]]
            target.copy_(self.merged_tensor(i, recipe).to(target.device, target.dtype))
        return model

    @torch.no_grad()
    def restore_tuned(self, model: torch.nn.Module) -> torch.nn.Module:
        """Copy the tuned LM tensors back into ``model`` (undoes every ``apply``); returns it."""
        params = self._model_tensors(model)
        for _, key, _, t in self.entries:
            params[key].copy_(t.to(params[key].device, params[key].dtype))
        return model

    def _model_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """{tuned checkpoint key: the model's parameter/buffer tensor} (transformers may rename keys on load)."""
        state = dict(model.state_dict(keep_vars=True))
        out = {}
        for _, key, _, _ in self.entries:
            cands = [key, key.replace("language_model.model.", "model.language_model.", 1),
                     key.replace("language_model.lm_head.", "lm_head.", 1),
                     key.replace("model.language_model.", "language_model.model.", 1)]
            found = next((c for c in cands if c in state), None)
            if found is None:
                raise KeyError(f"checkpoint tensor {key!r} has no counterpart in the model's state_dict "
                               f"({type(model).__name__}); load the model from the tuned directory")
            tensor = state[found]
            out[key] = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        return out

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() + t.numel() * t.element_size() for _, _, b, t in self.entries)


def as_cache(base, tuned=None, **kw) -> DeltaCache:
    return base if isinstance(base, DeltaCache) else DeltaCache(base, tuned, **kw)


__all__ = ["DeltaCache", "Thresholds", "needed_ks", "as_cache"]

