"""Exact selection: the k-th largest of many values, and the top-k mask of |delta|, fast on big tensors.

A full selection over n entries is slow on CPU for big n, so the answer is first bracketed by the order
statistics of a fixed strided sample, then selected exactly among the few entries inside the bracket; when
the bracket misses (adversarial layouts) the full selection runs instead. The result never depends on the
sample: it is always exactly ``kth_smallest`` of the whole.

    >>> kth_largest(torch.tensor([3.0, 1.0, 2.0, 5.0]), 2)
    tensor(3.)
    >>> top_k_mask(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2).tolist()    # ties: the lower flat index
    [False, True, True, False]
"""

import math

import torch

from lfm.kernels import count_true, equal, greater, greater_equal, kth_smallest, masked_values, true_positions

EXACT_SELECT_MAX = 1 << 17  # up to this many entries a full selection is fast enough
SAMPLE_SIZE = 65536  # about this many strided entries bracket the answer of a bigger selection


def selects_in_full(n: int) -> bool:
    """Whether a selection among ``n`` entries runs in full (no sample brackets it)."""
    return n <= EXACT_SELECT_MAX


def band_bounds(sample: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) around the k-th largest of n values, from a strided sample of them, for one pass that takes
    the entries >= hi as certainly above it and keeps the few in (lo, hi) to select it among: the sample's
    order statistics at the answer's quantile -+1%. Deltas of half-precision checkpoints tie by thousands:
    a bound equal to the sample's value at the answer's quantile sits in the tie group that probably holds
    the answer, so it moves just past that value (the group is kept whole); a bound elsewhere leaves its own
    tie group outside the band. The caller checks the answer fell inside, by counts."""
    m = sample.numel()
    q = 1.0 - k / n
    lo = kth_smallest(sample, max(1, int((q - 0.01) * m)))
    mid = kth_smallest(sample, min(m, max(1, int(q * m))))
    hi = kth_smallest(sample, min(m, int((q + 0.01) * m) + 1))
    if lo == mid:
        lo = torch.nextafter(lo, torch.tensor(-math.inf))
    if hi == mid:
        hi = torch.nextafter(hi, torch.tensor(math.inf))
    return lo, hi


def above_and_band(magnitude: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries >= hi, entries in (lo, hi)) of a block, as two bool masks from two compares and an xor."""
    over = greater_equal(magnitude, hi)
    return over, greater(magnitude, lo).logical_xor_(over)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a flat tensor (1 <= k <= n), exactly (bracketed by a sample when big)."""
    n = values.numel()
    if selects_in_full(n):
        return kth_smallest(values, n - k + 1)
    lo, hi = band_bounds(values[:: n // SAMPLE_SIZE], n, k)
    over, band = above_and_band(values, lo, hi)
    above, inside = count_true(over), masked_values(values, band)
    if above < k <= above + inside.numel():
        return kth_smallest(inside, inside.numel() - (k - above) + 1)
    return kth_smallest(values, n - k + 1)


def top_k_mask(abs_delta: torch.Tensor, k: int, sorted_abs: torch.Tensor | None = None) -> torch.Tensor:
    """Exactly k True entries at the largest |delta| (ties broken by lower flat index).

    Args:
        abs_delta: |delta|, any shape.
        k: how many to keep, clipped to [0, numel].
        sorted_abs: optional [numel] |delta| sorted descending; makes the threshold a lookup
            (sweeps compute it once per tensor).
    """
    n = abs_delta.numel()
    flat = abs_delta.reshape(-1)
    if k >= n:
        return torch.ones_like(abs_delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(abs_delta, dtype=torch.bool)
    threshold = sorted_abs[k - 1] if sorted_abs is not None else kth_largest(flat, k)
    mask = greater_equal(flat, threshold)
    extra = count_true(mask) - k
    if extra > 0:  # entries tied at the threshold: keep the lower flat indices
        tied = true_positions(equal(flat, threshold))
        mask[tied[tied.numel() - extra:]] = False
    return mask.view_as(abs_delta)


def abs_delta_bounds(base: torch.Tensor, tuned: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``band_bounds`` of the k-th largest |tuned - base| from a strided sample; (-1, inf): every value
    in the band, when the tensor is small enough to select in full."""
    n = base.numel()
    if selects_in_full(n):
        return torch.tensor(-1.0), torch.tensor(math.inf)
    step = n // SAMPLE_SIZE
    return band_bounds((tuned.reshape(-1)[::step].float() - base.reshape(-1)[::step]).abs(), n, k)


def kth_in_band(above: int, inside: torch.Tensor, k: int):
    """The k-th largest of a tensor from the count of its entries above a bracket and the values inside it:
    (threshold, n_above: entries > it, n_tied: entries == it), or None when the k-th largest is not inside."""
    if not above < k <= above + inside.numel():
        return None
    threshold = kth_smallest(inside, inside.numel() - (k - above) + 1)
    return threshold, above + count_true(greater(inside, threshold)), count_true(equal(inside, threshold))
