"""ResidentPair (lfm/resident.py): every apply / merged tensor is exactly what the streaming merge writes (bit for
bit, against ``lfm.merged_state_dict``: ``lfm.merge``'s own tensors), views equal the merged delta's scores, the
memory check fails before anything is read."""

from __future__ import annotations

import pytest
import torch

import lfm
from lfm.methods import Recipe


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte-for-byte equality (torch.equal treats -0.0 == +0.0 and NaN != NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


RECIPES = [Recipe(method="ties", density=0.3), Recipe(), Recipe(neurons=0.0),
           Recipe(suppress="breadcrumbs", restore="replace", neurons=0.2, density=0.5),
           Recipe(method="breadcrumbs", density=0.1, gamma=0.05), Recipe(method="dare", density=0.4),
           Recipe(method="della", density=0.5), Recipe(method="hard"), Recipe(method="task_arithmetic", alpha=0.7),
           Recipe(others="tuned", density=0.1), Recipe(locate="random", seed=3)]


def test_merged_tensors_are_exactly_the_streaming_merge(organism):
    from lfm.resident import ResidentPair
    from lfm.stream import merged_state_dict

    resident = ResidentPair(*organism, progress=False)
    for recipe in RECIPES + RECIPES[:2]:  # second pass: thresholds come from the resident
        ref = merged_state_dict(*organism, recipe)
        got = resident.merged(recipe)
        assert set(got) <= set(ref)
        for key, t in got.items():
            assert same_bits(t, ref[key]), (recipe.label, key)
    assert resident.scores and all(s.dim() == 1 for s in resident.scores.values())
    # the resident holds read-only views of the mapped files; what it hands out is the caller's to modify
    for recipe in (Recipe(method="hard"), Recipe(others="tuned"), Recipe(method="task_arithmetic")):
        for t in resident.merged(recipe).values():
            t.add_(1)
    ref = merged_state_dict(*organism, Recipe(method="hard"))
    assert all(same_bits(t, ref[k]) for k, t in resident.merged(Recipe(method="hard")).items())


def test_apply_and_restore_in_place(organism):
    from lfm.resident import ResidentPair
    from lfm.evaluate.models import load_eval_model
    from lfm.stream import merged_state_dict

    em = load_eval_model(organism[1])
    before = {k: v.clone() for k, v in em.model.state_dict().items()}
    resident = ResidentPair(*organism, progress=False)
    recipe = Recipe(density=0.2, neurons=0.3)
    resident.apply(em.model, recipe)
    ref = merged_state_dict(*organism, recipe)
    ours = em.model.state_dict()
    up = "model.language_model.layers.1.mlp.up_proj.weight"
    ref_up = next(v for k, v in ref.items() if k.endswith("layers.1.mlp.up_proj.weight"))
    assert torch.equal(ours[up], ref_up) and not torch.equal(ours[up], before[up])
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(ours[k], before[k]) for k in vision)  # passthrough untouched
    # the language model lm-eval scores sees the merge (shared modules)
    assert torch.equal(em.language_model().model.layers[1].mlp.up_proj.weight, ref_up)
    resident.restore_tuned(em.model)
    assert all(torch.equal(em.model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("fast", [True, False])
def test_apply_writes_exactly_the_engine_merge(organism, fast):
    """apply() (fast path: residentd |delta| masks + where; or merge_tensor) == lfm.merged_state_dict, bit for bit."""
    from lfm.resident import ResidentPair, is_fast
    from lfm.evaluate.models import load_eval_model
    from lfm.stream import merged_state_dict

    em = load_eval_model(organism[1])
    resident = ResidentPair(*organism, progress=False, fast=fast)
    resident.prepare(RECIPES[:4])  # multi-k thresholds for some recipes, single selections for the rest
    extra = [Recipe(restore="replace", density=0.1, neurons=0.5), Recipe(locate="bottom", neurons=1.0, density=0.05),
             Recipe(method="task_arithmetic"), Recipe(suppress="breadcrumbs", gamma=0.2, density=0.3),
             Recipe(keep_tuned=("lm_head",), keep_base=("embed",), density=0.4)]
    assert sum(is_fast(r) for r in RECIPES + extra) >= 10
    for recipe in RECIPES + extra + RECIPES[:3]:
        resident.apply(em.model, recipe)
        ref = merged_state_dict(*organism, recipe)
        ours = resident._model_tensors(em.model)
        for key, tensor in ours.items():
            assert same_bits(tensor, ref[key]), (recipe, key)


@pytest.mark.parametrize("variant", ["llava_bf16", "llava_extra_vocab", "llm_tuned"])
def test_fast_apply_exact_on_zoo_variants(zoo, variant):
    """bf16 storage, extra vocabulary rows, a plain tuned LLM: the fast path still writes lfm.merge's bytes."""
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    from lfm.resident import ResidentPair
    from lfm.stream import merged_state_dict

    base = zoo.base_bf16 if variant == "llava_bf16" else zoo.base
    tuned = getattr(zoo, variant)
    cls = AutoModelForCausalLM if variant == "llm_tuned" else LlavaForConditionalGeneration
    model = cls.from_pretrained(tuned)
    resident = ResidentPair(base, tuned, progress=False)
    for recipe in RECIPES:
        resident.apply(model, recipe)
        ref = merged_state_dict(base, tuned, recipe)
        for key, tensor in resident._model_tensors(model).items():
            assert same_bits(tensor, ref[key]), (variant, recipe, key)


def test_fast_apply_negative_zeros_and_non_finite(zoo, tmp_path):
    """Base weights of -0.0 (Neuron-Fusion writes base + 0.0 = +0.0 there) stay byte-exact; a NaN in the
    pair makes apply raise the engine's error naming the tensor, for exactly the recipes that merge it."""
    from transformers import LlavaForConditionalGeneration

    from fixtures import copy_dir, rewrite_single
    from lfm.resident import ResidentPair
    from lfm.stream import merged_state_dict

    base = copy_dir(zoo.base_bf16, tmp_path / "base")
    key = next(k for k in __import__("fixtures").read_state(base) if k.endswith("layers.0.mlp.down_proj.weight"))

    def negative_zeros(sd):
        sd[key].view(-1)[::3] = -0.0
    rewrite_single(base, negative_zeros)
    tuned = zoo.llava_bf16
    model = LlavaForConditionalGeneration.from_pretrained(tuned)
    resident = ResidentPair(base, tuned, progress=False)
    for recipe in RECIPES[:4]:
        resident.apply(model, recipe)
        ref = merged_state_dict(base, tuned, recipe)
        for k, tensor in resident._model_tensors(model).items():
            assert same_bits(tensor, ref[k]), (recipe, k)

    def poison(sd):
        sd[key].view(-1)[5] = float("nan")
    rewrite_single(base, poison)
    resident = ResidentPair(base, tuned, progress=False)
    with pytest.raises(ValueError, match="NaN in the delta of tensor.*down_proj"):
        resident.apply(model, Recipe(density=0.2))
    resident.apply(model, Recipe(method="ties", density=0.2, keep_base=(r"layers\.0\.mlp\.down_proj",)))


def test_apply_takes_the_direct_path_on_the_models_own_device(zoo):
    """Devices are compared resolved (lfm.device.resolve_device): a pair opened on 'cpu:0' is on the model's
    'cpu', so apply writes straight into the parameters (no staging tensor) with the engine's bytes. (On a GPU,
    'cuda' is 'cuda:0': the same rule; a pair on another device than the model, staged, is tests/test_gpu.py's.)"""
    from transformers import LlavaForConditionalGeneration

    from lfm.resident import ResidentPair
    from lfm.stream import merged_state_dict

    model = LlavaForConditionalGeneration.from_pretrained(zoo.llava_bf16)
    resident = ResidentPair(zoo.base_bf16, zoo.llava_bf16, progress=False, device="cpu:0")
    assert resident.device == next(model.parameters()).device == torch.device("cpu")
    for recipe in RECIPES[:4]:
        resident.apply(model, recipe)
        ref = merged_state_dict(zoo.base_bf16, zoo.llava_bf16, recipe)
        for key, tensor in resident._model_tensors(model).items():
            assert same_bits(tensor, ref[key]), (recipe, key)
    assert not resident._stage  # the direct path ran: no staging buffer was made


VIEW_RECIPES = [Recipe(method="ties", density=0.3), Recipe(), Recipe(neurons=0.0), Recipe(restore="replace", neurons=0.5),
                Recipe(suppress="breadcrumbs", density=0.4, gamma=0.05), Recipe(suppress="task_arithmetic", alpha=0.6),
                Recipe(method="breadcrumbs", density=0.2), Recipe(method="dare", density=0.5, seed=2),
                Recipe(method="della", density=0.5), Recipe(method="task_arithmetic", alpha=0.5),
                Recipe(locate="random", seed=4, alpha=0.8), Recipe(method="hard")]


@pytest.mark.parametrize("recipe", VIEW_RECIPES, ids=lambda r: r.label)
def test_view_is_the_merged_deltas_scores(organism, recipe):
    """C(i) is sum_j |delta| of the checkpoints, C_final(i) that of what `lfm merge` writes, the kept fraction
    what lfm_recipe.json reports, and the located neurons restore their C(i) (Replace and Rescale both)."""
    from lfm.neurons import neuron_axis, neuron_scores

    resident = lfm.ResidentPair(*organism, progress=False)
    pair = lfm.open_pair(*organism)
    merged = lfm.merged_state_dict(pair, None, recipe)
    for entry in pair.entries[:12]:
        axis = neuron_axis(entry.name)
        if axis is None:
            continue
        base, tuned = pair.base.get(entry.base_key).float(), pair.tuned.get(entry.tuned_key).float()
        view = resident.view(entry.name, recipe)
        assert torch.allclose(view.scores, (tuned - base).abs().sum(dim=1 - axis))
        want = neuron_scores(merged[entry.tuned_key].float() - base, axis)
        assert torch.allclose(view.final, want, rtol=1e-4, atol=1e-6), entry.name
        if recipe.method in ("ties", "breadcrumbs") or (recipe.method == "neuron_fusion"
                                                         and recipe.suppress != "task_arithmetic"):
            assert view.kept_fraction == pytest.approx(int(recipe.density * base.numel()) / base.numel())
        restored = view.located & (view.suppressed > 0)
        if recipe.method == "neuron_fusion" and recipe.suppress != "task_arithmetic":
            assert torch.allclose(view.final[restored], recipe.alpha * view.scores[restored], rtol=1e-4)
        if recipe.method != "neuron_fusion" or recipe.neurons == 0:
            assert not view.located.any()


def test_view_names_linear_tensors_only(organism):
    resident = lfm.ResidentPair(*organism, progress=False)
    assert resident.names and all(n.endswith("_proj.weight") for n in resident.names)
    with pytest.raises(KeyError, match="not a linear-module tensor.*pair.names"):
        resident.view("model.norm.weight", "ties")


def test_memory_is_checked_before_anything_is_read(organism, monkeypatch):
    """Too little free memory: one MemoryError saying bytes needed vs available, and no tensor was mapped."""
    import lfm.memory
    import lfm.resident as resident_module
    from lfm.checkpoint import Checkpoint

    pair = lfm.open_pair(*organism)
    needed = resident_module.memory_needed(pair, torch.device("cpu"))
    lm_bytes = sum(pair.base.meta(e.base_key)[1].itemsize * torch.Size(pair.base.meta(e.base_key)[0]).numel()
                   for e in pair.entries)
    assert needed > 2 * lm_bytes  # both sides plus the 2-byte order keys
    monkeypatch.setattr(lfm.memory, "available_bytes", lambda device: needed - 1)  # lfm.memory.check_fits
    mapped = []
    monkeypatch.setattr(Checkpoint, "map", lambda self, key: mapped.append(key))
    with pytest.raises(MemoryError, match=r"needs .* GiB on cpu, .* GiB is available; .*lfm merge"):
        lfm.ResidentPair(pair, progress=False)
    assert mapped == []
    monkeypatch.setattr(lfm.memory, "available_bytes", lambda device: needed)
    monkeypatch.undo()
    assert lfm.ResidentPair(pair, progress=False).scores


def test_memory_check_counts_the_model_staging_and_temporaries(organism):
    """The check counts what the method and the model need on the pair's device, each part from the
    checkpoints' shapes (recomputed here): the whole tuned model when it runs there, one staging tensor of the
    largest LM tensor when it runs elsewhere, float32 temporaries of the largest LM tensor, the cached C'(i)."""
    import lfm.resident as resident_module

    pair = lfm.open_pair(*organism)
    sizes = {key: pair.tuned.meta(key) for key in pair.tuned.keys()}
    model_bytes = sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in sizes.values())
    lm = [pair.tuned.meta(e.tuned_key) for e in pair.entries]
    largest = max(torch.Size(shape).numel() for shape, _ in lm)
    largest_bytes = max(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in lm)
    alone = resident_module.memory_parts(pair, torch.device("cpu"))
    here = resident_module.memory_parts(pair, torch.device("cpu"), model_device="cpu:0")
    elsewhere = resident_module.memory_parts(pair, torch.device("cpu"), model_device="meta")
    assert here == {**alone, "model": model_bytes}
    assert elsewhere == {**alone, "staging": largest_bytes}
    assert alone["temporaries"] == resident_module.FLOAT32_TEMPORARIES * 4 * largest
    assert resident_module.memory_needed(pair, torch.device("cpu"), model_device="cpu") == sum(here.values())


def test_neuron_fusion_is_a_registry_row():
    """Sub = the suppressor's Sub, F = restore: merge_delta runs it like any other row (no special case)."""
    from lfm.methods import METHODS, merge_delta
    from lfm.methods.math import keep_suppressed, restore

    row = METHODS["neuron_fusion"]
    assert (row.sub, row.f) == (keep_suppressed, restore)
    delta = torch.tensor([[4.0, 1.0, 0.0], [0.5, 0.25, 0.0], [2.0, 0.0, 3.0]])
    # TIES at K=1/3 keeps 4.0, 3.0, 2.0; M=2/3 locates rows 0 and 2 (C = 5, 0.75, 5); Rescale by C/C'
    new, stats = merge_delta(delta, Recipe(density=1 / 3, neurons=2 / 3), neuron_axis=0)
    assert torch.equal(new, torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 3.0]]))
    assert (stats.kept, stats.n_neurons, stats.n_located, stats.n_fallback_replace) == (3, 3, 2, 0)


@pytest.mark.parametrize("recipe", VIEW_RECIPES, ids=lambda r: r.label)
def test_view_from_order_keys_equals_the_float_delta_view(organism, recipe):
    """The cached-key view (masking methods) and ``tensor_view`` on a float32 delta of the files agree."""
    from lfm.resident import tensor_view

    resident = lfm.ResidentPair(*organism, progress=False)
    pair = lfm.open_pair(*organism)
    for entry in pair.entries[:12]:
        if entry.name not in resident.names:
            continue
        delta = pair.tuned.get(entry.tuned_key).float() - pair.base.get(entry.base_key).float()
        want = tensor_view(entry.name, delta, recipe)
        got = resident.view(entry.name, recipe)
        assert torch.equal(got.located, want.located) and got.kept_fraction == pytest.approx(want.kept_fraction)
        for field in ("scores", "suppressed", "final"):
            assert torch.allclose(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-6), field


SAME_MERGE = [  # settings that do not apply to the method: one merge, one label
    (Recipe(method="ties"), Recipe(method="ties", seed=5, gamma=0.05, epsilon=0.3, rescale="l1")),
    (Recipe(neurons=0.0), Recipe(neurons=0.0, locate="random", seed=3)),
    (Recipe(), Recipe(seed=3)),
    (Recipe(method="task_arithmetic", alpha=0.7), Recipe(method="task_arithmetic", alpha=0.7, density=0.5)),
    (Recipe(method="dare", density=0.4), Recipe(method="dare", density=0.4, epsilon=0.3)),
]
OTHER_MERGE = [  # each setting that changes the merge: another label
    (Recipe(), Recipe(alpha=0.7)), (Recipe(), Recipe(others="tuned")), (Recipe(method="ties"), Recipe(method="ties", alpha=0.8)),
    (Recipe(locate="random"), Recipe(locate="random", seed=1)), (Recipe(method="breadcrumbs"), Recipe(method="breadcrumbs", gamma=0.05)),
    (Recipe(method="della", density=0.5), Recipe(method="della", density=0.5, epsilon=0.05)),
    (Recipe(method="dare", density=0.4), Recipe(method="dare", density=0.4, rescale="l1")),
    (Recipe(method="dare", density=0.4), Recipe(method="dare", density=0.4, seed=2)),
    (Recipe(method="ties"), Recipe(method="ties", keep_base=("layers\\.0\\.",))),
]


def test_a_label_names_exactly_one_merge(organism):
    """The explorer and the reports show numbers under a recipe's label: recipes that merge to the same bytes
    share it, and recipes whose merges differ never do (checked on the merged tensors, not on the label code)."""
    from lfm.stream import merged_state_dict

    def bits(recipe):
        return {k: v.contiguous().view(-1).view(torch.uint8) for k, v in merged_state_dict(*organism, recipe).items()}

    for a, b in SAME_MERGE:
        ma, mb = bits(a), bits(b)
        assert a.label == b.label and ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma), a.label
    for a, b in OTHER_MERGE:
        ma, mb = bits(a), bits(b)
        assert any(not torch.equal(ma[k], mb[k]) for k in ma), (a.label, b.label)  # the merges do differ
        assert a.label != b.label, a.label
