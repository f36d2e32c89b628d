"""lfm.neurons: neuron axes, C(i) (paper Eq. 2), Locate counts, tail statistics — against numpy / hand formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lfm.neurons import layer_of, locate, module_of, neuron_axis, neuron_scores, tail_stats

ROWS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
COLS = ("o_proj", "down_proj")


@pytest.mark.parametrize("module", ROWS + COLS)
@pytest.mark.parametrize("prefix", ["model.layers.3.self_attn.", "model.layers.3.mlp.",
                                    "language_model.model.layers.3.self_attn.", "model.language_model.layers.3.mlp."])
def test_neuron_axis_per_module(module, prefix):
    name = f"{prefix}{module}.weight"
    assert neuron_axis(name) == (0 if module in ROWS else 1)
    assert module_of(name) == module
    assert layer_of(name) == 3


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                                  "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                                  "model.layers.0.self_attn.q_proj.bias"])
def test_non_linear_tensors_have_no_neuron_axis(name):
    assert neuron_axis(name) is None and module_of(name) is None


def test_layer_of_none_outside_layers():
    assert layer_of("model.embed_tokens.weight") is None
    assert layer_of("model.layers.12.mlp.up_proj.weight") == 12


def test_scores_hand_case():
    d = torch.tensor([[1.0, -2.0, 3.0], [0.0, -0.5, 0.25]])
    assert neuron_scores(d, 0).tolist() == [6.0, 0.75]  # rows (q/k/v/gate/up)
    assert neuron_scores(d, 1).tolist() == [1.0, 2.5, 3.25]  # columns (o/down)


@pytest.mark.parametrize("shape,axis", [((64, 32), 0), ((32, 64), 1), ((16, 32), 0)])
def test_scores_vs_loop(shape, axis):
    rng = np.random.default_rng(0)
    d = rng.standard_normal(shape).astype(np.float32)
    got = neuron_scores(torch.from_numpy(d), axis).double().numpy()
    n = shape[axis]
    want = [sum(abs(float(d[i, j] if axis == 0 else d[j, i])) for j in range(shape[1 - axis])) for i in range(n)]
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_scores_bf16_input_returns_float32():
    d = torch.randn(8, 4).bfloat16()
    s = neuron_scores(d, 0)
    assert s.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), np.abs(d.float().numpy()).sum(1), rtol=1e-6)


def test_gqa_k_v_scored_within_own_matrix(zoo):
    """k/v of the GQA fixture have n_kv_heads*head_dim = 16 rows vs q's 32: each gets its own 16 scores and
    top-M% is int(M*16), not a share of q's neurons."""
    import lfm
    from fixtures import read_state

    scores = lfm.neuron_scores(zoo.base, zoo.llava)
    tuned, base = read_state(zoo.llava), read_state(zoo.base)
    for layer in range(2):
        for module, n in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16), ("o_proj", 32),
                          ("gate_proj", 64), ("up_proj", 64), ("down_proj", 64)):
            group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            name = f"model.layers.{layer}.{group}.{module}.weight"
            assert name in scores, sorted(scores)[:5]
            assert scores[name].shape == (n,), name
            d = (tuned[f"language_model.{name}"].double() - base[name].double()).numpy()
            axis = 1 if module in COLS else 0
            np.testing.assert_allclose(scores[name].double().numpy(), np.abs(d).sum(axis=1 - axis), rtol=1e-5)
    k = scores["model.layers.0.self_attn.k_proj.weight"]
    assert int(locate(k, 0.3).sum()) == int(0.3 * 16) == 4


@pytest.mark.parametrize("n,M", [(32, 0.3), (16, 0.3), (64, 0.01), (64, 0.02), (64, 1.0), (64, 0.0), (10, 0.55)])
@pytest.mark.parametrize("how", ["top", "random", "bottom"])
def test_locate_counts(n, M, how):
    s = torch.from_numpy(np.random.default_rng(n).random(n).astype(np.float32))
    m = locate(s, M, how, generator=torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.shape == (n,)
    assert int(m.sum()) == int(M * n)


def test_locate_top_bottom_sets():
    s = torch.tensor([0.5, 3.0, 0.1, 2.0, 9.0, 0.2, 1.0, 0.3, 0.05, 4.0])
    assert sorted(torch.nonzero(locate(s, 0.3, "top")).flatten().tolist()) == [1, 4, 9]
    assert sorted(torch.nonzero(locate(s, 0.3, "bottom")).flatten().tolist()) == [2, 5, 8]
    m = locate(s, 0.5, "top")
    assert s[m].min() > s[~m].max()


def test_locate_random_seeded_and_not_top():
    s = torch.arange(100, dtype=torch.float32)
    a = locate(s, 0.2, "random", generator=torch.Generator().manual_seed(3))
    b = locate(s, 0.2, "random", generator=torch.Generator().manual_seed(3))
    c = locate(s, 0.2, "random", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, locate(s, 0.2, "top"))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_locate_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="M"):
        locate(torch.ones(4), bad)


def test_locate_rejects_bad_mode():
    with pytest.raises(ValueError, match="middle"):
        locate(torch.ones(4), 0.5, "middle")


@pytest.mark.parametrize("n", [7, 64, 1000])
def test_tail_stats_vs_numpy(n):
    rng = np.random.default_rng(n)
    s = np.abs(rng.standard_cauchy(n)).astype(np.float32)
    st = tail_stats(torch.from_numpy(s))
    s64 = s.astype(np.float64)
    desc = np.sort(s64)[::-1]
    assert st["mean"] == pytest.approx(s64.mean(), rel=1e-5)
    assert st["max"] == pytest.approx(s64.max(), rel=1e-6)
    assert st["median"] == pytest.approx(np.median(s64), rel=1e-5)
    assert st["max_over_median"] == pytest.approx(s64.max() / np.median(s64), rel=1e-5)
    assert st["top1_share"] == pytest.approx(desc[:max(1, int(0.01 * n))].sum() / s64.sum(), rel=1e-5)
    assert st["top10_share"] == pytest.approx(desc[:max(1, int(0.10 * n))].sum() / s64.sum(), rel=1e-5)
    k = max(1, int(0.01 * n))  # top1_lift: mean C(i) of the top k over the mean C(i) of all
    assert st["top1_lift"] == pytest.approx(desc[:k].mean() / s64.mean(), rel=1e-5)


@pytest.mark.parametrize("n", [48, 96, 256, 1000])
def test_top1_lift_is_one_for_uniform_scores_at_any_size(n):
    """No concentration reads 1 whatever the module size, while top1_share's baseline is k/n."""
    st = tail_stats(torch.ones(n))
    assert st["top1_lift"] == pytest.approx(1.0) and st["top1_share"] == pytest.approx(max(1, n // 100) / n)


def test_fixture_has_heavy_tail(zoo):
    """The fixture's big neurons make Locate meaningful: the top neurons of every linear matrix stand out."""
    import lfm

    scores = lfm.neuron_scores(zoo.base, zoo.llava)
    linear = {k: v for k, v in scores.items() if module_of(k)}
    assert len(linear) == 14
    for name, s in linear.items():
        assert tail_stats(s)["max_over_median"] > 5, name
