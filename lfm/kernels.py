"""Exact, fast CPU versions of the few torch primitives the block-by-block merges run on every entry.

Each function returns what the torch call in its docstring returns, bit for bit, on any device; on CPU it
takes a faster route for the same answer. Measured on 1M float32 entries, one thread (torch 2.13, numpy 2):

    torch call                          here, on CPU                             ms: torch -> here
    values >= bound  (also >, ==)       numpy's comparison (SIMD)                0.32 -> 0.05
    int(torch.count_nonzero(mask))      numpy's count_nonzero                    0.17 -> 0.03
    torch.nonzero(mask).squeeze(1)      numpy's flatnonzero                      0.76 -> 0.30 (1.6 % True)
    values[mask]                        flatnonzero, then index_select           0.76 -> 0.31
    torch.where(mask, a, b)             integer xor / multiply, branch-free      6x faster on an irregular mask
    values.masked_fill(~mask, 0.0)      integer multiply by the 0/1 mask
    torch.kthvalue(values, i).values    numpy's partition (a SIMD introselect)   10x faster on 64K-3M values
    ranks of torch.sort(|x|, stable)    numpy's SIMD sort of (bits, column) keys 63 -> 8.5

numpy reads the tensors' memory in place (no copy); dtypes numpy lacks (bfloat16) take the torch call.

    >>> x = torch.tensor([0.5, 2.0, 1.0, 2.0])
    >>> greater_equal(x, torch.tensor(1.0)), count_true(x == 2.0), true_positions(x == 2.0)
    (tensor([False,  True,  True,  True]), 2, tensor([1, 3]))
"""

import numpy as np
import torch

_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
SELECT_CHUNK = 1 << 20  # entries per block of `select`: the temporaries stay in the CPU cache


def _as_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """The tensor's memory as a numpy array, or None where numpy cannot take it (not on CPU, bfloat16)."""
    if tensor.device.type != "cpu" or tensor.dtype in (torch.bfloat16, torch.complex32) or tensor.requires_grad:
        return None
    return tensor.numpy()


def _compare(values: torch.Tensor, bound, numpy_op, torch_op) -> torch.Tensor:
    array = _as_numpy(values)
    if isinstance(bound, torch.Tensor) and bound.dim():  # elementwise: numpy only for the same dtype (torch
        other = _as_numpy(bound)                         # would promote mixed dtypes, not cast)
        if array is None or other is None or other.dtype != array.dtype:
            return torch_op(values, bound)
        return torch.from_numpy(np.asarray(numpy_op(array, other)))
    if array is None:
        return torch_op(values, bound)
    # a number or 0-dim bound in the values' dtype, as torch compares them
    return torch.from_numpy(np.asarray(numpy_op(array, np.asarray(bound, dtype=array.dtype))))


def greater_equal(values: torch.Tensor, bound) -> torch.Tensor:
    """``values >= bound`` (bound: a number or a 0-dim tensor), a new bool tensor."""
    return _compare(values, bound, np.greater_equal, torch.ge)


def greater(values: torch.Tensor, bound) -> torch.Tensor:
    """``values > bound``, a new bool tensor."""
    return _compare(values, bound, np.greater, torch.gt)


def less(values: torch.Tensor, bound) -> torch.Tensor:
    """``values < bound`` (bound: a number, a 0-dim tensor or a tensor of values' shape), a new bool tensor."""
    return _compare(values, bound, np.less, torch.lt)


def equal(values: torch.Tensor, bound) -> torch.Tensor:
    """``values == bound``, a new bool tensor."""
    return _compare(values, bound, np.equal, torch.eq)


def count_true(mask: torch.Tensor) -> int:
    """``int(torch.count_nonzero(mask))`` of a bool tensor."""
    array = _as_numpy(mask)
    return int(torch.count_nonzero(mask)) if array is None else int(np.count_nonzero(array))


def true_positions(mask: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero(mask.reshape(-1)).squeeze(1)``: the flat positions of the True entries, ascending, int64."""
    array = _as_numpy(mask)
    if array is None:
        return torch.nonzero(mask.reshape(-1)).squeeze(1)
    return torch.from_numpy(np.flatnonzero(array).astype(np.int64, copy=False))


def masked_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` (mask: bool, values' shape): the entries where mask is True, flat, in order."""
    if values.device.type != "cpu":
        return values[mask]
    return values.reshape(-1).index_select(0, true_positions(mask))


def ranks_of_magnitude(rows: torch.Tensor) -> torch.Tensor:
    """Each entry's rank (0 = smallest) of |x| within its row of a 2-D tensor, ties by lower column: the ranks
    ``torch.sort(rows.abs(), dim=1, stable=True)`` orders the entries in, as int64 [rows, cols].

    On CPU (float32): |x|'s bits, as integers, order like its values (NaN's after +Inf, as torch sorts it), so
    (bits << 32 | column) is a unique key with the stable order, and numpy's SIMD sort of the keys ranks the
    row (measured 8.5 ms vs 63 ms per 1M entries, one thread).

    >>> ranks_of_magnitude(torch.tensor([[0.5, -2.0, 0.5, 0.1]]))
    tensor([[1, 3, 2, 0]])
    """
    n_cols = rows.shape[1]
    array = _as_numpy(rows)
    if array is None or array.dtype != np.float32 or n_cols >= 2**31:
        order = torch.sort(rows.abs(), dim=1, stable=True).indices
    else:
        key = (np.abs(array).view(np.int32).astype(np.int64) << 32) | np.arange(n_cols, dtype=np.int64)
        key.sort(axis=1)
        order = torch.from_numpy(np.bitwise_and(key, 0xFFFFFFFF, out=key))  # the columns, in sorted order
    return torch.empty_like(order).scatter_(1, order, torch.arange(n_cols, device=rows.device).expand_as(order))


def kth_smallest(values: torch.Tensor, i: int) -> torch.Tensor:
    """The i-th smallest (1 <= i <= n) of a flat float tensor, as a 0-dim tensor: ``torch.kthvalue(values,
    i).values`` exactly (an order statistic is one value).

    >>> kth_smallest(torch.tensor([3.0, 1.0, 2.0, 2.0]), 3)
    tensor(2.)
    """
    array = _as_numpy(values)
    if array is None:
        return torch.kthvalue(values, i).values
    return torch.as_tensor(np.partition(array, i - 1)[i - 1], dtype=values.dtype)


def select(mask: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.where(mask, if_true, if_false)`` bit for bit, fast on CPU for irregular masks.

    On CPU ``torch.where`` branches per entry, and a mask like "top 20% of |delta|" is random to the
    branch predictor: measured 6x slower than on a regular mask. On the integer views of the values,
    ``f ^ ((t ^ f) * mask)`` is the same selection as branch-free vectorised arithmetic, done block by
    block so the temporaries never leave the cache. On GPU (no such penalty) it is ``torch.where``.

    Args:
        mask: bool, same shape as the values. if_true, if_false: same shape and dtype.
        out: optional destination (same shape and dtype, contiguous); may not alias the inputs.
    """
    if out is None:
        out = torch.empty_like(if_false, memory_format=torch.contiguous_format)
    int_dtype = _SAME_SIZE_INT.get(if_false.element_size())
    if out.device.type != "cpu" or int_dtype is None or if_true.dtype != if_false.dtype:
        return torch.where(mask, if_true, if_false, out=out)
    # the mask as 0/1 bytes: int16 * int8 measured ~2x faster than int16 * bool
    flat_mask, flat_out = mask.reshape(-1).view(torch.int8), out.view(-1).view(int_dtype)
    flat_true = if_true.reshape(-1).view(int_dtype)
    flat_false = if_false.reshape(-1).view(int_dtype)
    for start in range(0, flat_out.numel(), SELECT_CHUNK):
        block = slice(start, start + SELECT_CHUNK)
        differ = torch.bitwise_xor(flat_true[block], flat_false[block])
        differ.mul_(flat_mask[block])
        torch.bitwise_xor(differ, flat_false[block], out=flat_out[block])
    return out


def keep_where(mask: torch.Tensor, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``values.masked_fill(~mask, 0.0)`` bit for bit (+0.0 where mask is False), as one branch-free integer
    multiply of the values' bits by the 0/1 mask on CPU (an irregular mask makes masked_fill branch per entry).
    ``out``: optional contiguous destination of values' shape and dtype (may be ``values`` itself).

    >>> keep_where(torch.tensor([True, False, True]), torch.tensor([-1.5, -2.0, 0.25]))
    tensor([-1.5000,  0.0000,  0.2500])
    """
    int_dtype = _SAME_SIZE_INT.get(values.element_size())
    if values.device.type != "cpu" or int_dtype is None or not values.is_contiguous():
        kept = values.masked_fill(~mask, 0.0)
        return kept if out is None else out.copy_(kept)
    if out is None:
        out = torch.empty_like(values)
    torch.mul(values.view(int_dtype), mask.view(torch.int8), out=out.view(int_dtype))
    return out


__all__ = ["greater_equal", "greater", "less", "equal", "count_true", "true_positions", "masked_values",
           "ranks_of_magnitude", "kth_smallest", "select",
           "keep_where"]
