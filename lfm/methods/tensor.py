"""One named tensor of the LM: the recipe's tensor policies (``others``, ``keep_base`` / ``keep_tuned``, extra
vocabulary rows kept from tuned), then the math: whole (`lfm.methods.math`), as one lerp or select where the
row allows it, or block by block for big tensors (`lfm.methods.blocked`). Every path writes the same bytes.
"""

import re

import torch

from lfm.kernels import count_true, select
from lfm.methods.blocked import (raise_non_finite, merge_neuron_fusion_in_blocks, merge_rows_in_blocks,
                                 merge_top_k_in_blocks, refuse_non_finite, streams_neurons, streams_rows,
                                 streams_top_k)
from lfm.methods.math import DeltaStats, merge_delta, tensor_generator
from lfm.methods.recipe import Recipe
from lfm.methods.registry import METHODS
from lfm.neurons import extra_vocab_rows, module_of, neuron_axis

# tensors from this size on are merged in blocks (lfm.methods.blocked), smaller ones whole (fewer torch calls)
BLOCKED_FROM = 1 << 20


def source_of(name: str, recipe: Recipe) -> str:
    """Where tensor `name` comes from: 'tuned', 'base' or 'method' (merged)."""
    if any(re.search(p, name) for p in recipe.keep_tuned):
        return "tuned"
    if any(re.search(p, name) for p in recipe.keep_base):
        return "base"
    if METHODS[recipe.method].copies_base:
        return "base"
    if module_of(name) is None and recipe.others != "method":
        return recipe.others
    return "method"


def merge_tensor(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, *, name: str,
                 sorted_abs: torch.Tensor | None = None, scores: torch.Tensor | None = None):
    """theta_base + F(Sub(theta_tuned - theta_base)) for one named LM tensor.

    base: [n_base, ...]; tuned: [n_tuned, ...] with n_tuned >= n_base only for vocabulary
    tensors (embed_tokens, lm_head): the shared rows are merged and the extra rows (e.g. an added
    `<image>` token) are kept from the tuned model. The delta is float32 on the tensors' device
    (task arithmetic is one lerp in the storage dtype, which half types compute in float32 inside
    the kernel); the result has the tuned tensor's dtype.

    Returns (merged, DeltaStats, source) where source is 'method', 'tuned' or 'base'.
    Raises ValueError naming the tensor on shape mismatch or a non-finite delta.
    """
    extra_rows = None
    if base.shape != tuned.shape:
        if not extra_vocab_rows(name, base.shape, tuned.shape):
            raise ValueError(f"shape mismatch for tensor {name!r}: base {tuple(base.shape)} vs tuned "
                             f"{tuple(tuned.shape)}; the tuned model must be fine-tuned from this base")
        extra_rows = tuned[base.shape[0]:]
        tuned = tuned[: base.shape[0]]

    source = source_of(name, recipe)
    in_blocks = None
    if source == "method" and sorted_abs is None and base.numel() >= BLOCKED_FROM:
        in_blocks = (merge_top_k_in_blocks if streams_top_k(recipe, name)
                     else merge_neuron_fusion_in_blocks if scores is None and streams_neurons(recipe, name, base)
                     else merge_rows_in_blocks if streams_rows(recipe, base) else None)
    if in_blocks is not None:
        n_extra = 0 if extra_rows is None else extra_rows.shape[0]
        merged = torch.empty((base.shape[0] + n_extra, *base.shape[1:]) if base.dim() else (),
                             dtype=tuned.dtype, device=tuned.device)
        stats = in_blocks(base, tuned, recipe, name, merged[: base.shape[0]] if base.dim() else merged)
        if n_extra:
            merged[base.shape[0]:] = extra_rows
        return merged, stats, source
    if source == "tuned":
        merged, stats = tuned.float(), DeltaStats(tuned.numel(), tuned.numel())
    elif source == "base":
        merged, stats = base.float(), DeltaStats(base.numel(), 0)
    elif METHODS[recipe.method].interpolates and base.dtype == tuned.dtype:
        # base + alpha * (tuned - base) as one fused lerp in the storage dtype (half types are
        # computed in float32 inside the kernel and rounded once): a TA merge then costs about
        # one pass over the data, so disk I/O, not arithmetic, bounds it.
        merged = torch.lerp(base, tuned, recipe.alpha)
        if not torch.isfinite(merged.sum()):  # half sums accumulate in float32; NaN/Inf propagate
            raise_non_finite(tuned.float() - base.float(), name)
        stats = DeltaStats(base.numel(), base.numel())
    else:
        delta = tuned.float() - base  # float32; a half base is widened inside the kernel, not copied
        refuse_non_finite(delta, name)
        if METHODS[recipe.method].masks and recipe.alpha == 1.0:
            # with alpha = 1 a masking method keeps each entry exactly tuned or exactly base: select
            # in the storage dtype instead of base + delta * mask in float32 (same values, fewer passes)
            mask, _ = METHODS[recipe.method].sub(delta, recipe, None, sorted_abs)
            merged = select(mask, tuned, base)
            stats = DeltaStats(delta.numel(), count_true(mask))
        else:
            generator = tensor_generator(recipe, name, delta.device) if recipe.is_random else None
            new_delta, stats = merge_delta(delta, recipe, neuron_axis=neuron_axis(name), generator=generator,
                                           sorted_abs=sorted_abs, scores=scores)
            merged = new_delta.add_(base)  # float32; in place: new_delta is this function's delta or a new tensor
    merged = merged.to(tuned.dtype)
    if extra_rows is not None:
        merged = torch.cat([merged, extra_rows.to(merged.device)], dim=0)
    return merged, stats, source
