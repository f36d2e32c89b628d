"""The explorer without a browser: drive its Panel widgets and check figures and tables follow.

The neuron views run on the tiny LLaVA pair of tests/fixtures.py (GQA: 4 query heads, 2 kv heads);
evaluation, the trade-off plot and the generations run on the organism (see app_support.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from app_support import organism_pair
from lfm.explorer.app import ExplorerApp, extension
from lfm.explorer.compute import module_view
from lfm.explorer.results import ResultsFolder
from lfm.explorer.state import ExplorerState
from lfm.merge import merged_state_dict
from lfm.methods import STAGES, Recipe, stage_recipes
from lfm.neurons import neuron_scores
from lfm.pair import open_pair

extension()


def make_app(base, tuned, **params) -> ExplorerApp:
    state = ExplorerState(background=False, auto_sweep=params.pop("auto_sweep", False), source_kind="pair",
                          base_path=str(base), tuned_path=str(tuned), **params)
    app = ExplorerApp(state)
    app.__panel__()  # build the page once, as `panel serve` does
    assert state.error == "", state.error
    return app


@pytest.fixture(scope="module")
def tiny(zoo):
    return make_app(zoo.base, zoo.llava)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    return organism_pair(tmp_path_factory.mktemp("org"))


@pytest.fixture(scope="module")
def org_app(organism):
    return make_app(*organism, per_task=2)


def curve_traces(app):
    fig = app.neurons.curve.object
    return {t.name: t for t in fig.data}, fig.layout.title.text


def test_k_slider_changes_rank_curve_and_outcome(tiny):
    s = tiny.state
    s.param.update(layer=1, module="up_proj", method="Neu-S-TIES")
    tiny.controls.neurons.value = 0.25
    tiny.controls.density.value = 0.1
    traces, title = curve_traces(tiny)
    assert "K=0.1" in title and "layer 1 up_proj".lower() in title.lower()
    after_low = np.asarray(traces["C'(i) after suppression at K"].y)
    kept_low = tiny.merge.plot.object.data[0].y  # 'entries kept' per module

    tiny.controls.density.value = 0.6
    traces, title = curve_traces(tiny)
    assert "K=0.6" in title
    after_high = np.asarray(traces["C'(i) after suppression at K"].y)
    assert after_high.sum() > after_low.sum()  # more entries kept -> more change survives suppression
    kept_high = tiny.merge.plot.object.data[0].y
    assert np.allclose(kept_low, 0.1, atol=0.02) and np.allclose(kept_high, 0.6, atol=0.02)

    # located neurons: exactly int(M * n) markers, at the largest C(i) (ranks 1..k)
    located = next(t for name, t in traces.items() if name.startswith("located"))
    n = len(traces["C(i) before merge"].y)
    assert len(located.x) == int(0.25 * n)
    assert sorted(located.x) == list(range(1, int(0.25 * n) + 1))


def test_tensor_view_matches_engine(tiny):
    """C_final shown in the app is the C(i) of the engine's own merged tensor."""
    recipe = Recipe.from_name("neu-p-ties", density=0.3, neurons=0.2)
    source = tiny.state.source
    name = "model.layers.0.mlp.down_proj.weight"
    pair = open_pair(source.base, source.tuned)
    entry = next(e for e in pair.entries if e.name == name)
    merged = merged_state_dict(pair, None, recipe)[entry.tuned_key]  # the streaming merge, as `lfm merge`
    view = module_view(source, name, recipe)
    assert torch.allclose(view.final, neuron_scores(merged.float() - pair.base.get(entry.base_key).float(), 1),
                          rtol=1e-4, atol=1e-6)


def test_gqa_is_visible_for_k_proj(tiny):
    tiny.state.param.update(layer=0, module="k_proj")
    traces, title = curve_traces(tiny)
    assert "GQA: 2 kv heads" in title
    kv = [n for n in traces if n.startswith("C'(i) kv head")]
    assert len(kv) == 2 and "query heads 0-1" in kv[0]


def test_heatmap_metric_and_click(tiny):
    tiny.neurons.metric.value = "max_over_median"
    fig = tiny.neurons.heatmap.object
    summary = pd.DataFrame(fig.data[0].z)
    assert fig.layout.title.text.endswith("max_over_median") and summary.shape == (2, 7)
    tiny.neurons.heatmap.click_data = {"points": [{"x": "v_proj", "y": "1"}]}
    assert (tiny.state.layer, tiny.state.module) == (1, "v_proj")
    assert tiny.neurons.curve.object.layout.title.text.startswith("Layer 1 v_proj")


def test_method_controls(tiny):
    c = tiny.controls
    c.method.value = "Neu-P-Bread"
    assert tiny.state.restore == "replace" and tiny.state.recipe.suppress == "breadcrumbs"
    assert c.gamma.visible and not c.epsilon.visible and c.neurons.visible
    c.restore.value = "rescale"
    assert tiny.state.method == "Neu-S-Bread"
    c.method.value = "DELLA"
    assert c.epsilon.visible and not c.neurons.visible
    c.method.value = "Neu-S-TIES"


def test_invalid_setting_shows_error_and_keeps_recipe(tiny):
    s = tiny.state
    s.method = "DELLA"
    s.density = 0.5
    good = s.recipe
    s.density = 0.05  # K - epsilon <= 0
    assert "della" in s.error and s.recipe == good
    s.density = 0.3
    assert s.error == "" and s.recipe.density == 0.3
    s.method = "Neu-S-TIES"


def test_bad_paths_show_error_and_app_stays_usable(tiny, zoo, tmp_path):
    s = tiny.state
    loaded = s.source
    s.param.update(base_path=str(tmp_path / "nope"), tuned_path=str(zoo.llava))
    s.load()
    assert "not a directory" in s.error and s.source is loaded
    s.param.update(base_path=str(zoo.base_hidden_mismatch))
    s.load()
    assert "mismatch" in s.error and s.source is loaded
    s.param.update(base_path=str(zoo.llava))  # a MLLM as the base
    s.load()
    assert "base must be a causal LLM" in s.error
    tiny.picker.error.visible  # the alert is bound to the error
    tiny.controls.density.value = 0.45
    assert "K=0.45" in tiny.neurons.curve.object.layout.title.text
    s.param.update(base_path=str(zoo.base), tuned_path=str(zoo.llava))
    s.load()
    assert s.error == ""


def test_no_evaluation_for_non_organism_pair(tiny):
    assert tiny.state.generations is None and "evaluation off" in tiny.state.eval_status
    assert "evaluated live on the organism" in tiny.generations.table.value.iloc[0, 0]


def test_recipe_yaml_runs_with_lfm_merge(tiny, tmp_path):
    from lfm.cli import main

    tiny.state.param.update(method="Neu-P-TIES", density=0.35, neurons=0.15)
    text = tiny.export.recipe_file().read()
    data = yaml.safe_load(text)
    assert data["method"] == "neuron_fusion" and data["restore"] == "replace" and data["density"] == 0.35
    config = tmp_path / "recipe.yaml"
    config.write_text(text)
    assert main(["merge", "--config", str(config), "--out", str(tmp_path / "merged"), "--quiet"]) == 0
    written = json.loads((tmp_path / "merged" / "lfm_recipe.json").read_text())["recipe"]
    assert Recipe.from_dict(written) == tiny.state.recipe


def test_figure_html_export_is_offline(tiny):
    tiny.export.which.value = "rank-curve"
    html = tiny.export.figure_html().read()
    assert '<script src="http' not in html and "sorted C(i)" in html  # plotly.js inlined, not fetched
    assert tiny.export.html_button.filename == "rank-curve.html"


# ---------------------------------------------------------------------------------------------- organism

def test_generations_follow_k_slider(org_app):
    app, s = org_app, org_app.state
    assert s.current is not None and set(s.references["label"]) == {"base", "tuned", "hard-merge"}
    app.controls.density.value = 0.1
    before = s.generations.copy()
    title_before = app.tradeoff.plot.object.layout.title.text
    app.controls.density.value = 0.7
    after = s.generations
    assert "K=0.7" in app.tradeoff.plot.object.layout.title.text and title_before != app.tradeoff.plot.object.layout.title.text
    # the table holds exactly what the organism answers at the new K, for each stage
    source = s.source
    from lfm.explorer.compute import organism_items
    for stage, recipe in stage_recipes(s.recipe).items():
        answers = source.evaluate(recipe, organism_items(2))["answers"]
        assert list(after[stage]) == [a["generated"] for a in answers], stage
        assert list(after[f"{stage}_category"]) == [a["category"] for a in answers], stage
    assert list(before["hard"]) == list(after["hard"])  # hard-merge does not depend on K
    shown = app.generations.table.value
    assert len(shown) == len(after) and shown["image"].str.startswith("<img src=\"data:image/png;base64,").all()
    assert "false → correct" in app.generations.summary.object


def test_generation_filters_and_csv(org_app):
    g = org_app.generations
    table = org_app.state.generations
    g.stage.value = "hard"
    category = table["hard_category"].iloc[0]
    g.category.value = category
    shown = g.table.value
    assert len(shown) == int((table["hard_category"] == category).sum()) and (shown["hard_category"] == category).all()
    csv = pd.read_csv(__import__("io").StringIO(org_app.export.generations_csv().read()))
    assert len(csv) == len(shown) and "image" not in csv.columns
    g.category.value = "all"
    task = table["task"].iloc[-1]
    g.task.value = task
    assert set(g.table.value["task"]) == {task}
    g.task.value = "all"


def test_sweep_and_tradeoff_points(org_app):
    s = org_app.state
    s.run_sweep()
    assert s.sweep is not None and {"TIES over K", "TaskA over alpha"} <= set(s.sweep["curve"])
    fig = org_app.tradeoff.plot.object
    names = [t.name for t in fig.data]
    assert "tuned" in names and "hard-merge" in names and any(n.startswith("current:") for n in names)


def test_precompute_results_folder_roundtrip(organism, tmp_path):
    from lfm.cli import main

    out = tmp_path / "results"
    assert main(["precompute", "--base", str(organism[0]), "--tuned", str(organism[1]), "--out", str(out),
                 "--densities", "0.1,0.3", "--neurons", "0,0.3", "--per-task", "1", "--quiet"]) == 0
    folder = ResultsFolder(out)
    assert {"base", "tuned", "hard-merge"} <= set(folder.sweep["label"])
    assert set(folder.generations["stage"]) == {"tuned", "hard", "suppress", "restore"}
    # the folder's C'(i) equal the live computation at a grid K
    pair = open_pair(*organism)
    name = folder.names[3]
    live_view = None
    from lfm.explorer.live import LivePair
    live_view = LivePair(*organism).view(name, Recipe(density=0.3, neurons=0.3))
    assert torch.allclose(folder.view(name, Recipe(density=0.31, neurons=0.3)).suppressed, live_view.suppressed)
    assert pair.entries  # the pair the folder was written from still opens

    app = ExplorerApp(ExplorerState(background=False, auto_sweep=True, source_kind="results",
                                    results_path=str(out)))
    app.__panel__()
    s = app.state
    assert s.error == "" and s.sweep is not None and s.generations is not None
    app.controls.density.value = 0.1
    assert "K=0.1" in app.neurons.curve.object.layout.title.text
    assert set(STAGES) <= set(s.generations.columns)
    s.param.update(results_path=str(tmp_path / "missing"))
    s.load()
    assert "not a results folder" in s.error and s.source is not None
