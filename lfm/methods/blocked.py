"""The same bytes, for big tensors: TIES masks, DARE / DELLA rows and Neuron-Fusion merged block by block.

The paper's math (`lfm.methods.math`) runs on a whole float32 delta: ~20 passes over a tensor, and a float32
copy of it. For a big tensor (an embedding, a 5632x2048 MLP weight) these engines compute the same bytes
with |delta| never held whole, in one or two passes over the inputs, a block of MERGE_BLOCK entries (or of
rows) at a time; `lfm.methods.tensor.merge_tensor` picks one when a recipe's row allows it (`streams_*`).
Every equality with the whole-tensor path is tested bit for bit (tests/test_topk.py).
"""

import torch

from lfm.kernels import count_true, equal, greater, greater_equal, keep_where, kth_smallest, masked_values, select, \
    true_positions
from lfm.methods.math import DeltaStats, along, rescale_ratio, tensor_generator, top_k_counts
from lfm.methods.recipe import Recipe
from lfm.methods.registry import METHODS, sub_row
from lfm.methods.select import abs_delta_bounds, above_and_band, kth_in_band, selects_in_full
from lfm.neurons import locate, neuron_axis, neuron_sums

MERGE_BLOCK = 1 << 20  # entries per block (4 MB of float32: a block's temporaries stay in the CPU's last-level
# cache; measured on a 0.4B TIES merge, 2 cores: 1M-entry blocks 2.6 s, 256K 3.5 s, 4M 2.9 s). Every torch call
# is a barrier for torch's threads: blocks are only fast when idle threads sleep instead of spinning
# (OMP_WAIT_POLICY=PASSIVE, set by the `lfm` command: lfm.cli.let_idle_threads_sleep)


# ----------------------------------------------------------------------------------------------
# The delta, block by block, refused when it holds NaN/Inf.

def refuse_non_finite(delta: torch.Tensor, name: str) -> None:
    """Raise ValueError naming the tensor if ``delta`` (or a block of it, or its |delta|) holds NaN/Inf: one
    cheap reduction (NaN/Inf anywhere make the sum non-finite); only a non-finite sum looks closer."""
    if not torch.isfinite(delta.sum()):
        raise_non_finite(delta, name)


def raise_non_finite(delta: torch.Tensor, name: str):
    bad = "NaN" if torch.isnan(delta).any() else "Inf"
    raise ValueError(f"{bad} in the delta of tensor {name!r}: one of the checkpoints holds "
                     f"non-finite weights; fix or re-download it")


def delta_into(delta: torch.Tensor, base_float: torch.Tensor, tuned_block: torch.Tensor,
               base_block: torch.Tensor) -> torch.Tensor:
    """``tuned_block.float() - base_block`` bit for bit into ``delta`` (float32, same shape), leaving base's
    float32 copy in ``base_float`` for a later add: two conversions into reused buffers, where a mixed-dtype
    subtraction would convert into a fresh temporary. Returns ``delta``."""
    base_float.copy_(base_block)
    return delta.copy_(tuned_block).sub_(base_float)


def _delta_blocks(base: torch.Tensor, tuned: torch.Tensor, name: str, check: bool = True):
    """Yield (block slice, delta block [MERGE_BLOCK] float32, base block as float32) over the flat entries of tuned - base,
    refusing a non-finite delta (one cheap sum per block; only a non-finite sum looks closer) unless
    ``check`` is False (a second pass over blocks already checked). Every block is the same reused buffer:
    the caller is done with one before it asks for the next."""
    flat_base, flat_tuned = base.reshape(-1), tuned.reshape(-1)
    scratch = torch.empty((2, min(MERGE_BLOCK, flat_base.numel())), dtype=torch.float32, device=base.device)
    for start in range(0, flat_base.numel(), MERGE_BLOCK):
        block = slice(start, start + MERGE_BLOCK)
        size = flat_base[block].numel()
        delta = delta_into(scratch[0, :size], scratch[1, :size], flat_tuned[block], flat_base[block])
        if check:
            refuse_non_finite(delta, name)
        yield block, delta, scratch[1, :size]


def _kth_abs_delta(above: int, inside: list[torch.Tensor], k: int, base: torch.Tensor, tuned: torch.Tensor):
    """``kth_in_band`` of the blocks' bands of |tuned - base|; when the bracket missed (adversarial layouts),
    the selection over the whole |delta| instead."""
    return kth_in_band(above, torch.cat(inside), k) or kth_in_band(0, (tuned.float() - base).abs().reshape(-1), k)


def kth_largest_abs_delta(base: torch.Tensor, tuned: torch.Tensor, k: int, name: str) -> tuple[torch.Tensor, int, int]:
    """The k-th largest |tuned - base| (1 <= k <= n) as ``kth_largest`` selects it, exactly, without ever
    holding |delta| whole: a strided sample brackets it, then one pass over blocks counts the entries above
    the bracket and keeps those inside. Returns (threshold, n_above: entries > it, n_tied: entries == it)."""
    lo, hi = abs_delta_bounds(base, tuned, k)
    above, inside = 0, []
    for _, delta, _ in _delta_blocks(base, tuned, name):
        magnitude = delta.abs_()
        over, band = above_and_band(magnitude, lo, hi)
        above += count_true(over)
        inside.append(masked_values(magnitude, band))
    return _kth_abs_delta(above, inside, k, base, tuned)


def _top_k_block_mask(magnitude: torch.Tensor, threshold, ties_left: int, drop_ties: bool) -> tuple[torch.Tensor, int]:
    """The top-k mask of one block in flat order, given the threshold and how many entries equal to it are
    still to be kept (``top_k_mask``'s rule: ties kept by lower flat index). Returns (mask, ties left)."""
    if not drop_ties:  # every entry equal to the threshold is kept
        return greater_equal(magnitude, threshold), ties_left
    if ties_left == 0:  # the kept ties were all in earlier blocks
        return greater(magnitude, threshold), 0
    mask = greater_equal(magnitude, threshold)
    is_tied = equal(magnitude, threshold)
    n_tied = count_true(is_tied)
    if n_tied > ties_left:  # the block where the kept ties end: drop the later ones
        mask.view(-1)[true_positions(is_tied)[ties_left:]] = False
    return mask, max(0, ties_left - n_tied)


def select_top_k_one_pass(base: torch.Tensor, tuned: torch.Tensor, k: int, name: str, out: torch.Tensor) -> bool:
    """TIES at alpha = 1 (each entry exactly tuned where |delta| is among the k largest, else base) in one pass
    over the inputs: a strided sample brackets the k-th largest |delta| in (lo, hi) (``band_bounds``); every
    block's entries >= hi are taken from tuned, the rest from base, and the few inside the bracket are remembered; once
    the exact threshold is known among them, the kept ones are patched to tuned. The set is ``top_k_mask``'s
    (ties at the threshold kept by lower flat index).

    Args: base, tuned: same shape and dtype, big enough to be bracketed (``selects_in_full`` False); 0 < k < n; out: [same], contiguous.
    Returns False, with ``out`` partly written, when the bracket missed the k-th largest (then merge another way).
    """
    n = base.numel()
    flat_base, flat_tuned, flat_out = base.reshape(-1), tuned.reshape(-1), out.view(-1)
    lo, hi = abs_delta_bounds(base, tuned, k)
    scratch = torch.empty((2, min(MERGE_BLOCK, n)), dtype=torch.float32, device=base.device)  # reused per block
    above, band_ids, band_values = 0, [], []
    for start in range(0, n, MERGE_BLOCK):
        block = slice(start, start + MERGE_BLOCK)
        size = min(MERGE_BLOCK, n - start)
        m = delta_into(scratch[0, :size], scratch[1, :size], flat_tuned[block], flat_base[block]).abs_()
        refuse_non_finite(m, name)
        keep, band = above_and_band(m, lo, hi)
        above += count_true(keep)
        ids = true_positions(band)
        band_values.append(m.index_select(0, ids))
        band_ids.append(ids.add_(start))
        select(keep, flat_tuned[block], flat_base[block], out=flat_out[block])
    values, ids = torch.cat(band_values), torch.cat(band_ids)  # ids ascend: flat order
    if not above < k <= above + values.numel():
        return False
    rank = k - above  # how many of the bracket's entries are kept
    threshold = kth_smallest(values, values.numel() - rank + 1)
    chosen = greater(values, threshold)
    tied = true_positions(equal(values, threshold))
    chosen[tied[: rank - count_true(chosen)]] = True  # ties: the lower flat indices
    kept = ids[chosen]
    flat_out[kept] = flat_tuned[kept]
    return True


def merge_top_k_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                          out: torch.Tensor) -> DeltaStats:
    """``merge_tensor`` of a recipe whose whole change is a TIES mask (TIES, or Neuron-Fusion's TIES suppress
    where no neuron is restored) into ``out``, block by block: |delta| is never held whole, so beside the
    inputs and the output only a few blocks of float32 are in memory. The bytes equal the whole-tensor path
    (`top_k_mask` then `select` at alpha = 1 for TIES, else base + alpha * masked delta in float32).

    Args: base, tuned: same shape; out: [same shape], tuned's dtype, contiguous. Returns the DeltaStats.
    """
    n = base.numel()
    (k,) = top_k_counts(recipe, n)
    k = min(max(k, 0), n)
    as_select = METHODS[recipe.method].masks and recipe.alpha == 1.0
    axis = neuron_axis(name) if METHODS[recipe.method].restores_neurons else None
    stats = DeltaStats(n, k, n_neurons=0 if axis is None else base.shape[axis])
    if as_select and base.dtype == tuned.dtype and 0 < k < n and not selects_in_full(n) and \
            select_top_k_one_pass(base, tuned, k, name, out):
        return stats
    threshold, n_above, n_tied = kth_largest_abs_delta(base, tuned, k, name) if 0 < k < n else (None, 0, 0)
    ties_left = k - n_above  # entries equal to the threshold that are kept: the first ones in flat order
    flat_base, flat_tuned, flat_out = base.reshape(-1), tuned.reshape(-1), out.view(-1)
    checked = threshold is not None and not selects_in_full(n)  # kth_largest_abs_delta's pass checked every block
    magnitude = torch.empty(min(MERGE_BLOCK, n), dtype=torch.float32, device=base.device)  # reused per block
    for block, delta, base_float in _delta_blocks(base, tuned, name, check=not checked):
        if threshold is None:
            mask = torch.full_like(delta, k == n, dtype=torch.bool)
        else:
            mask, ties_left = _top_k_block_mask(torch.abs(delta, out=magnitude[: delta.numel()]), threshold,
                                                ties_left, n_tied > k - n_above)
        if as_select and flat_tuned.dtype == flat_base.dtype:
            select(mask, flat_tuned[block], flat_base[block], out=flat_out[block])
        elif as_select:
            flat_out[block] = select(mask, flat_tuned[block], flat_base[block])
        else:
            kept = keep_where(mask, delta, out=delta)
            if recipe.alpha != 1.0:
                kept.mul_(recipe.alpha)
            flat_out[block] = kept.add_(base_float)
    return stats


def merge_rows_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                         out: torch.Tensor) -> DeltaStats:
    """``merge_tensor`` of a DARE or DELLA recipe (rescale 'inverse') into ``out``, a block of rows at a time:
    beside the inputs and the output only a few [MERGE_BLOCK] float32 temporaries are in memory. The bytes
    equal the whole-tensor path: both methods act on each row alone (DELLA ranks within a row, DARE per
    entry), a generator's stream does not depend on how a draw is split, and the rest is elementwise.

    Args: base, tuned: [rows, ...] same shape; out: [same shape], tuned's dtype. Returns the DeltaStats.
    """
    method = METHODS[recipe.method]
    generator = tensor_generator(recipe, name, base.device)
    rows_base, rows_tuned = base.reshape(base.shape[0], -1), tuned.reshape(tuned.shape[0], -1)
    rows_out = out.view(out.shape[0], -1)
    step = max(1, MERGE_BLOCK // max(rows_base.shape[1], 1))
    kept = 0
    for start in range(0, rows_base.shape[0], step):
        block = slice(start, start + step)
        delta = rows_tuned[block].float() - rows_base[block]
        refuse_non_finite(delta, name)
        mask, keep_prob = method.sub(delta, recipe, generator, None)
        new_delta, _ = method.f(delta, mask, keep_prob, recipe)
        rows_out[block] = new_delta.add_(rows_base[block])
        kept += count_true(mask)
    return DeltaStats(base.numel(), kept)


def merge_neuron_fusion_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                                  out: torch.Tensor) -> DeltaStats:
    """``merge_tensor`` of Neuron-Fusion with the TIES suppressor on one linear weight into ``out``, a block of
    rows at a time, in two passes over the inputs instead of ~20 whole-tensor float32 passes:

        pass 1   delta -> |delta|: the k-th largest (bracketed, as ``kth_largest_abs_delta``) and C(i)
        locate   the top-M neurons by C(i)
        pass 2   delta -> TIES mask -> suppressed -> C'(i) -> restored (replace / rescale) -> + base -> out

    The bytes equal the whole-tensor path (``merge_delta``): every step is elementwise except the sums C(i)
    and C'(i), which ``neuron_sums`` adds in one fixed order: a row's sum over a block of whole rows is bitwise
    its sum in the whole tensor, so row neurons (axis 0) are summed per block; a column's sum needs every row,
    so for column neurons (axis 1) |delta| (then |suppressed|) is kept whole in one float32 buffer and summed
    whole, and the mask is kept for pass 2.

    Args: base, tuned: [out, in], same shape; out: [same shape], tuned's dtype. Returns the DeltaStats.
    """
    axis = neuron_axis(name)
    n, (n_rows, n_cols) = base.numel(), base.shape
    step = max(1, MERGE_BLOCK // max(n_cols, 1))
    blocks = [slice(start, start + step) for start in range(0, n_rows, step)]
    (k,) = top_k_counts(recipe, n)
    k = min(max(k, 0), n)

    scratch = torch.empty((4, min(step, n_rows), n_cols), dtype=torch.float32, device=base.device)  # reused

    def delta_of(block):  # tuned.float() - base of these rows, bit for bit; base's float32 copy in scratch[3]
        rows = base[block].shape[0]
        return delta_into(scratch[0, :rows], scratch[3, :rows], tuned[block], base[block])

    lo, hi = abs_delta_bounds(base, tuned, k) if 0 < k < n else (None, None)
    whole_abs = torch.empty(base.shape, dtype=torch.float32, device=base.device) if axis == 1 else None
    row_scores, above, inside = [], 0, []
    for block in blocks:  # pass 1
        delta = delta_of(block)
        refuse_non_finite(delta, name)
        magnitude = delta.abs_()
        if axis == 0:
            row_scores.append(neuron_sums(magnitude, 0))  # C(i) = neuron_scores(delta, 0), bit for bit
        else:
            whole_abs[block] = magnitude
        if lo is not None:
            over, band = above_and_band(magnitude, lo, hi)
            above += count_true(over)
            inside.append(masked_values(magnitude, band))
    scores = torch.cat(row_scores) if axis == 0 else neuron_sums(whole_abs, 1)
    threshold, n_above, n_tied = _kth_abs_delta(above, inside, k, base, tuned) if lo is not None else (None, 0, 0)
    del inside

    generator = tensor_generator(recipe, name, base.device) if recipe.is_random else None
    located = locate(scores, recipe.neurons, recipe.locate, generator)
    stats = DeltaStats(n, k, n_neurons=scores.numel(), n_located=count_true(located))
    drop_ties, ties_left = n_tied > k - n_above, k - n_above

    def mask_of(magnitude):
        nonlocal ties_left
        if threshold is None:
            return torch.full_like(magnitude, k == n, dtype=torch.bool)
        mask, ties_left = _top_k_block_mask(magnitude, threshold, ties_left, drop_ties)
        return mask

    ratio = empty = whole_mask = None
    if axis == 1:  # C'(i) over the whole |suppressed|: |delta * mask| is |delta| * mask, exactly
        whole_mask = torch.empty(base.shape, dtype=torch.bool, device=base.device)
        for block in blocks:
            whole_mask[block] = mask_of(whole_abs[block])
            whole_abs[block] = keep_where(whole_mask[block], whole_abs[block])
        if recipe.restore == "rescale":
            ratio, empty = rescale_ratio(scores, neuron_sums(whole_abs, 1), located)
            ratio, empty = along(ratio, 1), along(empty, 1)
        del whole_abs
    for block in blocks:  # pass 2
        delta = delta_of(block)
        if axis == 1:
            mask = whole_mask[block]
        else:
            magnitude = torch.abs(delta, out=scratch[1, : delta.shape[0]])
            mask = mask_of(magnitude)
        restored = keep_where(mask, delta, out=scratch[2, : delta.shape[0]])  # the suppressed delta
        if recipe.restore == "replace" and axis == 0:  # the located rows' delta back, copied row by row
            rows = true_positions(located[block])
            restored.index_copy_(0, rows, delta.index_select(0, rows))  # torch.where(keep rows, delta, restored)
        elif recipe.restore == "replace":
            if bool(located.any()):
                restored = torch.where(along(located, 1), delta, restored)
        else:
            if axis == 0:  # C'(i) of the located rows (the others keep ratio 1): |delta * mask| = |delta| * mask
                rows = true_positions(located[block])
                after = torch.zeros(delta.shape[0], dtype=torch.float32, device=delta.device)
                after[rows] = neuron_sums(keep_where(mask[rows], magnitude[rows]), 0)  # a row's sum: as in the whole
                ratio, empty = rescale_ratio(scores[block], after, located[block])
                ratio, empty = along(ratio, 0), along(empty, 0)
                stats.n_fallback_replace += count_true(empty)
                restored[rows] = restored[rows].mul_(ratio[rows])
            else:
                restored = restored.mul_(ratio)
            if bool(empty.any()):
                restored = torch.where(empty, delta, restored)
        if recipe.alpha != 1.0:
            restored = restored.mul_(recipe.alpha)
        out[block] = restored.add_(scratch[3, : delta.shape[0]])  # + base
    if recipe.restore == "rescale" and axis == 1:
        stats.n_fallback_replace = count_true(empty)
    return stats


def streams_rows(recipe: Recipe, base: torch.Tensor) -> bool:
    """Whether `merge_rows_in_blocks` computes this tensor's merge: a row-blocked method (DARE, DELLA) with the
    papers' 1/p rescale of a matrix (the l1 rescale needs the whole tensor's norms; a vector is one row)."""
    return METHODS[recipe.method].row_blocked and recipe.rescale == "inverse" and base.dim() >= 2


def _one_top_k_mask(recipe: Recipe) -> bool:
    """The recipe's Sub is one top-k set of |delta| and its F scales what survives (TIES, as itself or as
    Neuron-Fusion's suppressor)."""
    sub = sub_row(recipe)
    return sub.masks and sub.top_k is not None and len(sub.top_k(recipe, 1)) == 1


def streams_neurons(recipe: Recipe, name: str, base: torch.Tensor) -> bool:
    """Whether `merge_neuron_fusion_in_blocks` computes this tensor's merge: Neuron-Fusion with the TIES
    suppressor restoring neurons of a linear weight, on every device (its sums are ``neuron_sums``: the bytes do
    not depend on the path or the device)."""
    return (METHODS[recipe.method].restores_neurons and _one_top_k_mask(recipe) and recipe.neurons > 0
            and neuron_axis(name) is not None and base.dim() == 2)


def streams_top_k(recipe: Recipe, name: str) -> bool:
    """Whether `merge_top_k_in_blocks` computes this tensor's merge: the recipe's change is one TIES mask."""
    restores_here = METHODS[recipe.method].restores_neurons and recipe.neurons > 0 and neuron_axis(name) is not None
    return _one_top_k_mask(recipe) and not restores_here
