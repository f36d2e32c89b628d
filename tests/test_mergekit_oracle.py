"""mergekit 0.1.5 as a peer oracle, on the LLM-to-LLM fixture (the pair mergekit can map).

mergekit's in-process API is `mergekit.merge_methods.api.merge_state_dicts(models, method, parameters=...,
base=...)`. Its GeneralizedTaskArithmeticMerge computes, per tensor and with one tuned model:

    delta = sparsify(tuned - base, density, method, gamma/epsilon, rescale_norm=l1 if rescale else None)
    delta *= weight ; TIES/DELLA: sign mask (a no-op with one model) ; normalize: delta /= weight*mask (TIES, DELLA)
    out = base + lambda * delta

So TIES with `normalize` (its default) divides `weight` away: lfm's alpha corresponds to mergekit's
`lambda`, not `weight` (tested below). TA / TIES / Breadcrumbs must agree element-wise; DARE
(`dare_linear`, l1 rescale by default) and DELLA (`della`, l1 rescale by default) agree in
distribution with lfm's `rescale="l1"`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lfm
from fixtures import canonical_from_tuned_key, read_state

mk_api = pytest.importorskip("mergekit.merge_methods.api")


@pytest.fixture(scope="module")
def llm_pair(zoo):
    return zoo.base, zoo.llm_tuned, read_state(zoo.base), read_state(zoo.llm_tuned)


def mergekit(base_sd, tuned_sd, method, **params):
    shared = {k: params.pop(k) for k in ("lambda", "normalize", "rescale") if k in params}
    return mk_api.merge_state_dicts({"base": base_sd, "tuned": tuned_sd}, method, base="base",
                                    parameters={**params, **shared})


def lfm_sd(base_dir, tuned_dir, **recipe):
    return lfm.merged_state_dict(base_dir, tuned_dir, lfm.Recipe(**recipe))


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_task_arithmetic_matches_mergekit(llm_pair, alpha):
    bdir, tdir, bsd, tsd = llm_pair
    assert_same(lfm_sd(bdir, tdir, method="task_arithmetic", alpha=alpha),
                mergekit(bsd, tsd, "task_arithmetic", weight=alpha))


@pytest.mark.parametrize("K", [0.1, 0.2, 0.5])
def test_ties_matches_mergekit(llm_pair, K):
    bdir, tdir, bsd, tsd = llm_pair
    assert_same(lfm_sd(bdir, tdir, method="ties", density=K), mergekit(bsd, tsd, "ties", density=K, weight=1.0))


def test_ties_alpha_is_mergekit_lambda_not_weight(llm_pair):
    """mergekit's TIES normalises by the weight: weight=0.5 gives the full delta, lambda=0.5 the half."""
    bdir, tdir, bsd, tsd = llm_pair
    ours = lfm_sd(bdir, tdir, method="ties", density=0.2, alpha=0.5)
    assert_same(ours, mergekit(bsd, tsd, "ties", density=0.2, weight=1.0, **{"lambda": 0.5}))
    full = mergekit(bsd, tsd, "ties", density=0.2, weight=0.5)
    assert_same(lfm_sd(bdir, tdir, method="ties", density=0.2, alpha=1.0), full)


@pytest.mark.parametrize("K,gamma", [(0.2, 0.01), (0.3, 0.05)])
def test_breadcrumbs_matches_mergekit(llm_pair, K, gamma):
    bdir, tdir, bsd, tsd = llm_pair
    assert_same(lfm_sd(bdir, tdir, method="breadcrumbs", density=K, gamma=gamma),
                mergekit(bsd, tsd, "breadcrumbs", density=K, gamma=gamma, weight=1.0))


def test_neuron_fusion_M0_ties_is_mergekit_ties(llm_pair):
    """The suppress-only stage of Neu-*-TIES is TIES."""
    bdir, tdir, bsd, tsd = llm_pair
    assert_same(lfm_sd(bdir, tdir, method="neuron_fusion", neurons=0.0, density=0.2),
                mergekit(bsd, tsd, "ties", density=0.2, weight=1.0))


def _stats(bsd, out):
    """Pooled over 2-D LM tensors: kept fraction, and per tensor |out delta|_1 / |delta|_1."""
    kept = total = 0
    l1 = {}
    return_deltas = {}
    for k, b in bsd.items():
        if b.dim() != 2:
            continue
        d = out[k].float() - b.float()
        kept += int((d != 0).sum())
        total += d.numel()
        return_deltas[k] = d
    return kept / total, return_deltas


@pytest.mark.parametrize("method,mk_method", [("dare", "dare_linear"), ("della", "della")])
def test_randomised_methods_agree_with_mergekit_in_distribution(llm_pair, method, mk_method):
    bdir, tdir, bsd, tsd = llm_pair
    K, eps = 0.3, 0.1
    extra = {"epsilon": eps} if method == "della" else {}
    torch.manual_seed(0)
    theirs = mergekit(bsd, tsd, mk_method, density=K, weight=1.0, **extra)
    ours = lfm_sd(bdir, tdir, method=method, density=K, rescale="l1", seed=0, **extra)
    n = sum(b.numel() for b in bsd.values() if b.dim() == 2)
    tol = 5 * (K * (1 - K) / n) ** 0.5
    f_ours, d_ours = _stats(bsd, ours)
    f_theirs, d_theirs = _stats(bsd, theirs)
    assert abs(f_ours - K) < tol and abs(f_theirs - K) < tol, (f_ours, f_theirs)
    for k, d in d_ours.items():
        true = tsd[k].float() - bsd[k].float()
        # l1 rescale: both keep the delta's l1 norm, and scale survivors by one common factor
        for name, dd in (("lfm", d), ("mergekit", d_theirs[k])):
            assert float(dd.abs().sum()) == pytest.approx(float(true.abs().sum()), rel=1e-3), (name, k)
            kept = dd != 0
            factor = dd[kept] / true[kept]
            assert float(factor.std()) / float(factor.mean()) < 1e-3, (name, k)


def test_della_keep_rate_by_rank_matches_mergekit(llm_pair):
    """Keep rate of each row's largest-|delta| fifth vs smallest fifth: K+0.8eps vs K-0.8eps for both tools."""
    bdir, tdir, bsd, tsd = llm_pair
    K, eps = 0.4, 0.2
    torch.manual_seed(1)
    theirs = mergekit(bsd, tsd, "della", density=K, epsilon=eps, weight=1.0)
    ours = lfm_sd(bdir, tdir, method="della", density=K, epsilon=eps, rescale="l1", seed=1)

    def rates(out):
        lo = hi = n_lo = n_hi = 0
        for k, b in bsd.items():
            if b.dim() != 2:
                continue
            true = (tsd[k].float() - b.float()).abs()
            rank = true.argsort(dim=1).argsort(dim=1).float() / (true.shape[1] - 1)
            kept = (out[k].float() - b.float()) != 0
            lo += int(kept[rank < 0.2].sum()); n_lo += int((rank < 0.2).sum())
            hi += int(kept[rank > 0.8].sum()); n_hi += int((rank > 0.8).sum())
        return lo / n_lo, hi / n_hi

    (lo_o, hi_o), (lo_t, hi_t) = rates(ours), rates(theirs)
    assert abs(lo_o - lo_t) < 0.03 and abs(hi_o - hi_t) < 0.03, (lo_o, hi_o, lo_t, hi_t)
    assert abs(lo_o - (K - 0.8 * eps)) < 0.03 and abs(hi_o - (K + 0.8 * eps)) < 0.03


def test_mergekit_maps_no_layer_of_the_llava_pair(zoo, tmp_path):
    """The problem lfm solves: mergekit-yaml given (Llama base, LLaVA tuned) exits 0, yet every decoder
    layer in its output is the base's (nothing merged) and the vision tower / projector are gone.
    lfm merges the same pair: every layer changes and the vision parts are kept."""
    exe = Path(sys.executable).parent / "mergekit-yaml"
    if not exe.exists():
        pytest.skip("mergekit-yaml not installed")
    cfg = tmp_path / "mk.yml"
    cfg.write_text(f"merge_method: ties\nbase_model: {zoo.base}\nmodels:\n  - model: {zoo.llava}\n"
                   f"    parameters:\n      density: 0.2\n      weight: 1.0\ndtype: float32\n")
    out = tmp_path / "mk_out"
    proc = subprocess.run([str(exe), str(cfg), str(out), "--no-copy-tokenizer", "--allow-crimes"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base, got = read_state(zoo.base), read_state(out)
    layers = [k for k in got if k.startswith("model.layers.")]
    assert layers and all(torch.equal(got[k], base[k]) for k in layers)
    assert not any("vision_tower" in k or "multi_modal_projector" in k for k in got)

    ours = tmp_path / "lfm_out"
    lfm.merge(zoo.base, zoo.llava, ours, "ties", density=0.2, progress=False, log=lambda *a: None)
    mine, tuned = read_state(ours), read_state(zoo.llava)
    for k, t in tuned.items():
        name = canonical_from_tuned_key(k)
        if name is None:
            assert torch.equal(mine[k], t)
        elif name.startswith("model.layers.") and name.endswith("proj.weight"):
            assert not torch.equal(mine[k], base[name]), k
