"""lfm.kernels against the torch calls they stand for: the same values, dtypes and shapes, bit for bit, on
NaN, -0.0, Inf, ties, non-contiguous and 0-dim inputs, and on the dtypes numpy lacks (bfloat16)."""
from __future__ import annotations

import pytest
import torch

from lfm import kernels


def _values(dtype, shape=(37, 301), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).abs().mul_(4).round_().div_(4)  # quarter steps: many ties
    x.view(-1)[:5] = torch.tensor([float("nan"), float("inf"), -0.0, 0.0, 1.0])
    return x.to(dtype)


BOUNDS = [torch.tensor(1.0), torch.tensor(0.0), torch.tensor(float("inf")), torch.tensor(float("nan")),
          torch.nextafter(torch.tensor(1.25), torch.tensor(0.0)), 0.75, torch.tensor(1.0, dtype=torch.float64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bound", BOUNDS, ids=lambda b: repr(b))
def test_comparisons_are_torch_s(dtype, bound):
    x = _values(dtype)
    for values in (x, x.t(), x[3], x[0, 0]):  # contiguous, transposed, a row, 0-dim
        for ours, theirs in ((kernels.greater_equal, torch.ge), (kernels.greater, torch.gt), (kernels.equal, torch.eq)):
            got, want = ours(values, bound), theirs(values, bound)
            assert got.dtype == torch.bool and got.shape == want.shape and torch.equal(got, want), (ours, values.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_elementwise_comparisons_with_a_tensor_are_torch_s(dtype):
    x, y = _values(dtype), _values(dtype, seed=1)
    for other in (y, y[0], y.t().contiguous().t(), y.double(), y.float()):  # same shape, broadcast, strides, mixed dtypes
        for ours, theirs in ((kernels.less, torch.lt), (kernels.greater_equal, torch.ge)):
            got, want = ours(x, other), theirs(x, other)
            assert got.dtype == torch.bool and torch.equal(got, want)
    assert torch.equal(kernels.less(x, 1.0), x < 1.0)


def test_counts_positions_and_masked_values_are_torch_s():
    x = _values(torch.float32)
    for mask in (x >= 1.0, (x >= 1.0).t(), x[:, 7] == 0.5, torch.zeros(0, dtype=torch.bool), torch.tensor(True)):
        assert kernels.count_true(mask) == int(torch.count_nonzero(mask))
        got, want = kernels.true_positions(mask), torch.nonzero(mask.reshape(-1)).squeeze(1)
        assert got.dtype == torch.int64 and torch.equal(got, want)
    for values, mask in ((x, x >= 1.0), (x.t(), x.t() > 2.0), (x[5], x[5] == 0.25)):
        got = kernels.masked_values(values, mask)
        assert torch.equal(got.view(torch.int32), values[mask].view(torch.int32))  # NaN-safe: bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kth_smallest_is_kthvalue(dtype):
    x = _values(dtype).reshape(-1)[5:]  # no NaN: kthvalue's order of NaN is not a value order
    for i in (1, 2, 100, x.numel() // 2, x.numel()):
        got, want = kernels.kth_smallest(x, i), torch.kthvalue(x, i).values
        assert got.dtype == dtype and got.dim() == 0 and torch.equal(got, want)


def test_keep_where_is_masked_fill():
    x = _values(torch.float32)
    mask = x > 1.0
    bits = lambda t: t.contiguous().view(torch.int32)  # noqa: E731
    assert torch.equal(bits(kernels.keep_where(mask, x)), bits(x.masked_fill(~mask, 0.0)))
    assert torch.equal(bits(kernels.keep_where(mask.t(), x.t())), bits(x.t().masked_fill(~mask.t(), 0.0)))
    y = x.clone()
    assert kernels.keep_where(mask, y, out=y) is y and torch.equal(bits(y), bits(x.masked_fill(~mask, 0.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ranks_of_magnitude_are_the_stable_sort_s(dtype):
    x = _values(dtype)  # NaN, Inf, -0.0 / 0.0 and many ties in row 0; ties in every row
    x[1] = -x[1]
    for rows in (x, x.t(), x[:1]):
        order = torch.sort(rows.abs(), dim=1, stable=True).indices
        want = torch.empty_like(order).scatter_(1, order, torch.arange(rows.shape[1]).expand_as(order))
        got = kernels.ranks_of_magnitude(rows)
        assert got.dtype == torch.int64 and torch.equal(got, want)
