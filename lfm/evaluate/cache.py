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
from lfm.methods import Recipe, kth_largest, merge_tensor, source_of, tensor_generator, top_k_mask
from lfm.neurons import locate, neuron_axis, neuron_scores
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


def is_fast(recipe: Recipe) -> bool:
    """Can ``DeltaCache.apply`` take the fast path for this recipe (alpha = 1, a masking method)?"""
    if recipe.alpha != 1.0:
        return False
    if recipe.method in ("ties", "breadcrumbs", "task_arithmetic", "hard"):
        return True
    return recipe.method == "neuron_fusion" and recipe.suppress in ("ties", "breadcrumbs")


class DeltaCache:
    """The LM tensors of a pair in memory + cached C(i) and |delta| thresholds.

    Attributes:
        pair: the validated Pair (lfm.pair.open_pair).
        entries: [(canonical name, tuned_key, base tensor, tuned tensor)] in checkpoint order.
        scores: {name: C [n_neurons]} for the seven linear modules (computed at construction).
    """

    def __init__(self, base, tuned=None, *, device: str = "cpu", progress: bool = True, allow_pickle: bool = False,
                 fast: bool = True):
        self.fast = fast  # apply() may use the cached-|delta| fast path (costs 4 bytes/parameter more memory)
        self._fast: dict[str, dict] = {}
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
            self._fill(name, base, tuned, missing)
        return th

    def _fill(self, name: str, base: torch.Tensor, tuned: torch.Tensor, ks: list[int]) -> None:
        """Compute the k-th largest |delta| of tensor ``name`` for every k in ``ks``.

        Each is the engine's exact bracketed selection (lfm.methods.kth_largest): a few passes over
        |delta| plus a small selection, measured faster than one multi-rank numpy partition for a
        10-point grid, and the same values the engine's top_k_mask thresholds at.
        """
        st = self._fast.get(name)
        magnitude = st["abs"].reshape(-1) if st is not None else \
            (tuned[: base.shape[0]].float() - base.float()).abs().reshape(-1)
        th = self._thresholds[name]
        for k in ks:
            th.values[k] = kth_largest(magnitude, k)

    def prepare(self, recipes, *, progress: bool = False) -> None:
        """Precompute, per tensor, every |delta| threshold ``recipes`` will need (a sweep calls it once)."""
        recipes = [make_recipe(r) for r in recipes]
        for i, (name, _, b, t) in enumerate(tqdm(self.entries, desc="thresholds", disable=not progress)):
            if self.fast and any(is_fast(r) for r in recipes) and any(source_of(name, r) == "method" for r in recipes):
                self._fast_state(i)
            wanted = {k for r in recipes if source_of(name, r) == "method" for k in needed_ks(r, b.numel())}
            missing = sorted(wanted - set(self._thresholds[name].values))
            if missing:
                self._fill(name, b, t, missing)

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
        fast = self.fast and is_fast(recipe)
        for i in tqdm(range(len(self.entries)), desc="applying", disable=not progress):
            target = params[self.entries[i][1]]
            if fast and target.dtype == self.entries[i][3].dtype and target.device == self.device:
                self._apply_fast(i, recipe, target)
            else:
                target.copy_(self.merged_tensor(i, recipe).to(target.device, target.dtype))
        return model

    # ---- fast path: masks on cached |delta|, values from cached (base, kept) -------------------------
    #
    # For alpha = 1 and the masking methods (TIES, Breadcrumbs, TaskA, hard, Neuron-Fusion over TIES or
    # Breadcrumbs) every merged entry is one of two values fixed per pair: the base weight, or
    # kept = (base_f + delta).to(dtype), what ``merge_tensor`` writes for a surviving entry. So a point is a
    # mask (a compare against a cached threshold on cached |delta|) and one ``where`` into the model;
    # only Neuron-Rescale's located neurons are recomputed, with the engine's float32 operations on those
    # rows/columns alone. Equality with ``merge_tensor`` is tested bit for bit (tests/test_sweep.py).

    def _fast_state(self, i: int):
        name, _, b, t = self.entries[i]
        st = self._fast.get(name)
        if st is None:
            n = b.shape[0]
            delta = t[:n].float() - b.float()
            kept = (b.float() + delta).to(t.dtype)
            if torch.equal(kept, t[:n]):  # the usual case (exact in bf16/fp16): no extra copy
                kept = t[:n]
            st = self._fast[name] = {"abs": delta.abs_(), "kept": kept}
        return st

    def _mask(self, i: int, recipe: Recipe, absd: torch.Tensor) -> torch.Tensor | None:
        """The engine's Sub mask for entry ``i`` (None = every entry kept)."""
        name, _, b, t = self.entries[i]
        sub = recipe.suppress if recipe.method == "neuron_fusion" else recipe.method
        if sub == "task_arithmetic":
            return None
        th = self._thresholds_for(name, b, t, recipe)
        n = absd.numel()
        n_keep = int(recipe.density * n)
        if sub == "ties":
            return top_k_mask(absd, n_keep, th)
        n_top = min(int(recipe.gamma * n), n - n_keep)  # breadcrumbs, as lfm.methods.keep_band
        return top_k_mask(absd, n_top + n_keep, th) & ~top_k_mask(absd, n_top, th)

    @torch.no_grad()
    def _apply_fast(self, i: int, recipe: Recipe, target: torch.Tensor) -> None:
        name, _, b, t = self.entries[i]
        n = b.shape[0]
        if t.shape[0] > n:
            target[n:].copy_(t[n:])  # extra vocabulary rows stay tuned
        out = target[:n]
        source = source_of(name, recipe)
        if source != "method":
            out.copy_(t[:n] if source == "tuned" else b)
            return
        st = self._fast_state(i)
        mask = self._mask(i, recipe, st["abs"])
        axis = neuron_axis(name)
        located = None
        if recipe.method == "neuron_fusion" and axis is not None and recipe.neurons > 0:
            gen = tensor_generator(recipe, name) if recipe.is_random else None
            located = locate(self.scores[name], recipe.neurons, recipe.locate, gen)
        if mask is None:
            # task arithmetic is a lerp in the engine: at alpha = 1 exactly the tuned weights
            out.copy_(t[:n] if recipe.method == "task_arithmetic" else st["kept"])
            return
        if located is None or recipe.restore == "replace":
            if located is not None:
                mask = mask | (located.view(-1, 1) if axis == 0 else located.view(1, -1))
            # the engine selects tuned/base directly for plain TIES/Breadcrumbs at alpha = 1
            kept = t[:n] if recipe.method in ("ties", "breadcrumbs") else st["kept"]
            torch.where(mask, kept, b, out=out)
            return
        # Neuron-Rescale: C'(i) as the engine computes it, then the located neurons' values recomputed
        after = st["abs"].masked_fill(~mask, 0.0).sum(dim=1 - axis)
        empty = located & (after == 0)
        rescalable = located & ~empty
        full = mask | (empty.view(-1, 1) if axis == 0 else empty.view(1, -1))
        torch.where(full, st["kept"], b, out=out)
        idx = torch.nonzero(rescalable).squeeze(1)
        if idx.numel():
            scores = self.scores[name]
            ratio = scores[idx] / after[idx]
            sel = (lambda x: x[idx]) if axis == 0 else (lambda x: x[:, idx])
            delta = sel(t[:n]).float() - sel(b).float()
            suppressed = delta.masked_fill(~sel(mask), 0.0)
            restored = suppressed * (ratio.view(-1, 1) if axis == 0 else ratio.view(1, -1))
            values = (sel(b).float() + restored).to(t.dtype)
            if axis == 0:
                out[idx] = values
            else:
                out[:, idx] = values

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


__all__ = ["DeltaCache", "Thresholds", "needed_ks", "is_fast", "as_cache"]

