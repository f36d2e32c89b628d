"""The CUDA path, on a real GPU (marked `gpu`; skipped without CUDA): docs/devices.md's contract, row by row.

Merges on cuda vs cpu for every method (bit for bit where the contract says identical, its tolerance
otherwise) on a tie-heavy bf16 tensor above the one-pass size; every kernel on CUDA (float32, bf16, slices);
DELLA's probabilities and DARE / DELLA reproducible per device; ResidentPair on cuda (direct path, the bytes
of a CUDA merge; a CPU pair into a CUDA model = the CPU merge; its peak memory within ``memory_needed``); top-K
sets on CUDA; `lfm merge` auto vs cpu; ``evaluate(..., device='cuda')`` and one PointRunner point; LivePair on
cuda drawing its views. Together well under 3 minutes on one H200 (the organism pair and 4M-entry tensors).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lfm
from lfm.methods import Recipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/devices.md)")]

CUDA = "cuda"
ROWS, COLS = 2048, 2048  # 4M entries: above BLOCKED_FROM and the one-pass size, so the blocked engines run

IDENTICAL = [Recipe(method="ties", density=0.2), Recipe(method="ties", density=0.3, alpha=0.7),
             Recipe(method="breadcrumbs", density=0.2, gamma=0.01), Recipe(method="hard"),
             Recipe(method="task_arithmetic", alpha=1.0), Recipe(), Recipe(restore="replace"),
             Recipe(density=0.05, neurons=0.5), Recipe(alpha=0.8), Recipe(suppress="breadcrumbs", density=0.3),
             Recipe(suppress="task_arithmetic", alpha=0.6)]
NAMES = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.int16 if t.element_size() == 2 else torch.int32)


def tie_heavy_pair(seed: int = 0):
    """bf16 (base, tuned) whose |delta| takes few distinct values (ties straddle every block and the k-th)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(ROWS, COLS, generator=g).to(torch.bfloat16)
    levels = torch.tensor([0.0, 1e-3, 2e-3, 4e-3, -1e-3, -4e-3, 8e-3])
    delta = levels[torch.randint(len(levels), (ROWS, COLS), generator=g)]
    return base, (base.float() + delta).to(torch.bfloat16)


@pytest.fixture(scope="module")
def pair_tensors():
    return tie_heavy_pair()


def test_resolve_device_names_the_index_tensors_report():
    from lfm.device import available_bytes, resolve_device

    dev = resolve_device("cuda")
    assert dev == torch.empty(1, device="cuda").device == resolve_device("auto") and dev.index is not None
    kept = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    del kept  # freed into PyTorch's cache: still available to this process
    free, _ = torch.cuda.mem_get_info(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    assert cached >= 256 * 2**20 and available_bytes("cuda") == free + cached


@pytest.mark.parametrize("recipe", IDENTICAL, ids=lambda r: r.label)
@pytest.mark.parametrize("name", NAMES)
def test_identical_methods_give_the_cpu_bytes_on_cuda(pair_tensors, recipe, name):
    from lfm.methods import merge_tensor

    base, tuned = pair_tensors
    on_cpu, stats_cpu, _ = merge_tensor(base, tuned, recipe, name=name)
    on_gpu, stats_gpu, _ = merge_tensor(base.to(CUDA), tuned.to(CUDA), recipe, name=name)
    assert on_gpu.device.type == "cuda" and torch.equal(bits(on_gpu), bits(on_cpu))
    assert stats_gpu == stats_cpu


def test_task_arithmetic_within_one_unit_in_the_last_place(pair_tensors):
    from lfm.methods import merge_tensor

    base, tuned = pair_tensors
    recipe = Recipe(method="task_arithmetic", alpha=0.37)
    on_cpu, _, _ = merge_tensor(base, tuned, recipe, name=NAMES[0])
    on_gpu, _, _ = merge_tensor(base.to(CUDA), tuned.to(CUDA), recipe, name=NAMES[0])
    same_sign = torch.signbit(on_cpu) == torch.signbit(on_gpu.cpu())
    assert same_sign.all() and (bits(on_gpu).int() - bits(on_cpu).int()).abs().max() <= 1


@pytest.mark.parametrize("method", ["dare", "della"])
def test_random_methods_are_reproducible_per_device_with_the_same_arithmetic(pair_tensors, method):
    """DARE / DELLA (and locate=random) draw from a generator of the merge's device: the same bytes on every run
    there; DELLA's probabilities and F on given draws are the CPU's (l1's norms within 1e-5)."""
    from lfm.methods import METHODS, merge_tensor
    from lfm.methods.math import keep_by_magnitude_rank, tensor_generator

    base, tuned = pair_tensors
    recipe = Recipe(method=method, density=0.4, seed=5)
    first, _, _ = merge_tensor(base.to(CUDA), tuned.to(CUDA), recipe, name=NAMES[0])
    again, _, _ = merge_tensor(base.to(CUDA), tuned.to(CUDA), recipe, name=NAMES[0])
    assert torch.equal(bits(first), bits(again))
    random_locate = Recipe(locate="random", seed=3)
    assert torch.equal(*(bits(merge_tensor(base.to(CUDA), tuned.to(CUDA), random_locate, name=NAMES[0])[0])
                         for _ in range(2)))
    generator = tensor_generator(recipe, NAMES[0], CUDA)
    assert generator.device.type == "cuda"
    delta = tuned.float() - base.float()
    if method == "della":  # the keep probabilities: bit for bit
        _, p_cpu = keep_by_magnitude_rank(delta, recipe, torch.Generator().manual_seed(0))
        _, p_gpu = keep_by_magnitude_rank(delta.to(CUDA), recipe, torch.Generator(CUDA).manual_seed(0))
        assert torch.equal(bits(p_gpu), bits(p_cpu))
    # the same draws give the same bytes: F on a given mask, both rescales (l1 within its tolerance)
    mask, keep_prob = METHODS[method].sub(delta, recipe, torch.Generator().manual_seed(1), None)
    for rescale in ("inverse", "l1"):
        r = Recipe(method=method, density=0.4, rescale=rescale, alpha=0.9)
        on_cpu, _ = METHODS[method].f(delta, mask, keep_prob, r)
        on_gpu, _ = METHODS[method].f(delta.to(CUDA), mask.to(CUDA), keep_prob.to(CUDA), r)
        if rescale == "inverse":
            assert torch.equal(bits(on_gpu), bits(on_cpu))
        else:
            assert torch.allclose(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_on_cuda_equals_the_cpu(dtype):
    from lfm import kernels

    g = torch.Generator().manual_seed(2)
    values = (torch.randn(300, 257, generator=g) * 4).round().to(dtype)  # ties
    other = torch.randn(300, 257, generator=g).to(dtype)
    for a, b in ((values, other), (values[::2, 1:], other[::2, 1:])):  # whole, and strided slices
        mask = a > 0
        ga, gb, gmask = a.to(CUDA), b.to(CUDA), mask.to(CUDA)
        for fn in (kernels.greater_equal, kernels.greater, kernels.less, kernels.equal):
            assert torch.equal(fn(ga, 1.0).cpu(), fn(a, 1.0)), fn.__name__
        assert kernels.count_true(gmask) == kernels.count_true(mask)
        assert torch.equal(kernels.true_positions(gmask).cpu(), kernels.true_positions(mask))
        assert torch.equal(kernels.masked_values(ga, gmask).cpu(), kernels.masked_values(a, mask))
        assert torch.equal(kernels.select(gmask, ga, gb).cpu(), kernels.select(mask, a, b))
        assert torch.equal(kernels.keep_where(gmask, ga).cpu(), kernels.keep_where(mask, a))
        assert torch.equal(kernels.ranks_of_magnitude(ga.float()).cpu(), kernels.ranks_of_magnitude(a.float()))
        flat = a.float().reshape(-1)
        assert torch.equal(kernels.kth_smallest(flat.to(CUDA), 1000).cpu(), kernels.kth_smallest(flat, 1000))
    from lfm.neurons import neuron_sums

    for axis in (0, 1):
        x = values.float().abs()
        assert torch.equal(bits(neuron_sums(x.to(CUDA), axis)), bits(neuron_sums(x, axis)))


@pytest.fixture(scope="module")
def organism():
    from lfm.organism import base_dir, tuned_dir

    return base_dir(), tuned_dir()


RESIDENT_RECIPES = [Recipe(method="ties", density=0.2), Recipe(), Recipe(restore="replace", neurons=0.5),
                    Recipe(method="dare", density=0.5, seed=2), Recipe(method="task_arithmetic", alpha=0.5)]


def test_resident_pair_on_cuda_takes_the_direct_path_with_the_cuda_merges_bytes(organism):
    from lfm.organism.evaluate import load_model
    from lfm.resident import memory_needed

    refs = {recipe: lfm.merged_state_dict(*organism, recipe, device=CUDA) for recipe in RESIDENT_RECIPES}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    resident = lfm.ResidentPair(*organism, device=CUDA, progress=False, model_device=CUDA)
    assert resident.device == torch.device("cuda", torch.cuda.current_device())
    model, _ = load_model(organism[1], CUDA)
    for recipe in RESIDENT_RECIPES:
        resident.apply(model, recipe)
        ref = refs[recipe]
        for key, tensor in resident._model_tensors(model).items():
            assert tensor.device == resident.device and torch.equal(bits(tensor), bits(ref[key])), (recipe, key)
    assert not resident._stage  # the direct path: no staging tensor
    peak = torch.cuda.max_memory_allocated() - start
    assert peak <= memory_needed(resident.pair, resident.device, model_device=CUDA)
    # top-K sets on CUDA are the CPU pair's
    on_cpu = lfm.ResidentPair(*organism, progress=False)
    for i in range(len(resident.entries)):
        for k in (1, 7, resident.entries[i].base.numel() // 3):
            if 0 < k < resident.entries[i].base.numel():
                assert torch.equal(resident._top(i, k).cpu(), on_cpu._top(i, k))


def test_a_cpu_pair_into_a_cuda_model_writes_the_cpu_merge(organism):
    from lfm.organism.evaluate import load_model

    resident = lfm.ResidentPair(*organism, progress=False)  # on the CPU
    model, _ = load_model(organism[1], CUDA)
    for recipe in RESIDENT_RECIPES:
        resident.apply(model, recipe)
        ref = lfm.merged_state_dict(*organism, recipe, device="cpu")
        for key, tensor in resident._model_tensors(model).items():
            assert tensor.device.type == "cuda" and torch.equal(bits(tensor), bits(ref[key])), (recipe, key)
    assert resident._stage  # staged on the CPU, then copied


@pytest.mark.parametrize("method,identical", [("ties", True), ("neu-s-ties", True), ("dare", False)])
def test_lfm_merge_auto_is_cuda_and_matches_cpu_where_the_contract_says(organism, tmp_path, method, identical):
    outs = {}
    for device in ("auto", "cpu"):
        out = tmp_path / device
        proc = subprocess.run([sys.executable, "-m", "lfm.cli", "merge", "--base", organism[0], "--tuned",
                               organism[1], "--out", out, "--method", method, "--quiet", "--device", device],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[device] = out
    rec = {d: json.loads((o / "lfm_recipe.json").read_text()) for d, o in outs.items()}
    assert rec["auto"]["run"]["device"].startswith("cuda:") and rec["cpu"]["run"]["device"] == "cpu"
    weights = {d: [f.read_bytes() for f in sorted(o.glob("*.safetensors"))] for d, o in outs.items()}
    assert (weights["auto"] == weights["cpu"]) is identical
    if identical:
        assert rec["auto"]["fingerprint"] == rec["cpu"]["fingerprint"]


def test_evaluate_and_a_point_runner_point_on_cuda(organism):
    pytest.importorskip("lm_eval", reason="the harnesses (lfm[eval]) are not installed on this GPU box")
    from lfm.evaluate.harness import evaluate
    from lfm.evaluate.models import load_eval_model
    from lfm.evaluate.sweep import PointRunner

    em = load_eval_model(organism[1], device=CUDA)
    assert {p.device.type for p in em.model.parameters()} == {"cuda"}
    result = evaluate(em, "organism", limit=2)
    assert result["VA"] is not None and result["LA"] is not None
    runner = PointRunner(*organism, "organism", limit=2, device=CUDA)
    row = runner.run(Recipe(method="ties", density=0.2))
    assert row["VA"] is not None and runner.em.model.device.type == "cuda"


def test_live_pair_on_cuda_draws_its_views(organism):
    from lfm.explorer.figures import rank_curve
    from lfm.explorer.live import LivePair

    live = LivePair(*organism, device=CUDA)
    assert live.resident.device.type == "cuda"
    assert {p.device for p in live.evaluator.pair.model.parameters()} == {live.resident.device}
    for recipe in (Recipe(), Recipe(density=0.3), Recipe(method="ties", density=0.1)):  # a K move
        view = live.view(live.names[0], recipe)
        assert view.scores.device.type == "cuda"
        fig = rank_curve(view, "q_proj", 0, recipe.label)
        assert len(fig.data) >= 2
    assert live.evaluate(Recipe(method="hard"), live.eval_items(1))["VA"] is not None
