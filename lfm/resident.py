"""ResidentPair: a (base, tuned) pair held in memory; any recipe written into a loaded model with the bytes
``lfm merge`` writes, and the per-neuron view of any one tensor under any recipe.

This is lfm's one in-memory merge engine: the explorer, the organism report, notebooks, sweeps and stage
comparisons all use it. What it reuses across recipes: reading both checkpoints (the LM tensors are mapped
into memory once, read-only views of the files, ``Checkpoint.map``; copied to the GPU with ``device="cuda"``),
the change scores C(i) (one per neuron, independent of K and M), and the |delta| ranking (the top-K set of
a tensor is the same for TIES at K and for every Neuron-Fusion M at that K): a 2-byte order key of |delta|
per entry (``lfm.topk.order_key``) from which every top-K set a grid needs is read off one histogram
(``lfm.topk.top_k_sets``, ``prepare``).

``apply(model, recipe)`` writes the merged LM tensors into a loaded model in place, one tensor at a time (no
second copy of the model; the vision tower and projector are left as loaded): for alpha = 1 masking recipes
one compare pass over the key and a branch-free select; otherwise ``lfm.methods.merge_tensor`` with the
cached C(i) and thresholds. Either way the bytes are exactly what ``lfm.merge`` writes (tested bit for bit).
``view(name, recipe)`` is the explorer's picture of one tensor (C(i), C'(i), located neurons, kept
fraction), computed on demand. The memory it needs is checked before anything is read.

    >>> from lfm.organism import base_dir, tuned_dir
    >>> from lfm.organism.evaluate import load_model
    >>> pair = ResidentPair(base_dir(), tuned_dir(), progress=False)
    >>> model, processor = load_model(tuned_dir())
    >>> model = pair.apply(model, "neu-s-ties", density=0.2, neurons=0.3)    # merged LM weights, in place
    >>> view = pair.view("model.layers.0.mlp.up_proj.weight", "ties")
    >>> round(view.kept_fraction, 3)
    0.2
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from lfm.cancel import check as check_cancelled
from lfm.device import gib, resolve_device
from lfm.kernels import select
from lfm.memory import check_fits
from lfm.methods.math import (along, final_scores, rescale_ratio, suppressed_delta, tensor_generator,
                              top_k_counts)
from lfm.methods.recipe import Recipe, make_recipe
from lfm.methods.registry import METHODS, alpha_is_the_suppression, rows_of
from lfm.methods.select import kth_largest
from lfm.methods.tensor import merge_tensor, source_of
from lfm.neurons import locate, neuron_axis, neuron_scores, neuron_sums
from lfm.pair import Pair, open_pair
from lfm.topk import KEY_BLOCK, OrderKey, TopK, order_key_blocks, top_k_sets


class Thresholds:
    """The k-th largest |delta| of one tensor for the k a recipe needs: ``t[k - 1]``, as ``top_k_mask``
    reads a descending-sorted |delta|, without sorting. Filled by ``ResidentPair`` before each merge."""

    def __init__(self):
        self.values: dict[int, torch.Tensor] = {}

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            return self.values[int(index) + 1]
        except KeyError:
            raise KeyError(f"threshold for k={int(index) + 1} was not precomputed (resident.needed_ks is "
                           f"missing a case for this recipe)") from None


def needed_ks(recipe: Recipe, numel: int) -> list[int]:
    """The k values ``top_k_mask`` will look up when merging a tensor of ``numel`` entries under ``recipe``
    (``top_k_counts`` without the trivial k = 0 and k = numel)."""
    return [k for k in top_k_counts(recipe, numel) if 0 < k < numel]


def from_masks(recipe: Recipe) -> bool:
    """Whether every row the recipe runs is written from cached top-k masks (its rows' ``fast_in_memory``)."""
    return all(row.fast_in_memory for row in rows_of(recipe))


def is_fast(recipe: Recipe) -> bool:
    """Can ``ResidentPair.apply`` take the fast path for this recipe (alpha = 1, a masking method)?"""
    return recipe.alpha == 1.0 and from_masks(recipe)


class Entry(NamedTuple):
    """One LM tensor of the pair, held in memory."""

    name: str  # canonical name (lfm.pair)
    tuned_key: str  # its key in the tuned checkpoint (and the model's state_dict, up to transformers' renames)
    base: torch.Tensor  # [n_base, ...] as stored
    tuned: torch.Tensor  # [n_tuned, ...]; n_tuned > n_base only for extra vocabulary rows


class _Scratch:
    """Float32 work memory reused for every tensor's |delta|: one buffer as large as the largest linear
    module (whose C(i) needs its whole |delta|) and one block. Fresh memory is the expensive part of
    holding a pair (every new page costs a fault; on a VM, a host allocation), so embeddings and
    lm_head are done block by block instead of in a buffer of their size. Both operands are widened
    before subtracting: measured ~10x faster than ``f32.sub_(bf16)``."""

    def __init__(self, device):
        self.device = device
        self.full = torch.empty(0, device=device)
        self.block = torch.empty(KEY_BLOCK, device=device)
        self.widened = torch.empty(KEY_BLOCK, device=device)

    def abs_delta(self, base: torch.Tensor, tuned: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """|tuned - base| in float32 (the engine's values), times ``mask`` (bool, same shape) if given, in the
        scratch buffer, shaped like base."""
        n = base.numel()
        if self.full.numel() < n:
            self.full = None
            self.full = torch.empty(n, device=self.device)
        out = self.full[:n]
        base_flat, tuned_flat = base.reshape(-1), tuned.reshape(-1)
        mask_bytes = None if mask is None else mask.reshape(-1).view(torch.uint8)  # * uint8: ~3x * bool
        for start in range(0, n, KEY_BLOCK):
            stop = min(start + KEY_BLOCK, n)
            block = self.abs_delta_block(base_flat, tuned_flat, start, stop, out=out[start:stop])
            if mask_bytes is not None:
                block.mul_(mask_bytes[start:stop])
        return out.view(base.shape)

    def abs_delta_block(self, base_flat, tuned_flat, start: int, stop: int, out=None) -> torch.Tensor:
        """|tuned - base| of flat entries [start, stop) (at most KEY_BLOCK), in ``out`` or the block buffer."""
        out = self.block[: stop - start] if out is None else out
        widened = self.widened[: stop - start]
        out.copy_(tuned_flat[start:stop])
        widened.copy_(base_flat[start:stop])
        return out.sub_(widened).abs_()

    def widened_rows(self, base: torch.Tensor, tuned: torch.Tensor):
        """Yield (first row, last row + 1, tuned rows, base rows) over [rows, cols] tensors, about KEY_BLOCK
        entries at a time, both blocks widened to float32 in scratch memory (the caller may overwrite them)."""
        rows, cols = base.shape
        per_block = max(1, KEY_BLOCK // max(cols, 1))
        if self.block.numel() < per_block * cols:
            self.block = torch.empty(per_block * cols, device=self.device)
            self.widened = torch.empty(per_block * cols, device=self.device)
        for r0 in range(0, rows, per_block):
            r1 = min(r0 + per_block, rows)
            size = (r1 - r0) * cols
            tuned_f, base_f = self.block[:size].view(r1 - r0, cols), self.widened[:size].view(r1 - r0, cols)
            tuned_f.copy_(tuned[r0:r1])
            base_f.copy_(base[r0:r1])
            yield r0, r1, tuned_f, base_f

    def largest(self, base_flat, tuned_flat) -> float:
        """max |tuned - base| (NaN/Inf propagate), block by block."""
        n, largest = base_flat.numel(), 0.0
        for start in range(0, n, KEY_BLOCK):
            block_max = float(self.abs_delta_block(base_flat, tuned_flat, start, min(start + KEY_BLOCK, n)).max())
            if not math.isfinite(block_max):
                return block_max
            largest = max(largest, block_max)
        return largest


def one_at_a_time(method):
    """Serialize a ResidentPair method: its scratch buffers and lazily filled top-K caches are shared, and one
    opened pair may serve several explorer sessions (threads) at once."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class ResidentPair:
    """The LM tensors of a pair in memory + cached C(i), |delta| order keys and top-k sets.

    Args:
        base: the base model directory, or an opened ``Pair`` (then ``tuned`` is not given).
        tuned: the tuned model directory.
        device: where the tensors and the work live ('cpu', 'cuda', 'cuda:1', 'auto').
        progress: a tqdm bar (True), none (False), or a callable (done, total, message).
        fast: keep a 2-byte order key per parameter (fast top-k sets for apply and view).
        model_device: where the model ``apply`` writes into will run (counted by the memory check: the model
            itself on this device, a staging tensor on another; None: no model).
    Attributes:
        pair: the validated Pair (lfm.pair.open_pair).
        entries: [Entry(name, tuned_key, base, tuned)] in checkpoint order.
        scores: {name: C [n_neurons]} for the seven linear modules (computed at construction).
        names: the names of ``scores`` (the tensors ``view`` draws), in checkpoint order.
    Raises:
        MemoryError before reading anything when the device lacks the memory (``memory_needed``).
    """

    def __init__(self, base, tuned=None, *, device: str | torch.device = "cpu", progress=True,
                 allow_pickle: bool = False, fast: bool = True, model_device=None):
        self.fast = fast  # apply() may use the fast path (costs a 2-byte order key per parameter)
        self._lock = threading.RLock()
        self.pair: Pair = base if isinstance(base, Pair) else open_pair(base, tuned, allow_pickle=allow_pickle)
        self.device = resolve_device(device)
        check_memory(self.pair, self.device, fast, model_device)
        self.entries: list[Entry] = []
        self.scores: dict[str, torch.Tensor] = {}
        self._keys: dict[str, OrderKey] = {}  # {name: lfm.topk.order_key of |delta|} (fast path)
        self._non_finite: set[str] = set()  # tensors whose delta has NaN/Inf: the engine's error when merged
        self._tops: dict[str, dict[int, TopK]] = {}
        self._kept: dict[str, torch.Tensor] = {}
        self._dropped: dict[str, torch.Tensor] = {}
        self._stage: dict[torch.dtype, torch.Tensor] = {}  # apply() into a model on another device
        self._owned: set[int] = set()  # data_ptr of model parameters given private memory (_own_storage)
        self._thresholds: dict[str, Thresholds] = {}
        self._suppressed: dict[tuple, tuple[torch.Tensor, float]] = {}  # (name, Sub, ks) -> (C'(i), kept fraction)
        work = _Scratch(self.device)
        report = progress if callable(progress) else None  # (done, total, message), e.g. the explorer's bar
        total = len(self.pair.entries)
        for entry, b, t in tqdm(self.pair.iter_lm(self.device, mapped=True), total=total, desc="caching pair",
                                unit="tensor", disable=not progress or report is not None):
            if report is not None:
                report(len(self.entries), total, f"reading {entry.name}")
            self.entries.append(Entry(entry.name, entry.tuned_key, b, t))
            n = b.shape[0]
            axis = neuron_axis(entry.name)
            if axis is not None:
                # C(i) = neuron_scores' formula on the engine's float32 |delta|, reduced over the whole tensor
                # exactly as the engine does; the order key comes from the same |delta|
                abs_delta = work.abs_delta(b, t[:n])
                largest = float(abs_delta.max()) if abs_delta.numel() else 0.0  # NaN and Inf propagate
                self.scores[entry.name] = neuron_sums(abs_delta, axis)
                flat = abs_delta.reshape(-1)
                key_blocks = lambda start, stop: flat[start:stop]  # noqa: E731 (used at once, below)
            else:
                # no C(i): |delta| block by block, computed twice (for the max, then for the key) rather
                # than held in a buffer of the embeddings' size, the largest tensors
                base_flat, tuned_flat = b.reshape(-1), t[:n].reshape(-1)
                largest = work.largest(base_flat, tuned_flat)
                key_blocks = lambda start, stop: work.abs_delta_block(base_flat, tuned_flat, start, stop)  # noqa: E731
            if not math.isfinite(largest):
                self._non_finite.add(entry.name)
            elif fast:
                self._keys[entry.name] = order_key_blocks(key_blocks, b.numel(), largest, b.device)
            self._tops[entry.name] = {}
            self._thresholds[entry.name] = Thresholds()
        self._work = work  # kept for apply (its large buffer is the largest linear module's size)
        self.names = list(self.scores)
        self._index = {e.name: i for i, e in enumerate(self.entries)}

    def _exact_abs(self, i: int):
        """flat indices -> |delta| float32 at those entries of entry ``i`` (the engine's values)."""
        b, t = self.entries[i].base, self.entries[i].tuned
        base, tuned = b.reshape(-1), t[: b.shape[0]].reshape(-1)
        return lambda index: (tuned[index].float() - base[index]).abs_()

    def _fill(self, i: int, ks: list[int]) -> None:
        """Compute the top-k set and threshold of entry ``i`` for every k in ``ks`` (0 < k < numel)."""
        entry = self.entries[i]
        name, b, t = entry.name, entry.base, entry.tuned
        thresholds = self._thresholds[name]
        if name in self._keys:
            for k, (top, threshold) in top_k_sets(self._keys[name], self._exact_abs(i), ks).items():
                self._tops[name][k], thresholds.values[k] = top, threshold
            return
        # no key (fast=False): the engine's exact bracketed selection on a recomputed |delta|
        magnitude = (t[: b.shape[0]].float() - b).abs_().reshape(-1)
        for k in ks:
            thresholds.values[k] = kth_largest(magnitude, k)

    def _ensure(self, i: int, recipes) -> None:
        name, numel = self.entries[i].name, self.entries[i].base.numel()
        self._ensure_ks(i, {k for r in recipes if source_of(name, r) == "method" for k in needed_ks(r, numel)})

    def _ensure_ks(self, i: int, wanted: set[int]) -> None:
        name = self.entries[i].name
        done = self._tops[name] if name in self._keys else self._thresholds[name].values
        missing = sorted(wanted - set(done))
        if missing:
            self._fill(i, missing)

    @one_at_a_time
    def prepare(self, recipes, *, progress: bool = False) -> None:
        """Precompute, per tensor, every top-k set ``recipes`` will need, all ks of a tensor in one go
        (a sweep calls it once)."""
        recipes = [make_recipe(r) for r in recipes]
        for i in tqdm(range(len(self.entries)), desc="thresholds", disable=not progress):
            self._ensure(i, recipes)

    @one_at_a_time
    def merged_tensor(self, index: int, recipe: Recipe) -> torch.Tensor:
        """The merged tensor of entry ``index`` (same bytes as ``lfm.merge`` writes for it)."""
        entry = self.entries[index]
        name, b, t = entry.name, entry.base, entry.tuned
        sorted_abs = None
        if source_of(name, recipe) == "method":
            self._ensure(index, [recipe])
            sorted_abs = self._thresholds[name]
        merged, _, _ = merge_tensor(b, t, recipe, name=name, sorted_abs=sorted_abs, scores=self.scores.get(name))
        if merged.data_ptr() in (b.data_ptr(), t.data_ptr()):
            merged = merged.clone()  # the engine passed an input through: a read-only view of the mapped file
        return merged

    @one_at_a_time
    def merged(self, recipe: Recipe | dict | str | None = None, *, progress: bool = False, **fields) -> dict:
        """{tuned_key: merged tensor} for every LM tensor (like ``lfm.merged_state_dict`` without passthrough)."""
        recipe = make_recipe(recipe, **fields)
        return {self.entries[i].tuned_key: self.merged_tensor(i, recipe)
                for i in tqdm(range(len(self.entries)), desc="merging", disable=not progress)}

    @torch.no_grad()
    @one_at_a_time
    def apply(self, model: torch.nn.Module, recipe: Recipe | dict | str | None = None, *, progress: bool = False,
              **fields) -> torch.nn.Module:
        """Copy the merged LM tensors into ``model`` (loaded from the tuned directory) in place; returns it.

        The model may live on another device than the pair (e.g. the pair on CPU, memory-mapped, and the
        model on a GPU): each tensor is then merged into a reused staging tensor and copied over.

        A caller's ``lfm.cancel.cancel_when`` stops it between two tensors (``Superseded``): the model then holds
        some tensors of this recipe and some of the last, which only a caller that re-applies before its next use
        may allow (``PointRunner`` forgets what the model holds before it applies).
        """
        recipe = make_recipe(recipe, **fields)
        self._own_storage(model)
        params = self._model_tensors(model)
        fast = self.fast and is_fast(recipe)
        for i in tqdm(range(len(self.entries)), desc="applying", disable=not progress):
            check_cancelled()
            entry = self.entries[i]
            name, t, target = entry.name, entry.tuned, params[entry.tuned_key]
            if not (fast and target.dtype == t.dtype and name not in self._non_finite):
                target.copy_(self.merged_tensor(i, recipe).to(target.device, target.dtype))
            elif target.device == self.device:  # both resolved: 'cuda:0' (resolve_device), as parameters report it
                self._apply_fast(i, recipe, target)
            else:
                staging = self._staging(t)
                self._apply_fast(i, recipe, staging)
                target.copy_(staging, non_blocking=False)
        return model

    def _staging(self, like: torch.Tensor) -> torch.Tensor:
        """A tensor shaped and typed like ``like`` on the pair's device, reusing one buffer per dtype."""
        buffer = self._stage.get(like.dtype)
        if buffer is None or buffer.numel() < like.numel():
            buffer = self._stage[like.dtype] = torch.empty(like.numel(), dtype=like.dtype, device=self.device)
        return buffer[: like.numel()].view(like.shape)

    # ---- fast path: masks from cached order keys, values from (base, kept) -------------------------
    #
    # For alpha = 1 and the masking methods (TIES, Breadcrumbs, TaskA, hard, Neuron-Fusion over TIES or
    # Breadcrumbs) every merged entry is one of two values fixed per pair: the base weight, or
    # kept = (base_f + delta).to(dtype), what ``merge_tensor`` writes for a surviving entry. So a point is a
    # mask (a compare of the cached 2-byte key against a bucket, plus the bucket's few exact members) and
    # one branch-free select into the model; only Neuron-Rescale's located neurons are recomputed, with
    # the engine's float32 operations. Equality with ``merge_tensor`` is tested bit for bit
    # (tests/test_resident.py).

    def _kept_values(self, i: int) -> torch.Tensor:
        """(base_f + delta).to(dtype) for entry ``i``, what the engine writes for a surviving entry: the tuned
        weights themselves (checked block by block) unless rounding differs somewhere."""
        entry = self.entries[i]
        name, b, t = entry.name, entry.base, entry.tuned
        kept = self._kept.get(name)
        if kept is None:
            n = b.shape[0]
            tuned, base = t[:n].reshape(n, -1), b.reshape(n, -1)
            kept = t[:n]
            for r0, r1, values, widened in self._work.widened_rows(base, tuned):
                if not torch.equal(values.sub_(widened).add_(widened).to(t.dtype), tuned[r0:r1]):
                    kept = (t[:n].float() - b).add_(b.float()).to(t.dtype)  # rare: keep the rounded copy
                    break
            self._kept[name] = kept
        return kept

    def _dropped_values(self, i: int) -> torch.Tensor:
        """base_f + 0.0 for entry ``i``, what Neuron-Fusion writes for a dropped entry: the base weights,
        except that a -0.0 becomes +0.0 (copied only if the base holds a -0.0)."""
        name, b = self.entries[i].name, self.entries[i].base
        dropped = self._dropped.get(name)
        if dropped is None:
            zero = b == 0  # compare as values, then look at the sign bit of the few zeros
            dropped = b
            if bool(zero.any()) and bool(torch.signbit(b[zero]).any()):
                dropped = (b.float() + 0.0).to(b.dtype)
            self._dropped[name] = dropped
        return dropped

    def _top(self, i: int, k: int) -> torch.Tensor:
        """[n] bool: the k largest |delta| of entry ``i`` (``top_k_mask``)."""
        name, b = self.entries[i].name, self.entries[i].base
        n = b.numel()
        if k >= n:
            return torch.ones(n, dtype=torch.bool, device=b.device)
        if k <= 0:
            return torch.zeros(n, dtype=torch.bool, device=b.device)
        if k not in self._tops[name]:
            self._fill(i, [k])
        return self._tops[name][k].mask(self._keys[name].key)

    def _mask(self, i: int, recipe: Recipe) -> torch.Tensor | None:
        """The engine's Sub mask for entry ``i`` (None = every entry kept), shaped like the base tensor."""
        b = self.entries[i].base
        ks = top_k_counts(recipe, b.numel())
        if not ks:  # a fast row with no top-k set keeps every entry (TaskA)
            return None
        mask = self._top(i, ks[0])
        if len(ks) == 2:  # a band (Breadcrumbs): the top (n_top + n_keep) minus the top n_top
            mask &= ~self._top(i, ks[1])
        return mask.view(b.shape)

    SUPPRESSED_CACHE = 4096  # C'(i) vectors kept (n_neurons floats each): every tensor at tens of K values

    def _suppressed_scores(self, i: int, recipe: Recipe, mask: torch.Tensor | None = None):
        """(C'(i) [n_neurons], kept fraction) of entry ``i`` under the recipe's TIES / Breadcrumbs Sub: the
        neuron scores of the suppressed delta, as ``lfm.neurons.neuron_scores(delta * mask)`` computes them.
        They depend on K (and gamma) only, not on M, alpha or restore, so they are kept per K."""
        entry = self.entries[i]
        name, b, t = entry.name, entry.base, entry.tuned
        key = (name, recipe.sub_method, top_k_counts(recipe, b.numel()))
        hit = self._suppressed.get(key)
        if hit is None:
            mask = self._mask(i, recipe) if mask is None else mask
            after = neuron_sums(self._work.abs_delta(b, t[: b.shape[0]], mask), neuron_axis(name))
            hit = self._suppressed[key] = (after, int(torch.count_nonzero(mask)) / max(mask.numel(), 1))
            if len(self._suppressed) > self.SUPPRESSED_CACHE:
                del self._suppressed[next(iter(self._suppressed))]  # the oldest
        return hit

    @torch.no_grad()
    def _apply_fast(self, i: int, recipe: Recipe, target: torch.Tensor) -> None:
        entry = self.entries[i]
        name, b, t = entry.name, entry.base, entry.tuned
        n = b.shape[0]
        if t.shape[0] > n:
            target[n:].copy_(t[n:])  # extra vocabulary rows stay tuned
        out = target[:n]
        source = source_of(name, recipe)
        if source != "method":
            out.copy_(t[:n] if source == "tuned" else b)
            return
        row = METHODS[recipe.method]
        mask = self._mask(i, recipe)
        if mask is None:
            # an interpolating row is a lerp in the engine: at alpha = 1 exactly the tuned weights
            out.copy_(t[:n] if row.interpolates else self._kept_values(i))
            return
        axis = neuron_axis(name)
        located = None
        if row.restores_neurons and axis is not None and recipe.neurons > 0:
            gen = tensor_generator(recipe, name, self.device) if recipe.is_random else None
            located = locate(self.scores[name], recipe.neurons, recipe.locate, gen)
        if located is None or recipe.restore == "replace":
            if located is not None:
                mask |= along(located, axis)
            if row.masks:  # the engine selects tuned/base directly (alpha = 1)
                select(mask, t[:n], b, out=out)
            else:  # the engine writes base_f + masked delta
                select(mask, self._kept_values(i), self._dropped_values(i), out=out)
            return
        # Neuron-Rescale. C'(i) exactly as the engine computes it: neuron_scores of the suppressed delta
        after, _ = self._suppressed_scores(i, recipe, mask)
        ratio, empty = rescale_ratio(self.scores[name], after, located)  # empty: restored by replace
        mask |= along(empty, axis)
        # base_f + delta * ratio for surviving entries (ratio 1 outside the rescaled neurons, which is
        # exactly the kept value), the dropped value elsewhere; row block by row block, in cache
        dropped = self._dropped_values(i)
        for r0, r1, values, widened in self._work.widened_rows(b, t[:n]):
            values.sub_(widened).mul_(along(ratio[r0:r1] if axis == 0 else ratio, axis)).add_(widened)
            select(mask[r0:r1], values.to(t.dtype), dropped[r0:r1], out=out[r0:r1])

    @torch.no_grad()
    @one_at_a_time
    def restore_tuned(self, model: torch.nn.Module) -> torch.nn.Module:
        """Copy the tuned LM tensors back into ``model`` (undoes every ``apply``); returns it."""
        params = self._model_tensors(model)
        for entry in self.entries:
            params[entry.tuned_key].copy_(entry.tuned.to(params[entry.tuned_key].device, params[entry.tuned_key].dtype))
        return model

    def _own_storage(self, model: torch.nn.Module) -> None:
        """Once per model: give its LM parameters private memory holding the cached tuned weights.

        transformers maps checkpoint files into memory, so the first in-place write to a parameter copies it
        page by page from the file (measured ~5 s for 2 GB on a VM); one copy from the resident tuned tensors
        into fresh tensors is a plain memcpy. Parameters keep their identity (tied weights stay tied).
        """
        for t, param in zip((e.tuned for e in self.entries), self._model_objects(model).values()):
            if isinstance(param, torch.nn.Parameter) and param.data_ptr() not in self._owned \
                    and (param.dtype, param.shape, param.device) == (t.dtype, t.shape, t.device):
                fresh = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)
                param.data = fresh
                self._owned.add(fresh.data_ptr())

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise KeyError naming an LM tensor of the pair that ``model`` has no place for (before any merge is
        written into it)."""
        self._model_objects(model)

    def _model_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """{tuned checkpoint key: the model's parameter/buffer tensor} (transformers may rename keys on load)."""
        return {key: obj.data if isinstance(obj, torch.nn.Parameter) else obj
                for key, obj in self._model_objects(model).items()}

    def _model_objects(self, model: torch.nn.Module) -> dict:
        """{tuned checkpoint key: the model's Parameter or buffer}, in entry order."""
        state = dict(model.state_dict(keep_vars=True))
        out = {}
        for key in (e.tuned_key for e in self.entries):
            found = self.pair.loaded_key(key, state)
            if found is None:
                raise KeyError(f"checkpoint tensor {key!r} has no counterpart in the model's state_dict "
                               f"({type(model).__name__}); load the model from the tuned directory")
            out[key] = state[found]
        return out

    # ---- the explorer's per-tensor view ------------------------------------------------------------

    @one_at_a_time
    def view(self, name: str, recipe: Recipe | dict | str | None = None, **fields) -> "TensorView":
        """C(i), C'(i), located neurons, C_final(i) and the kept fraction of linear tensor ``name`` under ``recipe``,
        computed now from the resident tensors: for the masking methods from the engine's Sub mask (cached
        order key; C'(i) kept per K, so moving M, alpha or the restore mode costs only a Locate), otherwise
        ``tensor_view`` on the engine's float32 delta. C_final equals the scores of the merged delta up to
        float rounding (tested)."""
        recipe = make_recipe(recipe, **fields)
        i = self._index.get(name)
        if i is None or name not in self.scores:
            raise KeyError(f"{name!r} is not a linear-module tensor of this pair; choose one of pair.names "
                           f"(e.g. {self.names[0]!r})")
        if name in self._non_finite:
            raise ValueError(f"the delta of tensor {name!r} holds NaN/Inf: one of the checkpoints holds "
                             f"non-finite weights; fix or re-download it")
        b, t = self.entries[i].base, self.entries[i].tuned
        scores = self.scores[name]
        row = METHODS[recipe.method]
        if name in self._keys and from_masks(recipe):
            # masking methods, from the cached order key without a float32 delta: C'(i) of the engine's Sub
            # mask (cached per K), and C_final by what F does to a neuron (``final_scores``)
            if row.copies_base:
                after, kept = torch.zeros_like(scores), 0.0
            elif not top_k_counts(recipe, b.numel()):  # every entry kept: C'(i) is C(i), alpha in if it suppressed
                after = scores * abs(recipe.alpha) if alpha_is_the_suppression(recipe) else scores
                kept = 1.0
            else:
                after, kept = self._suppressed_scores(i, recipe)
            located = torch.zeros_like(scores, dtype=torch.bool)
            if row.restores_neurons and recipe.neurons > 0:
                located = locate(scores, recipe.neurons, recipe.locate,
                                 tensor_generator(recipe, name, scores.device) if recipe.is_random else None)
            return TensorView(name, scores, after, located, final_scores(scores, after, located, recipe), kept)
        self._ensure_ks(i, set(needed_ks(recipe, b.numel())))
        delta = t[: b.shape[0]].float() - b  # the engine's float32 delta (lfm.methods.merge_tensor)
        return tensor_view(name, delta, recipe, sorted_abs=self._thresholds[name], scores=scores)


@dataclass
class TensorView:
    """One linear-module tensor under one recipe. All vectors are [n_neurons] float32."""

    name: str
    scores: torch.Tensor  # C(i)
    suppressed: torch.Tensor  # C'(i) after Sub (Neuron-Fusion: the suppress stage), before alpha
    located: torch.Tensor  # bool, the neurons restored (empty unless neuron_fusion with M > 0)
    final: torch.Tensor  # C_final(i) of the merged delta (alpha in)
    kept_fraction: float  # entries of delta surviving Sub


def tensor_view(name: str, delta: torch.Tensor, recipe: Recipe, *, sorted_abs=None,
                scores: torch.Tensor | None = None) -> TensorView:
    """The engine's Sub and F of one linear tensor (``lfm.methods.METHODS``, as ``merge_delta`` runs them),
    keeping the per-neuron scores at each step.

    Args:
        name: canonical weight name (decides the neuron axis and the random generator's seed).
        delta: [out, in] float32 tuned - base.
        sorted_abs: optional thresholds (a descending |delta|, or ``Thresholds``).
        scores: optional cached C(i).

    >>> delta = torch.tensor([[3.0, -1.0], [0.5, 0.25]])
    >>> v = tensor_view("model.layers.0.mlp.up_proj.weight", delta, Recipe(method="ties", density=0.5))
    >>> v.scores.tolist(), v.suppressed.tolist(), v.kept_fraction
    ([4.0, 0.75], [4.0, 0.0], 0.5)
    """
    axis = neuron_axis(name)
    if axis is None:
        raise ValueError(f"{name!r} is not one of the seven linear modules; it has no neurons")
    if scores is None:
        scores = neuron_scores(delta, axis)
    method = METHODS[recipe.method]
    generator = tensor_generator(recipe, name, delta.device) if recipe.is_random else None
    mask, keep_prob = method.sub(delta, recipe, generator, sorted_abs)
    kept = 1.0 if mask is None else int(torch.count_nonzero(mask)) / max(mask.numel(), 1)
    restored = None  # Neuron-Locate, as merge_delta runs it
    if method.restores_neurons:
        if recipe.neurons > 0:
            restored = locate(scores, recipe.neurons, recipe.locate, generator)
        after = neuron_scores(suppressed_delta(delta, mask, recipe), axis)
    else:  # the method's own Sub and F without alpha: what survives of each neuron
        after = neuron_scores(method.f(delta, mask, keep_prob, replace(recipe, alpha=1.0))[0], axis)
    new_delta, _ = method.f(delta, mask, keep_prob, recipe, restored, axis)
    located = torch.zeros_like(scores, dtype=torch.bool) if restored is None else restored
    return TensorView(name, scores, after, located, neuron_scores(new_delta, axis), kept)


# ---- memory, checked before anything is read ---------------------------------------------------------

FLOAT32_TEMPORARIES = 5  # float32 copies of one tensor the whole-tensor engine holds at once (delta, |delta|,
# the new delta, its sum with base, the mask's share): a recipe off the fast path, or a view, of the largest one


def memory_parts(pair: Pair, device: torch.device, fast: bool = True, model_device=None) -> dict[str, int]:
    """{what: bytes} a ``ResidentPair`` of ``pair`` needs on ``device`` at its peak, every part named:

        pair               both LM tensors of every entry (mapped pages become resident as they are read)
        order keys         a 2-byte order key per entry (``fast``)
        scratch            the float32 |delta| of the largest linear module and two blocks (kept for apply)
        temporaries        FLOAT32_TEMPORARIES float32 copies of the largest LM tensor (the engine's whole path)
        cached C'(i)       SUPPRESSED_CACHE float32 vectors of the most neurons a tensor has
        kept copies        one rounded kept copy and one dropped copy of the largest LM tensor (made only where
                           rounding differs: rare)
        model              the whole tuned model (every tensor of its checkpoint), when it runs on ``device``
        staging            one tensor of the largest LM tensor's size, when the model runs on another device

    ``model_device``: where the model ``apply`` writes into lives (None: no model, views and merged tensors only).
    """
    pair_bytes = keys = largest_linear = largest = largest_bytes = most_neurons = 0
    for e in pair.entries:
        b_shape, b_dtype = pair.base.meta(e.base_key)
        t_shape, t_dtype = pair.tuned.meta(e.tuned_key)
        n_base, n_tuned = math.prod(b_shape), math.prod(t_shape)
        pair_bytes += n_base * b_dtype.itemsize + n_tuned * t_dtype.itemsize
        keys += 2 * n_base if fast else 0
        largest, largest_bytes = max(largest, n_base), max(largest_bytes, n_tuned * t_dtype.itemsize)
        axis = neuron_axis(e.name)
        if axis is not None:
            largest_linear, most_neurons = max(largest_linear, n_base), max(most_neurons, b_shape[axis])
    parts = {"pair": pair_bytes, "order keys": keys, "scratch": 4 * largest_linear + 8 * KEY_BLOCK,
             "temporaries": FLOAT32_TEMPORARIES * 4 * largest,
             "cached C'(i)": ResidentPair.SUPPRESSED_CACHE * 4 * most_neurons, "kept copies": 2 * largest_bytes}
    if model_device is not None:
        if resolve_device(model_device) == resolve_device(device):
            parts["model"] = sum(math.prod(shape) * dtype.itemsize
                                 for shape, dtype in map(pair.tuned.meta, pair.tuned.keys()))
        else:
            parts["staging"] = largest_bytes
    return parts


def memory_needed(pair: Pair, device: torch.device, fast: bool = True, model_device=None) -> int:
    """Bytes a ``ResidentPair`` of ``pair`` needs on ``device`` (the sum of ``memory_parts``)."""
    return sum(memory_parts(pair, device, fast, model_device).values())


def check_memory(pair: Pair, device: torch.device, fast: bool = True, model_device=None) -> None:
    """Raise MemoryError (bytes needed, part by part, vs available, what to do) when ``pair`` does not fit on
    ``device`` (``lfm.memory.check_fits``: on a GPU, free memory plus what PyTorch's cache holds unused)."""
    parts = memory_parts(pair, device, fast, model_device)
    detail = ", ".join(f"{name} {gib(n)}" for name, n in parts.items() if n)
    check_fits(f"holding {pair.tuned.path} and its base in memory", sum(parts.values()), device,
               "free memory, use a larger device, or stream the merge with `lfm merge` (precompute a results "
               f"folder with `lfm precompute` for the explorer). Needed: {detail}")


__all__ = ["Entry", "ResidentPair", "TensorView", "Thresholds", "check_memory", "is_fast", "memory_needed", "memory_parts",
           "needed_ks", "tensor_view"]
