"""lfm.topk (top-k sets for many k from a 2-byte key) and lfm.kernels.select, against the engine's own
top_k_mask / torch.where on tie-heavy, tie-free and awkward data."""

from __future__ import annotations

import pytest
import torch

import lfm.topk as topk
from lfm.kernels import select
from lfm.methods import kth_largest, top_k_mask


def _pair(kind: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "bf16":  # a bf16 pair: |delta| is coarse, thousands of entries tie at every value
        base = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
        tuned = (base.float() + torch.randn(n, generator=g) * 1e-3).to(torch.bfloat16)
    elif kind == "fp32":  # float32: almost every |delta| is distinct and not a float16 value
        base = torch.randn(n, generator=g)
        tuned = base + torch.randn(n, generator=g) * 1e-2
    elif kind == "sparse":  # most entries unchanged: a huge bucket of zeros
        base = torch.randn(n, generator=g).to(torch.bfloat16)
        tuned = base.clone()
        idx = torch.randperm(n, generator=g)[: n // 10]
        tuned[idx] = (tuned[idx].float() + 0.5).to(torch.bfloat16)
    elif kind == "wide":  # magnitudes over many octaves, some above float16's range after scaling
        base = torch.zeros(n)
        tuned = torch.randn(n, generator=g) * torch.logspace(-9, 6, n)[torch.randperm(n, generator=g)]
    elif kind == "tiny":  # every |delta| below float32's normal range: the scale is capped
        base = torch.zeros(n)
        tuned = torch.randn(n, generator=g) * 1e-40
    else:
        raise ValueError(kind)
    return base, tuned


@pytest.mark.parametrize("kind", ["bf16", "fp32", "sparse", "wide", "tiny"])
def test_top_k_sets_equal_top_k_mask(kind, monkeypatch):
    monkeypatch.setattr(topk, "BLOCK", 4096)  # several blocks, so locating a member crosses blocks
    n = 50_000
    base, tuned = _pair(kind, n)
    exact = (tuned.float() - base.float()).abs()
    order = topk.order_key(exact.clone())
    key = order.key
    assert key.dtype == torch.int16 and key.numel() == n and bool((key >= 0).all())
    # the key orders as |delta|: a larger key never belongs to a smaller |delta|
    ascending = torch.argsort(exact)
    assert bool((key[ascending][1:] >= key[ascending][:-1]).all())
    ks = [1, 7, 500, n // 20, n // 5, n // 2, (9 * n) // 10, n - 1]
    sets = topk.top_k_sets(order, lambda i: (tuned[i].float() - base[i].float()).abs(), ks)
    for k in ks:
        top, threshold = sets[k]
        want = top_k_mask(exact, k)
        got = top.mask(key)
        assert int(got.sum()) == k
        assert torch.equal(got, want), (kind, k)
        assert torch.equal(threshold, kth_largest(exact, k))
    if kind in ("bf16", "sparse"):  # coarse deltas: few entries rounded, the rounded list is kept
        assert order.rounded is not None and order.rounded.numel() < n // 8
    if kind == "fp32":  # nearly every entry rounded: every bucket is decided by exact |delta|
        assert order.rounded is None


def test_ties_are_kept_by_lower_flat_index():
    values = torch.tensor([0.5, 1.0, 0.5, 0.5, 2.0, 0.5])
    order = topk.order_key(values.clone())
    (top, threshold), = topk.top_k_sets(order, lambda i: values[i], [3]).values()
    assert top.mask(order.key).tolist() == [True, True, False, False, True, False]
    assert float(threshold) == 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_select_is_torch_where(dtype, monkeypatch):
    import lfm.kernels as kernels

    monkeypatch.setattr(kernels, "SELECT_CHUNK", 1000)  # many blocks and a ragged last one
    g = torch.Generator().manual_seed(1)
    a = torch.randn(37, 301, generator=g).to(dtype)
    b = torch.randn(37, 301, generator=g).to(dtype)
    a[0, 0], b[0, 1] = float("nan"), -0.0  # bit patterns, not values, are selected
    mask = torch.rand(37, 301, generator=g) < 0.3
    bits = lambda x: x.contiguous().view(-1).view(torch.uint8)  # noqa: E731  (NaN != NaN as values)
    want = torch.where(mask, a, b)
    got = select(mask, a, b)
    assert got.dtype == dtype and torch.equal(bits(got), bits(want))
    out = torch.empty_like(a)
    assert select(mask, a, b, out=out) is out and torch.equal(bits(out), bits(want))
    assert torch.equal(bits(select(mask.t(), a.t(), b.t())), bits(want.t()))  # non-contiguous inputs


def test_bucket_with_rounded_members_above_and_below():
    """float16 keys 1.0 for 1-2^-13, 1-2^-14, 1.0 and 1+2^-12: the exact entries (1.0) tie, the rounded
    ones lie on both sides of them; every k through that bucket must still be top_k_mask's set."""
    values = torch.tensor([16384.0, 1.0, 1 - 2**-13, 1 + 2**-12, 1.0, 1 - 2**-14, 1.0, 0.1])
    order = topk.order_key(values.clone())
    assert order.rounded.tolist() == [2, 3, 5, 7]  # 0.1 is not a float16 value either
    assert len(set(order.key[1:7].tolist())) == 1
    sets = topk.top_k_sets(order, lambda i: values[i], list(range(1, 8)))
    for k, (top, threshold) in sets.items():
        assert torch.equal(top.mask(order.key), top_k_mask(values, k)), k
        assert torch.equal(threshold, kth_largest(values, k)), k
    assert sets[3][0].mask(order.key).nonzero().squeeze(1).tolist() == [0, 1, 3]
    assert sets[6][0].mask(order.key).nonzero().squeeze(1).tolist() == [0, 1, 3, 4, 5, 6]


def _reference_top_k(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """k largest of a flat tensor, ties to the lower index: a stable sort on -|delta|, independent of the engine."""
    mask = torch.zeros(magnitude.numel(), dtype=torch.bool)
    mask[torch.sort(-magnitude.double(), stable=True).indices[:k]] = True
    return mask


@pytest.mark.parametrize("kind", ["bf16", "fp32", "sparse", "wide", "strided"])
@pytest.mark.parametrize("recipe", [dict(method="ties", density=0.2), dict(method="ties", density=0.05, alpha=0.7),
                                    dict(method="neuron_fusion", density=0.3), dict(method="ties", density=1.0),
                                    dict(method="neuron_fusion", density=0.9, alpha=1.5, neurons=0.0)])
def test_merge_tensor_in_blocks_equals_the_whole_tensor_formula(kind, recipe, monkeypatch):
    """The block-by-block TIES merge (|delta| never whole; blocks much smaller than the tensor, so the
    threshold's ties straddle blocks) gives the bytes of the formula on the whole tensor, with extra
    vocabulary rows kept from tuned."""
    from lfm.methods import Recipe, merge_tensor
    from lfm.methods.blocked import streams_top_k

    monkeypatch.setattr("lfm.methods.blocked.MERGE_BLOCK", 7777)
    monkeypatch.setattr("lfm.methods.tensor.BLOCKED_FROM", 100)
    recipe = Recipe(**recipe)
    if kind == "strided":  # the sample (every n // 65536-th entry) sees only outliers: the bracket misses
        base, tuned = _pair("fp32", 400_000)
        tuned[:: 400_000 // 65536] += 100.0
    else:
        base, tuned = _pair(kind, 400_000)
    base, tuned = base.reshape(1000, 400), tuned.reshape(1000, 400)
    extra = torch.randn(3, 400).to(tuned.dtype)
    name = "model.embed_tokens.weight"
    assert streams_top_k(recipe, name)
    merged, stats, _ = merge_tensor(base, torch.cat([tuned, extra]), recipe, name=name)

    delta = tuned.float() - base.float()
    k = int(recipe.density * delta.numel())
    mask = _reference_top_k(delta.abs().reshape(-1), k).view_as(delta)
    if recipe.method == "ties" and recipe.alpha == 1.0:
        expected = torch.where(mask, tuned, base)
    else:
        expected = (recipe.alpha * torch.where(mask, delta, 0.0) + base.float()).to(tuned.dtype)
    expected = torch.cat([expected, extra])
    assert merged.dtype == tuned.dtype and merged.shape == expected.shape
    assert torch.equal(merged.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))
    assert stats.kept == k


@pytest.mark.parametrize("kind", ["bf16", "fp32"])
@pytest.mark.parametrize("recipe", [dict(method="dare", density=0.2, seed=3), dict(method="dare", density=0.5, alpha=0.7),
                                    dict(method="della", density=0.2, seed=1), dict(method="della", density=0.5, alpha=1.3)])
def test_dare_della_in_row_blocks(kind, recipe, monkeypatch):
    """DARE / DELLA merged a block of rows at a time (blocks of 7 rows, 1003 rows) give the bytes of the
    whole-tensor path; DARE also equals its formula written out here (keep each entry with probability K
    from the tensor's seeded generator, rescale the kept by 1/K), with extra vocabulary rows kept from tuned."""
    from lfm.methods import Recipe, merge_tensor, tensor_generator
    from lfm.methods.blocked import streams_rows

    recipe = Recipe(**recipe)
    base, tuned = _pair(kind, 1003 * 400)
    base, tuned = base.reshape(1003, 400), tuned.reshape(1003, 400)
    extra = torch.randn(2, 400).to(tuned.dtype)
    name = "model.embed_tokens.weight"
    whole, whole_stats, _ = merge_tensor(base, torch.cat([tuned, extra]), recipe, name=name)
    monkeypatch.setattr("lfm.methods.blocked.MERGE_BLOCK", 7 * 400)
    monkeypatch.setattr("lfm.methods.tensor.BLOCKED_FROM", 100)
    assert streams_rows(recipe, base)
    blocked, stats, _ = merge_tensor(base, torch.cat([tuned, extra]), recipe, name=name)
    bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731
    assert blocked.dtype == tuned.dtype and torch.equal(bits(blocked), bits(whole))
    assert stats.kept == whole_stats.kept
    if recipe.method == "dare":
        delta = tuned.float() - base.float()
        keep = torch.rand(delta.shape, generator=tensor_generator(recipe, name)) < recipe.density
        expected = (base.float() + torch.where(keep, delta, 0.0) * recipe.alpha / recipe.density).to(tuned.dtype)
        assert torch.equal(bits(blocked), bits(torch.cat([expected, extra])))
        assert stats.kept == int(keep.sum())


@pytest.mark.parametrize("recipe", [dict(method="ties"), dict(method="ties", density=1.0), dict(method="dare"),
                                    dict(method="della"), dict(method="neuron_fusion", neurons=0.0),
                                    dict(method="neuron_fusion"), dict(method="neuron_fusion", restore="replace")])
@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"])
@pytest.mark.parametrize("where", [0, 1000 * 400 - 1])
def test_block_merges_refuse_a_non_finite_delta(recipe, name, where, monkeypatch):
    """A NaN anywhere (first or last block) stops every block-by-block merge with the tensor named."""
    from lfm.methods import Recipe, merge_tensor

    monkeypatch.setattr("lfm.methods.blocked.MERGE_BLOCK", 7 * 400)
    monkeypatch.setattr("lfm.methods.tensor.BLOCKED_FROM", 100)
    base, tuned = _pair("fp32", 1000 * 400)
    tuned[where] = float("nan")
    with pytest.raises(ValueError, match=f"NaN in the delta of tensor '{name}'"):
        merge_tensor(base.reshape(1000, 400), tuned.reshape(1000, 400), Recipe(**recipe), name=name)


def _pairwise_sums(values, dim):
    """Sums along ``dim`` in docs/devices.md's order (what the engine's sums must follow, written out here by
    recursion): entries j and j + n/2 added, an odd last entry added to the first, until one is left."""
    n = values.shape[dim]
    if n == 1:
        return values.select(dim, 0)
    half = n // 2
    folded = values.narrow(dim, 0, half) + values.narrow(dim, half, half)
    if n % 2:
        folded.select(dim, 0).add_(values.select(dim, n - 1))
    return _pairwise_sums(folded, dim)


def _neuron_fusion_reference(base, tuned, recipe, axis):
    """Neu-S / Neu-P with the TIES suppressor written out on the whole tensor, independent of the engine:
    the top-K set by a stable sort, the top-M neurons by a stable sort of C(i), C'(i) of the suppressed delta
    (both summed in the contract's pairwise order), rescale by C(i)/C'(i) (replace where C'(i) = 0) or
    replace, then alpha, then + base."""
    delta = tuned.float() - base.float()
    k = int(recipe.density * delta.numel())
    mask = _reference_top_k(delta.abs().reshape(-1), k).view_as(delta)
    suppressed = torch.where(mask, delta, 0.0)
    scores = _pairwise_sums(delta.abs(), 1 - axis)
    located = torch.zeros(scores.numel(), dtype=torch.bool)
    located[torch.sort(-scores, stable=True).indices[: int(recipe.neurons * scores.numel())]] = True
    shape = (-1, 1) if axis == 0 else (1, -1)
    if recipe.restore == "replace":
        restored = torch.where(located.view(shape), delta, suppressed)
        n_fallback = 0
    else:
        after = _pairwise_sums(suppressed.abs(), 1 - axis)
        empty = located & (after == 0)
        ratio = torch.where(located & ~empty, scores / torch.where(after == 0, 1.0, after), 1.0)
        restored = torch.where(empty.view(shape), delta, suppressed * ratio.view(shape))
        n_fallback = int(empty.sum())
    if recipe.alpha != 1.0:
        restored = recipe.alpha * restored
    return (restored + base.float()).to(tuned.dtype), n_fallback


@pytest.mark.parametrize("kind", ["bf16", "fp32", "sparse"])
@pytest.mark.parametrize("module", ["mlp.gate_proj", "mlp.down_proj"])
@pytest.mark.parametrize("recipe", [dict(restore="rescale"), dict(restore="replace"), dict(restore="rescale", alpha=0.7),
                                    dict(restore="rescale", density=0.05, neurons=0.5),
                                    dict(restore="replace", density=1.0, alpha=1.3)])
def test_neuron_fusion_in_row_blocks(kind, module, recipe, monkeypatch):
    """Neu-S-TIES / Neu-P-TIES merged a block of rows at a time (7 rows of an odd width, so the threshold's
    ties straddle blocks) give the bytes of the whole-tensor path and of the formula written out here, for
    row neurons (gate) and column neurons (down), with the located neurons that lost every entry (the sparse
    pair) restored by replace."""
    from lfm.methods import Recipe, merge_tensor
    from lfm.methods.blocked import streams_neurons

    recipe = Recipe(method="neuron_fusion", suppress="ties", neurons=recipe.pop("neurons", 0.3),
                    density=recipe.pop("density", 0.2), **recipe)
    base, tuned = _pair(kind, 1003 * 401)
    base, tuned = base.reshape(1003, 401), tuned.reshape(1003, 401)
    name = f"model.layers.0.{module}.weight"
    whole, whole_stats, _ = merge_tensor(base, tuned, recipe, name=name)
    monkeypatch.setattr("lfm.methods.blocked.MERGE_BLOCK", 7 * 401)
    monkeypatch.setattr("lfm.methods.tensor.BLOCKED_FROM", 100)
    assert streams_neurons(recipe, name, base)
    blocked, stats, _ = merge_tensor(base, tuned, recipe, name=name)
    expected, n_fallback = _neuron_fusion_reference(base, tuned, recipe, axis=0 if "gate" in module else 1)
    bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731
    assert blocked.dtype == tuned.dtype and torch.equal(bits(blocked), bits(whole))
    assert torch.equal(bits(blocked), bits(expected))
    assert stats == whole_stats and stats.n_fallback_replace == n_fallback
    assert stats.kept == int(recipe.density * base.numel()) and stats.n_located == int(recipe.neurons * 401 if "down" in module else recipe.neurons * 1003)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(4096, 1536), (1003, 401), (5632, 2048), (14336, 512)])
def test_row_sums_of_row_blocks_are_the_whole_tensors(shape, threads):
    """What `merge_neuron_fusion_in_blocks` relies on for row neurons: torch sums each row of a block of rows
    bit for bit as it sums that row in the whole tensor (column sums over row blocks are not, so column
    neurons are summed whole)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values = torch.randn(shape, generator=torch.Generator().manual_seed(1)).abs()
        step = max(1, (1 << 20) // shape[1])
        blocks = torch.cat([values[i: i + step].sum(dim=1) for i in range(0, shape[0], step)])
        assert torch.equal(blocks, values.sum(dim=1))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("levels", [3, 8, 1000])
def test_one_pass_ties_finds_the_threshold_inside_a_huge_tie_group(levels):
    """Coarse deltas (|delta| takes only `levels` values, so the k-th largest sits in a tie group holding a
    large share of the entries, as in bf16 checkpoints): the one-pass TIES still finds the threshold in its
    band (no fall back to two passes) and gives the top-k set's bytes."""
    from lfm.methods.blocked import select_top_k_one_pass

    g = torch.Generator().manual_seed(levels)
    n = 600_000
    base = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
    steps = torch.randint(0, levels, (n,), generator=g).float() * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tuned = base + (steps * 2 ** -8).to(torch.bfloat16)
    k = int(0.2 * n)
    out = torch.empty_like(base)
    assert select_top_k_one_pass(base, tuned, k, "w", out)
    mask = _reference_top_k((tuned.float() - base.float()).abs(), k)
    assert torch.equal(out.view(torch.int16), torch.where(mask, tuned, base).view(torch.int16))
