"""lfm.methods against independent references written here from issue 2's spec and the paper's Eq. 3/4.

The references use numpy and plain loops over neurons; they call nothing from lfm. Deltas are
continuous random numbers (no ties in |delta|), so masks must match exactly; values are compared
with a float32 tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lfm.methods import Recipe, merge_delta, merge_tensor

# ------------------------------------------------------------------------------ references


def heavy_delta(shape, axis, seed, n_big=2, big=0.05):
    """[out, in] float32 delta whose neurons (along `axis`) have log-uniform scales and a few big ones."""
    rng = np.random.default_rng(seed)
    n = shape[axis]
    s = 10 ** rng.uniform(-4, -3, size=n)
    s[rng.permutation(n)[:n_big]] = big
    d = rng.standard_normal(shape) * (s[:, None] if axis == 0 else s[None, :])
    return torch.from_numpy(d.astype(np.float32))


def ref_top_mask(a: np.ndarray, k: int) -> np.ndarray:
    """True at the k largest |a| (flat), no ties expected."""
    flat = np.abs(a).ravel()
    order = np.argsort(-flat, kind="stable")
    m = np.zeros(flat.size, dtype=bool)
    m[order[:k]] = True
    return m.reshape(a.shape)


def ref_band_mask(a: np.ndarray, K: float, gamma: float) -> np.ndarray:
    """Breadcrumbs: drop the top int(gamma*n), keep the next int(K*n)."""
    n = a.size
    n_top, n_keep = int(gamma * n), int(K * n)
    n_top = min(n_top, n - n_keep)
    order = np.argsort(-np.abs(a).ravel(), kind="stable")
    m = np.zeros(n, dtype=bool)
    m[order[n_top:n_top + n_keep]] = True
    return m.reshape(a.shape)


def ref_scores(d: np.ndarray, axis: int) -> np.ndarray:
    """C(i) = sum_j |d_ij|, by a plain loop over neurons."""
    rows = d if axis == 0 else d.T
    return np.array([sum(abs(float(x)) for x in row) for row in rows])


def ref_locate(scores: np.ndarray, M: float, how: str) -> list[int]:
    k = int(M * len(scores))
    if how == "top":
        return list(np.argsort(-scores, kind="stable")[:k])
    if how == "bottom":
        return list(np.argsort(scores, kind="stable")[:k])
    raise ValueError(how)


def ref_neuron_fusion(delta, *, K, M, suppress, restore, alpha=1.0, gamma=0.01, axis=0, located=None, how="top"):
    """Eq. 3 (replace) / Eq. 4 (rescale) with plain loops. Returns (new_delta, located, n_fallback).

    suppress: ties | breadcrumbs mask at K (alpha applied to the final delta), or task_arithmetic:
    alpha * delta (alpha is the suppressor). Located neurons always come back to their full delta
    (replace) or to C'(i) = C(i) x (rescale, alpha not re-applied for task_arithmetic).
    """
    d = delta.double().numpy()
    if suppress == "ties":
        s = d * ref_top_mask(d, int(K * d.size))
    elif suppress == "breadcrumbs":
        s = d * ref_band_mask(d, K, gamma)
    elif suppress == "task_arithmetic":
        s = alpha * d
    else:
        raise ValueError(suppress)
    D = d if axis == 0 else d.T
    S = (s if axis == 0 else s.T).copy()
    C = ref_scores(d, axis)
    if located is None:
        located = ref_locate(C, M, how)
    fallback = 0
    for i in located:
        if restore == "replace":
            S[i] = D[i]
        else:
            c_after = float(np.abs(S[i]).sum())
            if c_after == 0.0:
                S[i] = D[i]
                fallback += 1
            else:
                S[i] = S[i] * (C[i] / c_after)
    out = S if axis == 0 else S.T
    if suppress != "task_arithmetic":
        out = alpha * out
    return out, sorted(int(i) for i in located), fallback


def close(got: torch.Tensor, want: np.ndarray, what: str = ""):
    got = got.double().numpy()
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(got == 0, want == 0, err_msg=f"{what}: zero pattern differs")
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12, err_msg=what)


SHAPES = [((32, 32), 0), ((16, 32), 0), ((64, 32), 0), ((32, 64), 1), ((32, 32), 1)]  # q, k(GQA), up, down, o


# ------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("alpha", [1.0, 0.6, 1.7])
def test_task_arithmetic_is_alpha_delta(alpha):
    d = heavy_delta((32, 64), 1, seed=1)
    out, st = merge_delta(d, Recipe(method="task_arithmetic", alpha=alpha), neuron_axis=1)
    close(out, alpha * d.double().numpy())
    assert st.kept == d.numel()


@pytest.mark.parametrize("K", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_ties_keeps_exactly_int_K_numel_largest(K, alpha):
    d = heavy_delta((64, 32), 0, seed=2)
    out, st = merge_delta(d, Recipe(method="ties", density=K, alpha=alpha), neuron_axis=0)
    k = int(K * d.numel())
    assert int((out != 0).sum()) == k == st.kept
    close(out, alpha * d.double().numpy() * ref_top_mask(d.numpy(), k), f"ties K={K}")
    assert st.kept_fraction == pytest.approx(k / d.numel())


def test_ties_K1_is_the_delta():
    d = heavy_delta((16, 32), 0, seed=3)
    out, _ = merge_delta(d, Recipe(method="ties", density=1.0), neuron_axis=0)
    assert torch.equal(out, d)


@pytest.mark.parametrize("K,gamma", [(0.2, 0.01), (0.1, 0.05), (0.5, 0.0), (0.95, 0.1)])
def test_breadcrumbs_drops_top_gamma_keeps_next_K(K, gamma):
    d = heavy_delta((64, 32), 0, seed=4)
    out, st = merge_delta(d, Recipe(method="breadcrumbs", density=K, gamma=gamma, alpha=0.9), neuron_axis=None)
    n = d.numel()
    mask = ref_band_mask(d.numpy(), K, gamma)
    assert int(mask.sum()) == int(K * n) == int((out != 0).sum()) == st.kept
    close(out, 0.9 * d.double().numpy() * mask, f"breadcrumbs K={K} gamma={gamma}")
    if K + gamma <= 1:  # the int(gamma*n) largest are all gone
        top = ref_top_mask(d.numpy(), int(gamma * n))
        assert not (out.numpy()[top] != 0).any()


def test_hard_is_zero_delta_and_base():
    d = heavy_delta((32, 32), 0, seed=5)
    out, st = merge_delta(d, Recipe(method="hard"), neuron_axis=0)
    assert torch.count_nonzero(out) == 0 and st.kept == 0
    base = torch.randn(32, 32)
    merged, *_ = merge_tensor(base, base + d, Recipe(method="hard"), name="model.layers.0.self_attn.q_proj.weight")
    assert torch.equal(merged, base)
    norm_b = torch.randn(32)
    merged, *_ = merge_tensor(norm_b, norm_b + 1e-3, Recipe(method="hard"), name="model.norm.weight")
    assert torch.equal(merged, norm_b)


# ------------------------------------------------------------------------------ DARE / DELLA


def _dare(d, **kw):
    r = Recipe(method="dare", **kw)
    return merge_delta(d, r, neuron_axis=None, generator=torch.Generator().manual_seed(kw.get("seed", 0)))


@pytest.mark.parametrize("K", [0.1, 0.3, 0.8])
def test_dare_inverse_keeps_bernoulli_K_and_rescales_by_1_over_K(K):
    d = heavy_delta((200, 300), 0, seed=6)
    out, st = _dare(d, density=K, alpha=0.5, seed=3)
    kept = out != 0
    n = d.numel()
    frac = float(kept.sum()) / n
    assert abs(frac - K) < 5 * (K * (1 - K) / n) ** 0.5, frac
    assert st.kept == int(kept.sum())
    np.testing.assert_allclose(out[kept].double().numpy(), (0.5 * d[kept].double() / K).numpy(), rtol=2e-6)
    # unbiased: E[out] = alpha * d  (check on the sum of |d| over kept vs all)
    ratio = float(out.abs().sum()) / float(0.5 * d.abs().sum())
    assert abs(ratio - 1) < 0.05


def test_dare_l1_matches_l1_norm():
    d = heavy_delta((100, 100), 0, seed=7)
    out, _ = _dare(d, density=0.3, rescale="l1", alpha=1.0, seed=1)
    kept = out != 0
    assert float(out.abs().sum()) == pytest.approx(float(d.abs().sum()), rel=1e-5)
    factor = float(d.abs().sum()) / float(d[kept].abs().sum())
    np.testing.assert_allclose(out[kept].numpy(), d[kept].numpy() * factor, rtol=1e-5)


@pytest.mark.parametrize("method", ["dare", "della"])
def test_seed_determinism(method):
    d = heavy_delta((64, 64), 0, seed=8)

    def run(seed):
        r = Recipe(method=method, density=0.3, seed=seed)
        return merge_delta(d, r, neuron_axis=0, generator=torch.Generator().manual_seed(seed))[0]

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # merge_tensor seeds per (seed, name) by itself
    base = torch.randn(64, 64)
    r = Recipe(method=method, density=0.3, seed=5)
    m1, *_ = merge_tensor(base, base + d, r, name="model.layers.0.mlp.up_proj.weight")
    m2, *_ = merge_tensor(base, base + d, r, name="model.layers.0.mlp.up_proj.weight")
    m3, *_ = merge_tensor(base, base + d, Recipe(method=method, density=0.3, seed=6), name="model.layers.0.mlp.up_proj.weight")
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)


def ref_della_probs(d: np.ndarray, K: float, eps: float) -> np.ndarray:
    """Per row: p = K - eps + 2 eps * rank/(n_cols-1), rank 0 = smallest |d| in the row."""
    p = np.empty_like(d, dtype=np.float64)
    for i, row in enumerate(np.abs(d)):
        ranks = np.empty(row.size)
        ranks[np.argsort(row, kind="stable")] = np.arange(row.size)
        p[i] = (K - eps) + 2 * eps * ranks / (row.size - 1)
    return p


def test_della_inverse_rescale_is_1_over_p_and_keep_rate_follows_rank():
    K, eps, alpha = 0.4, 0.2, 0.8
    d = heavy_delta((400, 200), 0, seed=9)
    out, st = merge_delta(d, Recipe(method="della", density=K, epsilon=eps, alpha=alpha), neuron_axis=0,
                          generator=torch.Generator().manual_seed(0))
    kept = (out != 0).numpy()
    p = ref_della_probs(d.numpy(), K, eps)
    np.testing.assert_allclose(out.double().numpy()[kept], alpha * d.double().numpy()[kept] / p[kept], rtol=1e-5)
    n = d.numel()
    assert abs(kept.mean() - K) < 5 * (K * (1 - K) / n) ** 0.5
    # keep rate of the smallest fifth of each row ~ K - 0.8 eps, the largest fifth ~ K + 0.8 eps
    lo, hi = p < K - 0.6 * eps, p > K + 0.6 * eps
    assert abs(kept[lo].mean() - p[lo].mean()) < 0.02
    assert abs(kept[hi].mean() - p[hi].mean()) < 0.02
    assert kept[hi].mean() - kept[lo].mean() > 1.4 * eps


def test_della_l1():
    d = heavy_delta((50, 80), 0, seed=10)
    out, _ = merge_delta(d, Recipe(method="della", density=0.3, epsilon=0.1, rescale="l1"), neuron_axis=0,
                         generator=torch.Generator().manual_seed(1))
    assert float(out.abs().sum()) == pytest.approx(float(d.abs().sum()), rel=1e-5)


# ------------------------------------------------------------------------------ Neuron-Fusion


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("suppress", ["ties", "breadcrumbs", "task_arithmetic"])
@pytest.mark.parametrize("restore", ["replace", "rescale"])
@pytest.mark.parametrize("how", ["top", "bottom"])
def test_neuron_fusion_matches_eq3_eq4(shape, axis, suppress, restore, how):
    d = heavy_delta(shape, axis, seed=hash((shape, axis)) % 1000)
    K, M, alpha = 0.2, 0.25, 0.9
    r = Recipe(method="neuron_fusion", density=K, neurons=M, suppress=suppress, restore=restore, alpha=alpha,
               gamma=0.02, locate=how)
    out, st = merge_delta(d, r, neuron_axis=axis)
    want, located, fallback = ref_neuron_fusion(d, K=K, M=M, suppress=suppress, restore=restore, alpha=alpha,
                                                gamma=0.02, axis=axis, how=how)
    close(out, want, f"{suppress}/{restore}/{how} {shape} axis {axis}")
    n = shape[axis]
    assert st.n_located == int(M * n) == len(located)
    assert st.n_neurons == n
    assert st.n_fallback_replace == fallback


@pytest.mark.parametrize("suppress", ["ties", "breadcrumbs"])
def test_rescale_restores_change_score_of_located_neurons(suppress):
    d = heavy_delta((64, 32), 0, seed=12)
    alpha = 1.3
    r = Recipe(method="neuron_fusion", density=0.1, neurons=0.3, suppress=suppress, restore="rescale", alpha=alpha)
    out, _ = merge_delta(d, r, neuron_axis=0)
    C = ref_scores(d.double().numpy(), 0)
    C_new = ref_scores(out.double().numpy(), 0)
    for i in ref_locate(C, 0.3, "top"):
        assert C_new[i] == pytest.approx(alpha * C[i], rel=1e-5)
    # replace: located neurons are exactly alpha * delta
    out_p, _ = merge_delta(d, Recipe(method="neuron_fusion", density=0.1, neurons=0.3, suppress=suppress,
                                     restore="replace", alpha=alpha), neuron_axis=0)
    for i in ref_locate(C, 0.3, "top"):
        np.testing.assert_allclose(out_p[i].numpy(), alpha * d[i].numpy(), rtol=1e-6)


def test_rescale_falls_back_to_replace_when_nothing_survives_and_counts_it():
    # row 0 has the largest C(i) (8 x 0.5 = 4) but no entry in the global top-3; rows 1-3 hold the top-3.
    d = torch.full((4, 8), 0.01)
    d[0] = 0.5
    d[1, 2], d[2, 5], d[3, 7] = 3.0, 2.5, 2.0
    r = Recipe(method="neuron_fusion", density=3 / 32, neurons=0.25, suppress="ties", restore="rescale")
    out, st = merge_delta(d, r, neuron_axis=0)
    assert st.n_located == 1 and st.n_fallback_replace == 1
    assert torch.equal(out[0], d[0])
    want, located, fallback = ref_neuron_fusion(d, K=3 / 32, M=0.25, suppress="ties", restore="rescale")
    assert located == [0] and fallback == 1
    close(out, want)
    # columns (o/down): the same case transposed
    out_t, st_t = merge_delta(d.T.contiguous(), r, neuron_axis=1)
    assert st_t.n_fallback_replace == 1 and torch.equal(out_t, out.T)


def test_M0_is_suppress_only_stage():
    d = heavy_delta((64, 32), 0, seed=13)
    for sup, method in (("ties", "ties"), ("breadcrumbs", "breadcrumbs")):
        nf, st = merge_delta(d, Recipe(method="neuron_fusion", neurons=0.0, suppress=sup, density=0.3, alpha=0.8),
                             neuron_axis=0)
        plain, _ = merge_delta(d, Recipe(method=method, density=0.3, alpha=0.8), neuron_axis=0)
        assert torch.equal(nf, plain)
        assert st.n_located == 0
    nf, _ = merge_delta(d, Recipe(method="neuron_fusion", neurons=0.0, suppress="task_arithmetic", alpha=0.6),
                        neuron_axis=0)
    close(nf, 0.6 * d.double().numpy())


def test_M1_replace_gives_back_alpha_delta():
    d = heavy_delta((16, 32), 0, seed=14)
    out, st = merge_delta(d, Recipe(method="neuron_fusion", neurons=1.0, restore="replace", alpha=0.5),
                          neuron_axis=0)
    assert st.n_located == 16
    close(out, 0.5 * d.double().numpy())


def test_neuron_fusion_non_linear_tensor_is_only_suppressed():
    d = heavy_delta((96, 32), 0, seed=15)  # e.g. embed_tokens
    nf, st = merge_delta(d, Recipe(method="neuron_fusion", density=0.2, neurons=0.5), neuron_axis=None)
    ties, _ = merge_delta(d, Recipe(method="ties", density=0.2), neuron_axis=None)
    assert torch.equal(nf, ties) and st.n_located == 0


@pytest.mark.parametrize("restore", ["replace", "rescale"])
def test_locate_random_restores_int_M_n_neurons_seeded(restore):
    d = heavy_delta((64, 32), 0, seed=16)
    r = Recipe(method="neuron_fusion", density=0.2, neurons=0.25, restore=restore, locate="random", seed=1)

    def run(seed):
        return merge_delta(d, r, neuron_axis=0, generator=torch.Generator().manual_seed(seed))

    out, st = run(1)
    assert st.n_located == 16
    assert torch.equal(out, run(1)[0])
    # recover the located set from a replace run: rows that kept every entry
    # (K so small that no unlocated row of 32 entries can survive whole)
    rp = Recipe(method="neuron_fusion", density=0.01, neurons=0.25, restore="replace", locate="random", seed=1)
    outs = [merge_delta(d, rp, neuron_axis=0, generator=torch.Generator().manual_seed(s))[0] for s in (1, 2)]
    sets = [sorted(int(i) for i in torch.nonzero((o != 0).all(dim=1)).flatten()) for o in outs]
    assert len(sets[0]) == 16 and sets[0] != sets[1]
    assert sets[0] != sorted(ref_locate(ref_scores(d.double().numpy(), 0), 0.25, "top"))
    want, _, _ = ref_neuron_fusion(d, K=0.2, M=0.25, suppress="ties", restore=restore, located=sets[0])
    close(out, want, "random locate")


# ------------------------------------------------------------------------------ merge_tensor policies


def test_merge_tensor_extra_vocab_rows_kept_from_tuned():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(96, 32, generator=g)
    tuned = torch.cat([base + 1e-3 * torch.randn(96, 32, generator=g), torch.randn(4, 32, generator=g)])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        merged, st, _ = merge_tensor(base, tuned, Recipe(method="ties", density=0.3, alpha=0.5), name=name)
        assert merged.shape == (100, 32)
        assert torch.equal(merged[96:], tuned[96:])
        d = (tuned[:96] - base).double().numpy()
        want = base.double().numpy() + 0.5 * d * ref_top_mask(d, int(0.3 * d.size))
        np.testing.assert_allclose(merged[:96].double().numpy(), want, rtol=1e-6, atol=1e-7)


def test_merge_tensor_shape_mismatch_names_tensor():
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        merge_tensor(torch.zeros(64, 32), torch.zeros(64, 33), Recipe(), name="model.layers.1.mlp.up_proj.weight")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_merge_tensor_non_finite_delta_names_tensor(bad):
    t = torch.zeros(16, 32)
    t[3, 4] = bad
    with pytest.raises(ValueError, match=r"v_proj"):
        merge_tensor(torch.zeros(16, 32), t, Recipe(), name="model.layers.1.self_attn.v_proj.weight")


def test_merge_tensor_others_and_keep_overrides():
    g = torch.Generator().manual_seed(1)
    b, t = torch.randn(32, generator=g), torch.randn(32, generator=g)
    name = "model.layers.0.input_layernorm.weight"
    assert torch.equal(merge_tensor(b, t, Recipe(method="ties", others="tuned"), name=name)[0], t)
    assert torch.equal(merge_tensor(b, t, Recipe(method="ties", others="base"), name=name)[0], b)
    m, *_ = merge_tensor(b, t, Recipe(method="ties", density=0.5, others="method"), name=name)
    d = (t - b).double().numpy()
    np.testing.assert_allclose(m.double().numpy(), b.double().numpy() + d * ref_top_mask(d, 16), rtol=1e-6, atol=1e-7)
    # linear weights are merged whatever `others` says; regex overrides win
    bw, tw = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    up = "model.layers.1.mlp.up_proj.weight"
    m, *_ = merge_tensor(bw, tw, Recipe(method="ties", density=0.2, others="tuned"), name=up)
    assert not torch.equal(m, tw)
    assert torch.equal(merge_tensor(bw, tw, Recipe(keep_base=(r"layers\.1\.mlp",)), name=up)[0], bw)
    assert torch.equal(merge_tensor(bw, tw, Recipe(keep_tuned=(r"up_proj",)), name=up)[0], tw)


def test_merge_tensor_bf16_ties_K1_is_tuned_exactly_and_keeps_dtype():
    g = torch.Generator().manual_seed(2)
    b = (0.02 * torch.randn(64, 32, generator=g)).bfloat16()
    t = (b.float() + 1e-3 * torch.randn(64, 32, generator=g)).bfloat16()
    m, *_ = merge_tensor(b, t, Recipe(method="ties", density=1.0), name="model.layers.0.mlp.gate_proj.weight")
    assert m.dtype == torch.bfloat16
    assert torch.equal(m, t)
    m32, *_ = merge_tensor(b.float(), t.float(), Recipe(method="ties", density=1.0), name="model.layers.0.mlp.gate_proj.weight")
    torch.testing.assert_close(m32, t.float(), rtol=0, atol=1e-8)


def test_merge_tensor_does_not_modify_inputs():
    b, t = torch.randn(32, 32), torch.randn(32, 32)
    b0, t0 = b.clone(), t.clone()
    for method in ("ties", "neuron_fusion", "dare", "breadcrumbs"):
        merge_tensor(b, t, Recipe(method=method), name="model.layers.0.self_attn.o_proj.weight")
    assert torch.equal(b, b0) and torch.equal(t, t0)


# ------------------------------------------------------------------------------ recipe validation


@pytest.mark.parametrize("kw,match", [
    (dict(density=0.0), "density"), (dict(density=1.2), "density"), (dict(density=-0.1), "density"),
    (dict(neurons=-0.1), "neurons"), (dict(neurons=1.01), "neurons"),
    (dict(method="magic"), "magic"), (dict(suppress="dare"), "suppress"), (dict(restore="x"), "restore"),
    (dict(locate="middle"), "locate"),
])
def test_recipe_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kw)


def test_recipe_M0_and_K1_are_valid():
    Recipe(neurons=0.0)
    Recipe(density=1.0)


@pytest.mark.parametrize("alias,method,suppress,restore", [
    ("neu-p-ties", "neuron_fusion", "ties", "replace"),
    ("neu-s-ties", "neuron_fusion", "ties", "rescale"),
    ("neu-p-bread", "neuron_fusion", "breadcrumbs", "replace"),
    ("neu-s-bread", "neuron_fusion", "breadcrumbs", "rescale"),
    ("neu-p-taska", "neuron_fusion", "task_arithmetic", "replace"),
    ("neu-s-taska", "neuron_fusion", "task_arithmetic", "rescale"),
])
def test_paper_aliases(alias, method, suppress, restore):
    r = Recipe.from_name(alias, density=0.3)
    assert (r.method, r.suppress, r.restore, r.density) == (method, suppress, restore, 0.3)


@pytest.mark.parametrize("alias,method", [("ta", "task_arithmetic"), ("ties", "ties"), ("bread", "breadcrumbs"),
                                          ("dare", "dare"), ("della", "della"), ("hard", "hard")])
def test_baseline_aliases(alias, method):
    assert Recipe.from_name(alias).method == method


def test_label_names_the_locate_control_and_keeps_the_paper_label():
    assert Recipe(density=0.2, neurons=0.3).label == "Neu-S-TIES K=0.2 M=0.3"
    labels = {mode: Recipe(locate=mode, restore="replace").label for mode in ("top", "random", "bottom")}
    assert labels == {"top": "Neu-P-TIES K=0.2 M=0.3", "random": "Neu-P-TIES K=0.2 M=0.3 locate=random",
                      "bottom": "Neu-P-TIES K=0.2 M=0.3 locate=bottom"}
