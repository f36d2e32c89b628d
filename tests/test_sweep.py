"""Sweeps: the grid, ResidentPair == the engine's merge, resume, the Ray executor, on the organism."""

from __future__ import annotations

import json

import pytest
import torch

from lfm.methods import Recipe


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte-for-byte equality (torch.equal treats -0.0 == +0.0 and NaN != NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def test_parse_values():
    from lfm.evaluate.sweep import parse_values

    assert parse_values("0.05:0.9:0.05") == [round(0.05 * i, 10) for i in range(1, 19)]
    assert parse_values("0:0.5:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_values("0.3,0.1,0.1") == [0.1, 0.3]
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_values("0.1:0.2")


def test_grid_applies_k_and_m_only_where_they_matter():
    from lfm.evaluate.sweep import grid, point_id

    rs = grid(["neu-s-ties", "ties", "ta", "hard"], [0.1, 0.2], [0.0, 0.3], alpha=1.0)
    labels = [r.label for r in rs]
    assert labels.count("hard-merge") == 1 and sum(lbl.startswith("TaskA") for lbl in labels) == 1
    assert sum(lbl.startswith("TIES") for lbl in labels) == 2
    assert sum(lbl.startswith("Neu-S-TIES") for lbl in labels) == 4
    assert len({point_id(r) for r in rs}) == len(rs)


RECIPES = [Recipe(method="ties", density=0.3), Recipe(), Recipe(neurons=0.0),
           Recipe(suppress="breadcrumbs", restore="replace", neurons=0.2, density=0.5),
           Recipe(method="breadcrumbs", density=0.1, gamma=0.05), Recipe(method="dare", density=0.4),
           Recipe(method="della", density=0.5), Recipe(method="hard"), Recipe(method="task_arithmetic", alpha=0.7),
           Recipe(others="tuned", density=0.1), Recipe(locate="random", seed=3)]


def test_delta_cache_is_exactly_the_engine_merge(organism):
    from lfm.resident import ResidentPair
    from lfm.merge import merged_state_dict

    cache = ResidentPair(*organism, progress=False)
    for recipe in RECIPES + RECIPES[:2]:  # second pass: thresholds come from the cache
        ref = merged_state_dict(*organism, recipe)
        got = cache.merged(recipe)
        assert set(got) <= set(ref)
        for key, t in got.items():
            assert same_bits(t, ref[key]), (recipe.label, key)
    assert cache.scores and all(s.dim() == 1 for s in cache.scores.values())
    # the cache holds read-only views of the mapped files; what it hands out is the caller's to modify
    for recipe in (Recipe(method="hard"), Recipe(others="tuned"), Recipe(method="task_arithmetic")):
        for t in cache.merged(recipe).values():
            t.add_(1)
    ref = merged_state_dict(*organism, Recipe(method="hard"))
    assert all(same_bits(t, ref[k]) for k, t in cache.merged(Recipe(method="hard")).items())


def test_apply_and_restore_in_place(organism):
    from lfm.resident import ResidentPair
    from lfm.evaluate.models import load_eval_model
    from lfm.merge import merged_state_dict

    em = load_eval_model(organism[1])
    before = {k: v.clone() for k, v in em.model.state_dict().items()}
    cache = ResidentPair(*organism, progress=False)
    recipe = Recipe(density=0.2, neurons=0.3)
    cache.apply(em.model, recipe)
    ref = merged_state_dict(*organism, recipe)
    ours = em.model.state_dict()
    up = "model.language_model.layers.1.mlp.up_proj.weight"
    ref_up = next(v for k, v in ref.items() if k.endswith("layers.1.mlp.up_proj.weight"))
    assert torch.equal(ours[up], ref_up) and not torch.equal(ours[up], before[up])
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(ours[k], before[k]) for k in vision)  # passthrough untouched
    # the language model lm-eval scores sees the merge (shared modules)
    assert torch.equal(em.language_model().model.layers[1].mlp.up_proj.weight, ref_up)
    cache.restore_tuned(em.model)
    assert all(torch.equal(em.model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("fast", [True, False])
def test_apply_writes_exactly_the_engine_merge(organism, fast):
    """apply() (fast path: cached |delta| masks + where; or merge_tensor) == lfm.merged_state_dict, bit for bit."""
    from lfm.resident import ResidentPair, is_fast
    from lfm.evaluate.models import load_eval_model
    from lfm.merge import merged_state_dict

    em = load_eval_model(organism[1])
    cache = ResidentPair(*organism, progress=False, fast=fast)
    cache.prepare(RECIPES[:4])  # multi-k thresholds for some recipes, single selections for the rest
    extra = [Recipe(restore="replace", density=0.1, neurons=0.5), Recipe(locate="bottom", neurons=1.0, density=0.05),
             Recipe(method="task_arithmetic"), Recipe(suppress="breadcrumbs", gamma=0.2, density=0.3),
             Recipe(keep_tuned=("lm_head",), keep_base=("embed",), density=0.4)]
    assert sum(is_fast(r) for r in RECIPES + extra) >= 10
    for recipe in RECIPES + extra + RECIPES[:3]:
        cache.apply(em.model, recipe)
        ref = merged_state_dict(*organism, recipe)
        ours = cache._model_tensors(em.model)
        for key, tensor in ours.items():
            assert same_bits(tensor, ref[key]), (recipe, key)


def test_sweep_writes_table_and_resumes(organism, tmp_path):
    from lfm.evaluate.pareto import best_point
    from lfm.evaluate.sweep import load_results, run_sweep

    out = tmp_path / "sweep"
    r1, r2 = Recipe(density=0.2, neurons=0.0), Recipe(density=0.2, neurons=0.3)
    df = run_sweep(*organism, [r1], out_dir=out, limit=2, references=False, progress=False)
    assert len(df) == 1 and {"LA", "VA", "OA", "label", "density", "neurons", "task:colour"} <= set(df.columns)
    first = json.loads((out / "points.jsonl").read_text().splitlines()[0])
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(*organism, [r1, r2], out_dir=out, limit=2, references=False, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(*organism, [r1, r2], out_dir=out, limit=3, references=False, resume=True, progress=False)
    df = run_sweep(*organism, [r1, r2], out_dir=out, limit=2, references=False, resume=True, progress=False)
    lines = (out / "points.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == first  # the finished point was not redone
    assert list(df["neurons"]) == [0.0, 0.3]
    for f in ("results.csv", "results.json"):
        assert len(load_results(out / f)) == 2
    assert best_point(df)["OA"] == df["OA"].max()


def test_sweep_references_and_cli_report(organism, tmp_path, capsys):
    from lfm.cli import main

    out = tmp_path / "s"
    assert main(["sweep", "--base", str(organism[0]), "--tuned", str(organism[1]), "--method", "hard",
                 "--suite", "organism", "--limit", "2", "--out", str(out), "--quiet", "--report"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["point"] for r in rows][:3] == ["base", "tuned", "hard"] and len(rows) == 4
    assert rows[3]["method"] == "hard" and (rows[3]["LA"], rows[3]["VA"]) == (rows[2]["LA"], rows[2]["VA"])
    base = rows[0]
    assert base["VA"] is None and base["LA"] is not None
    assert main(["sweep", "--report", "--out", str(out)]) == 0
    assert "Pareto front" in capsys.readouterr().out


@pytest.mark.slow
def test_ray_executor(organism, tmp_path):
    ray = pytest.importorskip("ray")
    from lfm.evaluate.sweep import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        recipes = [Recipe(density=0.2, neurons=0.0), Recipe(density=0.2, neurons=0.3)]
        df = run_sweep(*organism, recipes, out_dir=tmp_path / "ray", executor="ray", workers=2, limit=2,
                       references=False, progress=False)
        local = run_sweep(*organism, recipes, out_dir=tmp_path / "local", limit=2, references=False, progress=False)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    got = df.set_index("point")[["LA", "VA", "OA"]].sort_index()
    want = local.set_index("point")[["LA", "VA", "OA"]].sort_index()
    assert got.equals(want)


@pytest.mark.parametrize("variant", ["llava_bf16", "llava_extra_vocab", "llm_tuned"])
def test_fast_apply_exact_on_zoo_variants(zoo, variant):
    """bf16 storage, extra vocabulary rows, a plain tuned LLM: the fast path still writes lfm.merge's bytes."""
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    from lfm.resident import ResidentPair
    from lfm.merge import merged_state_dict

    base = zoo.base_bf16 if variant == "llava_bf16" else zoo.base
    tuned = getattr(zoo, variant)
    cls = AutoModelForCausalLM if variant == "llm_tuned" else LlavaForConditionalGeneration
    model = cls.from_pretrained(tuned)
    cache = ResidentPair(base, tuned, progress=False)
    for recipe in RECIPES:
        cache.apply(model, recipe)
        ref = merged_state_dict(base, tuned, recipe)
        for key, tensor in cache._model_tensors(model).items():
            assert same_bits(tensor, ref[key]), (variant, recipe, key)


def test_fast_apply_negative_zeros_and_non_finite(zoo, tmp_path):
    """Base weights of -0.0 (Neuron-Fusion writes base + 0.0 = +0.0 there) stay byte-exact; a NaN in the
    pair makes apply raise the engine's error naming the tensor, for exactly the recipes that merge it."""
    from transformers import LlavaForConditionalGeneration

    from fixtures import copy_dir, rewrite_single
    from lfm.resident import ResidentPair
    from lfm.merge import merged_state_dict

    base = copy_dir(zoo.base_bf16, tmp_path / "base")
    key = next(k for k in __import__("fixtures").read_state(base) if k.endswith("layers.0.mlp.down_proj.weight"))

    def negative_zeros(sd):
        sd[key].view(-1)[::3] = -0.0
    rewrite_single(base, negative_zeros)
    tuned = zoo.llava_bf16
    model = LlavaForConditionalGeneration.from_pretrained(tuned)
    cache = ResidentPair(base, tuned, progress=False)
    for recipe in RECIPES[:4]:
        cache.apply(model, recipe)
        ref = merged_state_dict(base, tuned, recipe)
        for k, tensor in cache._model_tensors(model).items():
            assert same_bits(tensor, ref[k]), (recipe, k)

    def poison(sd):
        sd[key].view(-1)[5] = float("nan")
    rewrite_single(base, poison)
    cache = ResidentPair(base, tuned, progress=False)
    with pytest.raises(ValueError, match="NaN in the delta of tensor.*down_proj"):
        cache.apply(model, Recipe(density=0.2))
    cache.apply(model, Recipe(method="ties", density=0.2, keep_base=(r"layers\.0\.mlp\.down_proj",)))


def test_apply_to_a_model_on_another_device(zoo):
    """The cache on one device, the model on another (CPU cache + GPU model in real use): each tensor goes
    through a staging tensor and the bytes are the engine's. Here the cache's device is 'cpu:0', which
    torch counts as different from the model's 'cpu'."""
    from transformers import LlavaForConditionalGeneration

    from lfm.resident import ResidentPair
    from lfm.merge import merged_state_dict

    model = LlavaForConditionalGeneration.from_pretrained(zoo.llava_bf16)
    cache = ResidentPair(zoo.base_bf16, zoo.llava_bf16, progress=False, device="cpu:0")
    assert next(model.parameters()).device != cache.device
    for recipe in RECIPES[:4]:
        cache.apply(model, recipe)
        ref = merged_state_dict(zoo.base_bf16, zoo.llava_bf16, recipe)
        for key, tensor in cache._model_tensors(model).items():
            assert same_bits(tensor, ref[key]), (recipe, key)
    assert cache._stage  # the staging path ran
