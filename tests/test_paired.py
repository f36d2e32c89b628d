"""Paired statistics (lfm.evaluate.paired) against independent references: scipy's exact binomial test and
bootstrap, and the normal approximation of a stratified mean difference."""

from __future__ import annotations

import numpy as np
import pytest

from lfm.evaluate.paired import bootstrap_oa, mcnemar, mcnemar_p, outcomes

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("a_only, b_only", [(0, 0), (0, 1), (1, 1), (0, 6), (2, 9), (7, 3), (20, 31), (60, 40),
                                            (150, 149)])
def test_mcnemar_is_scipys_exact_binomial_test(a_only, b_only):
    n = a_only + b_only
    expected = 1.0 if n == 0 else stats.binomtest(min(a_only, b_only), n, 0.5).pvalue
    assert mcnemar_p(a_only, b_only) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_counts_the_discordant_items():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.7, rng.random(300) < 0.6
    r = mcnemar("".join("1" if x else "0" for x in a), b.tolist())
    assert (r["items"], r["a_only"], r["b_only"]) == (300, int((a & ~b).sum()), int((b & ~a).sum()))
    with pytest.raises(ValueError, match="same items"):
        mcnemar("101", "10")
    with pytest.raises(ValueError, match="0 and 1"):
        outcomes("10x")


def _bits(x) -> str:
    return "".join("1" if v else "0" for v in x)


def test_one_task_bootstrap_matches_scipys_paired_percentile_bootstrap():
    """With one language and one visual task that are identical for both models except on the visual task,
    OA(a) - OA(b) = (acc_v(a) - acc_v(b)) / 2: the same interval as scipy's paired bootstrap of that."""
    rng = np.random.default_rng(7)
    n = 300
    a, b = rng.random(n) < 0.75, rng.random(n) < 0.62
    same = _bits(rng.random(n) < 0.5)
    r = bootstrap_oa({"l": same, "v": _bits(a)}, {"l": same, "v": _bits(b)}, ["l"], ["v"], iters=20_000, seed=3)
    ref = stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: (x.mean(axis) - y.mean(axis)) / 2,
                          paired=True, vectorized=True, method="percentile", n_resamples=20_000,
                          rng=np.random.default_rng(11)).confidence_interval
    assert r["diff"] == pytest.approx((a.mean() - b.mean()) / 2)
    # two Monte-Carlo estimates of the same percentiles: equal within their resampling noise (~0.3 points)
    assert r["low"] == pytest.approx(ref.low, abs=0.005) and r["high"] == pytest.approx(ref.high, abs=0.005)


def test_oa_bootstrap_is_stratified_by_task_and_matches_the_normal_approximation():
    """Var(dOA) = 1/4 (sum_l var(d_l)/n_l / L^2 + sum_v var(d_v)/n_v / V^2), d = per-item paired differences
    of one task; the percentile interval of 20000 resamples is diff +- 1.96 sd within a few percent."""
    rng = np.random.default_rng(0)
    lang, vis, n = ["l1", "l2", "l3"], ["v1", "v2", "v3", "v4"], 400
    a, b, var = {}, {}, 0.0
    for t, pa, pb in zip(lang + vis, [.6, .5, .9, .8, .95, .7, .5], [.55, .5, .85, .6, .9, .72, .45]):
        x, y = rng.random(n) < pa, rng.random(n) < pb
        a[t], b[t] = _bits(x), _bits(y)
        d = x.astype(float) - y.astype(float)
        var += d.var() / n / (len(lang) if t in lang else len(vis)) ** 2
    sd = 0.5 * np.sqrt(var)
    r = bootstrap_oa(a, b, lang, vis, iters=20_000, seed=0)
    la = np.mean([outcomes(a[t]).mean() - outcomes(b[t]).mean() for t in lang])
    va = np.mean([outcomes(a[t]).mean() - outcomes(b[t]).mean() for t in vis])
    assert r["diff"] == pytest.approx((la + va) / 2)
    assert r["low"] == pytest.approx(r["diff"] - 1.96 * sd, abs=0.08 * sd + 1e-3)
    assert r["high"] == pytest.approx(r["diff"] + 1.96 * sd, abs=0.08 * sd + 1e-3)
    assert bootstrap_oa(a, b, lang, vis, iters=2000, seed=5) == bootstrap_oa(a, b, lang, vis, iters=2000, seed=5)
    assert bootstrap_oa(a, b, lang, vis, iters=2000, seed=5) != bootstrap_oa(a, b, lang, vis, iters=2000, seed=6)


def test_identical_models_have_a_zero_width_interval_and_p_one():
    bits = {"l": "1100101", "v": "0111"}
    r = bootstrap_oa(bits, bits, ["l"], ["v"], iters=500)
    assert (r["diff"], r["low"], r["high"]) == (0.0, 0.0, 0.0)
    assert mcnemar(bits["l"] + bits["v"], bits["l"] + bits["v"])["p"] == 1.0
    with pytest.raises(ValueError, match="same, non-empty items"):
        bootstrap_oa({"l": "1", "v": "01"}, {"l": "1", "v": "0"}, ["l"], ["v"])
