"""Exact top-k sets of |delta| for many k at once, from a 2-byte order key (what a K sweep reuses).

The engine's TIES/Breadcrumbs mask is ``lfm.methods.top_k_mask``: the k largest |delta| of a tensor,
ties at the threshold kept by lower flat index. A sweep needs that set for many k on the same tensor.
Sorting |delta| once would answer every k, but costs n log n and 8 bytes per entry; instead:

    order_key(|delta|)      [n] int16 with key(a) > key(b) => a > b (float16 bits of a power-of-two
                            scaled |delta|), plus the list of entries whose float16 was rounded
    top_k_sets(order, ks)   one histogram of the key finds, for each k, the key value ("bucket") holding
                            the k-th largest entry and how many of its members are in the set; the
                            bucket's unrounded members all hold the same |delta| (ties: the usual case,
                            weight deltas of bf16/fp16 checkpoints are coarse), so the set takes the first
                            of them in flat order and is described by two integers:
                            (bucket, cut) -> mask = key >= bucket before position cut, key > bucket after

so a point of a sweep builds its mask with one compare pass over 2 bytes per entry. The bucket's rounded
members (few) are decided by their exact |delta| and listed where they break the (bucket, cut) rule. Every
set is exactly ``top_k_mask``'s (tested against it on tie-heavy, tie-free, sparse and wide-range data,
tests/test_topk.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KEY_VALUES = 1 << 15  # the keys are non-negative int16
BLOCK = 1 << 20  # entries per block when locating a member by position
KEY_BLOCK = 1 << 18  # entries per block of element-wise work (1 MB of float32: stays in cache)


@dataclass
class OrderKey:
    """A tensor's |delta| as a 2-byte order key (``order_key``).

    key: [n] int16, the float16 bits of |delta| * scale; key(a) > key(b) implies a > b.
    scale: the power of two (>= 1) that puts the largest |delta| in [2^14, 2^15): exact, so the entries
        whose scaled |delta| *is* a float16 value ("exact" entries) all share the value of their key.
    rounded: [r] ascending flat indices of the other entries (their float16 was rounded), or None when
        there are more than n/8 (and 4096) of them (then every key value is decided by exact |delta|).
    """

    key: torch.Tensor
    scale: float
    rounded: torch.Tensor | None


def order_key(abs_delta: torch.Tensor, largest: float | None = None) -> OrderKey:
    """[...] finite non-negative float32 |delta| -> OrderKey. Overwrites ``abs_delta`` (a caller's temporary).

    Rounding to float16 is monotone and non-negative float16s order as their int16 bits, so the key
    orders as |delta|; 1024 key values per octave keep the entries sharing one key few, except for
    entries that are truly equal (coarse deltas of bf16/fp16 checkpoints tie by thousands).

    Args:
        largest: max |delta| when the caller has it (saves a pass).
    """
    flat = abs_delta.reshape(-1)
    if largest is None:
        largest = float(flat.max()) if flat.numel() else 0.0
    return order_key_blocks(lambda start, stop: flat[start:stop], flat.numel(), largest, flat.device)


def order_key_blocks(abs_delta_block, n: int, largest: float, device="cpu") -> OrderKey:
    """``order_key`` without the whole |delta| in memory.

    Args:
        abs_delta_block: (start, stop) -> [stop - start] float32 |delta| of those flat entries, a
            temporary this function overwrites; asked for in order, at most KEY_BLOCK entries at a time.
        n: number of entries. largest: max |delta| (finite).
    """
    # 2^s, 0 <= s <= 126 (a float32 power of two: the product stays exact or, for absurdly small deltas,
    # merely rounds in float16, which the `rounded` list catches)
    scale = 2.0 ** min(126, max(0, 15 - math.frexp(largest)[1])) if largest > 0 else 1.0
    half = torch.empty(n, dtype=torch.float16, device=device)
    rounded, n_rounded = [], 0
    list_limit = max(n // 8, 4096)  # keep the list only while it costs <= 1 byte/entry (or is small)
    for start in range(0, n, KEY_BLOCK):  # block by block: each step's temporaries stay in cache
        stop = min(start + KEY_BLOCK, n)
        scaled = abs_delta_block(start, stop).mul_(scale)
        block_half = half[start:stop]
        block_half.copy_(scaled)
        inexact = block_half.float() != scaled
        count = int(torch.count_nonzero(inexact))
        n_rounded += count
        if count and n_rounded <= list_limit:
            rounded.append(torch.nonzero(inexact).squeeze(1) + start)
    index = None
    if n_rounded <= list_limit:
        index = torch.cat(rounded) if rounded else torch.zeros(0, dtype=torch.long, device=device)
    return OrderKey(half.view(torch.int16), scale, index)


@dataclass
class TopK:
    """One top-k set of a tensor, against its order key: entries before flat position ``cut`` are in the
    set when key >= bucket, entries from ``cut`` on when key > bucket; then ``add`` / ``drop`` (flat
    indices of members of the bucket that break that rule) are forced in / out."""

    bucket: int
    cut: int
    add: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def mask(self, key: torch.Tensor) -> torch.Tensor:
        """key: [n] int16 -> [n] bool with exactly k True entries (``top_k_mask``'s)."""
        mask = torch.empty(key.shape, dtype=torch.bool, device=key.device)
        torch.ge(key[: self.cut], self.bucket, out=mask[: self.cut])
        torch.gt(key[self.cut:], self.bucket, out=mask[self.cut:])
        if self.add is not None and self.add.numel():
            mask[self.add] = True
        if self.drop is not None and self.drop.numel():
            mask[self.drop] = False
        return mask


def top_k_sets(order: OrderKey, exact_abs, ks: list[int]) -> dict[int, tuple[TopK, torch.Tensor]]:
    """{k: (TopK, k-th largest |delta|)} for every k in ``ks`` (0 < k < n); the threshold is the value
    ``top_k_mask`` compares against (``lfm.methods.kth_largest``).

    Args:
        order: the tensor's ``order_key``.
        exact_abs: flat indices [m] (int64) -> the exact float32 |delta| at those entries.
    """
    key = order.key
    n = key.numel()
    block_counts = torch.stack([torch.bincount(key[s: s + BLOCK], minlength=KEY_VALUES)
                                for s in range(0, n, BLOCK)])  # [n_blocks, 2^15]
    at_least = block_counts.sum(0).flip(0).cumsum(0).flip(0)  # at_least[j] = #entries with key >= j
    if order.rounded is not None:  # the rounded entries' keys and exact values, scaled like the key
        r_keys, r_scaled = key[order.rounded], exact_abs(order.rounded).mul_(order.scale)
    out = {}
    for k in ks:
        bucket = int(torch.count_nonzero(at_least >= k)) - 1  # the key value of the k-th largest entry
        above = int(at_least[bucket + 1]) if bucket + 1 < KEY_VALUES else 0
        rank = k - above  # how many of the bucket's members are in the set
        if order.rounded is None:
            out[k] = _decide_by_exact_values(key, exact_abs, bucket, rank)
            continue
        in_bucket = r_keys == bucket
        out[k] = _decide(key, block_counts[:, bucket], bucket, rank, order.rounded[in_bucket],
                         r_scaled[in_bucket], order.scale, exact_abs)
    return out


def _decide(key, per_block, bucket, rank, ids, scaled, scale, exact_abs) -> tuple[TopK, torch.Tensor]:
    """The bucket's members are its exact entries (all of value v = the key's float16) and the rounded
    ones ``ids`` (scaled exact values ``scaled``, never equal to v). Keep the ``rank`` largest, ties by
    lower flat index, as a (cut, add, drop) rule."""
    v = float(torch.tensor([bucket], dtype=torch.int16).view(torch.float16).float())
    n_exact = int(per_block.sum()) - ids.numel()
    n_above = int(torch.count_nonzero(scaled > v))  # rounded members larger than the exact ones
    if n_above < rank <= n_above + n_exact:
        # the set: every rounded member above v plus the first (rank - n_above) exact members
        chosen = scaled > v
        rounded_blocks = torch.bincount(ids // BLOCK, minlength=per_block.numel())
        pos = _position_of_member(key, per_block - rounded_blocks, bucket, rank - n_above, skip=ids)
        cut, threshold = pos + 1, exact_abs(torch.tensor([pos], device=key.device))[0]
    else:
        # the threshold falls among the rounded members: all exact members are in (below) or out (above)
        exact_in = rank > n_above
        need = rank - n_exact if exact_in else rank  # how many rounded members are in
        candidates = scaled[scaled < v] if exact_in else scaled
        within = rank - n_above - n_exact if exact_in else rank  # the threshold's rank among candidates
        t_scaled = torch.kthvalue(candidates, candidates.numel() - within + 1).values
        chosen = scaled > t_scaled
        n_tied = need - int(torch.count_nonzero(chosen))
        chosen[torch.nonzero(scaled == t_scaled).squeeze(1)[:n_tied]] = True  # ids ascend: lower index first
        cut = key.numel() if exact_in else 0
        threshold = t_scaled / scale  # exact: the scale is a power of two
    before = ids < cut
    return TopK(bucket, cut, add=ids[chosen & ~before], drop=ids[~chosen & before]), threshold


def _position_of_member(key, per_block, bucket: int, rank: int, skip: torch.Tensor | None = None) -> int:
    """Flat position of the rank-th (1-based, in flat order) entry with key == bucket that is not in
    ``skip``; per_block counts those entries per block of ``BLOCK``."""
    cumulative = per_block.cumsum(0)
    block = int(torch.count_nonzero(cumulative < rank))
    before = int(cumulative[block - 1]) if block else 0
    start = block * BLOCK
    inside = torch.nonzero(key[start: start + BLOCK] == bucket).squeeze(1) + start
    if skip is not None and skip.numel():
        inside = inside[~torch.isin(inside, skip)]
    return int(inside[rank - before - 1])


def _decide_by_exact_values(key, exact_abs, bucket: int, rank: int) -> tuple[TopK, torch.Tensor]:
    """Any bucket, from all its members' exact |delta| (used when too many entries were rounded)."""
    ids = torch.nonzero(key == bucket).squeeze(1)  # ascending flat positions
    values = exact_abs(ids)
    threshold = torch.kthvalue(values, values.numel() - rank + 1).values
    greater = values > threshold
    n_tied_kept = rank - int(torch.count_nonzero(greater))  # ties kept by lower flat index
    ties = torch.nonzero(values == threshold).squeeze(1)
    cut = int(ids[ties[n_tied_kept - 1]]) + 1 if n_tied_kept > 0 else 0
    before = ids < cut  # before the cut the rule keeps every member, from it on none
    return TopK(bucket, cut, add=ids[greater & ~before], drop=ids[(values < threshold) & before]), threshold


__all__ = ["OrderKey", "order_key", "order_key_blocks", "top_k_sets", "TopK", "KEY_VALUES", "KEY_BLOCK"]
