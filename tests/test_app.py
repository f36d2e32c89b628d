"""The explorer without a browser: drive its Panel widgets and check figures and tables follow.

The neuron views run on the tiny LLaVA pair of tests/fixtures.py (GQA: 4 query heads, 2 kv heads);
evaluation, the trade-off plot and the generations run on the organism (see app_support.py).
"""

from __future__ import annotations

import html
import json
import re
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
from lfm.stream import merged_state_dict
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
    assert fig.layout.title.text.split("<br>")[0].endswith("max_over_median") and summary.shape == (2, 7)
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


def test_no_evaluation_for_non_organism_pair_without_a_suite(tiny):
    """No silent fallback to the organism's items: the page says, in one line, that a suite is needed."""
    assert tiny.state.generations is None and "evaluation off" in tiny.state.eval_status
    assert "needs a suite" in tiny.state.eval_status and "--suite" in tiny.state.eval_status
    assert "\n" not in tiny.state.eval_status
    assert "with its suite" in tiny.generations.placeholder.object and tiny.generations.table.value.empty


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
    # the page's settings travel with it: the same query the URL holds (tests/test_app_browser.py opens one)
    from urllib.parse import parse_qs, urlparse
    view = data["explorer_view"]
    assert view["K"] == 0.35 and view["M"] == 0.15 and view["method"] == "Neu-P-TIES"
    assert parse_qs(urlparse(data["explorer_link"]).query)["K"] == ["0.35"]


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
    # K=0.2 M=0.3 is a sweep row (LA/VA shown) but not on the answers' K grid (0.1, 0.3): no answers, said so
    assert s.error == "" and s.sweep is not None and s.current["label"] == "Neu-S-TIES K=0.2 M=0.3"
    assert s.generations is None and "answers not precomputed: nearest is Neu-S-TIES K=" in app.generations.stages.object
    app.controls.density.value = 0.1
    assert "K=0.1" in app.neurons.curve.object.layout.title.text
    assert set(STAGES) <= set(s.generations.columns)
    assert "restore**: Neu-S-TIES K=0.1 M=0.3" in app.generations.stages.object


def _drawn_stars(fig) -> list[str]:
    return [t.name for t in fig.data if t.name and t.name.startswith("current:")]


def test_results_folder_off_grid_says_not_precomputed_and_shows_nothing_as_current(organism, tmp_path):
    from lfm.cli import main

    out = tmp_path / "results"
    assert main(["precompute", "--base", str(organism[0]), "--tuned", str(organism[1]), "--out", str(out),
                 "--densities", "0.1,0.3", "--neurons", "0,0.3", "--per-task", "1", "--quiet"]) == 0
    app = ExplorerApp(ExplorerState(background=False, auto_sweep=True, source_kind="results", results_path=str(out),
                                    density=0.1))
    app.__panel__()
    s = app.state
    assert _drawn_stars(app.tradeoff.plot.object) == ["current: Neu-S-TIES K=0.1 M=0.3"]
    assert s.generations is not None
    app.controls.density.value = 0.25  # not on the grid
    fig = app.tradeoff.plot.object
    assert _drawn_stars(fig) == [] and s.current is None and s.generations is None
    assert "not precomputed: nearest is Neu-S-TIES K=0.3 M=0.3" in fig.layout.title.text
    assert "K=0.25" in fig.layout.title.text and "LA 0." not in fig.layout.title.text
    assert "answers not precomputed: nearest is Neu-S-TIES K=0.3 M=0.3" in app.generations.stages.object
    assert app.generations.table.value.empty
    # the neuron views name the K their C'(i) are from
    assert "nearest is K=0.3" in app.neurons.curve.object.layout.title.text
    assert "nearest is K=0.3" in app.merge.plot.object.layout.title.text
    # on the grid again, but with a setting the folder does not record: no numbers, no answers (they were
    # evaluated with the LM's other tensors merged by the method, not taken from the tuned model)
    app.controls.density.value = 0.1
    assert _drawn_stars(app.tradeoff.plot.object) == ["current: Neu-S-TIES K=0.1 M=0.3"]
    s.others = "tuned"
    fig = app.tradeoff.plot.object
    assert _drawn_stars(fig) == [] and s.current is None and s.generations is None
    assert "Neu-S-TIES K=0.1 M=0.3 others=tuned: not precomputed: `lfm precompute` evaluates others at its " \
           "default only" in fig.layout.title.text
    assert "answers not precomputed: `lfm precompute` answers at the default others only" in \
        app.generations.stages.object
    s.others = "method"
    app.controls.density.value = 0.25
    app.controls.method.value = "DARE"  # no DARE in the sweep: no number under its label
    fig = app.tradeoff.plot.object
    assert _drawn_stars(fig) == [] and "DARE K=0.25: not precomputed" in fig.layout.title.text
    visited = next(t for t in fig.data if t.name == "visited")  # grey, each under its own label
    assert list(visited.text) == ["Neu-S-TIES K=0.1 M=0.3"]
    s.param.update(results_path=str(tmp_path / "missing"))
    s.load()
    assert "not a results folder" in s.error and s.source is not None


# ---------------------------------------------------------------------------------------------- truthful labels

TITLE_NUMBERS = re.compile(r"current (.+?): LA ([0-9.]+) VA ([0-9.]+)")


def test_slider_title_never_shows_numbers_of_another_recipe(organism):
    """Background evaluation (as served): while K moves, every trade-off title that shows numbers shows the
    numbers of the recipe it names, checked against a fresh evaluation of that recipe."""
    import time

    from lfm.explorer.compute import organism_items
    from lfm.explorer.live import LivePair

    state = ExplorerState(background=True, auto_sweep=False, source_kind="pair", base_path=str(organism[0]),
                          tuned_path=str(organism[1]), per_task=2)
    app = ExplorerApp(state)
    app.__panel__()
    seen = []
    app.tradeoff.plot.param.watch(lambda e: seen.append(e.new.layout.title.text), "object")

    def drawn() -> bool:  # the worker thread sets `pending` before the plot's watcher has drawn the numbers
        shows = TITLE_NUMBERS.search(seen[-1]) if seen else None
        return shows is not None and state.current is not None and shows.group(1) == state.current["label"]

    def settle():
        deadline = time.time() + 120
        while (state.pending or state.current is None or not drawn()) and time.time() < deadline:
            time.sleep(0.1)
        assert not state.pending and drawn(), "evaluation did not finish"

    settle()
    labels = {}
    for k in (0.33, 0.5, 0.1, 0.33):
        app.controls.density.value = k
        labels[state.recipe.label] = state.recipe
        title = app.tradeoff.plot.object.layout.title.text  # pending, or (a cache hit) already its own numbers
        shows = TITLE_NUMBERS.search(title)
        assert ("computing " + state.recipe.label in title and not shows) or shows.group(1) == state.recipe.label
    settle()
    assert any("computing Neu-S-TIES K=0.5 M=0.3" in t for t in seen)  # pending was shown as pending
    assert state.current["label"] == "Neu-S-TIES K=0.33 M=0.3"
    shown = [m.groups() for m in map(TITLE_NUMBERS.search, seen) if m]
    assert shown and any(label == "Neu-S-TIES K=0.33 M=0.3" for label, _, _ in shown)
    live = LivePair(*organism)
    for label, la, va in shown:
        truth = live.evaluate(labels.get(label, Recipe()), organism_items(2))
        assert (float(la), float(va)) == (round(truth["LA"], 3), round(truth["VA"], 3)), label
    state.session.work.shutdown(wait=True)


@pytest.mark.parametrize("mode", ["top", "random", "bottom"])
def test_locate_mode_is_in_every_label_and_legend(tiny, mode):
    tiny.state.param.update(method="Neu-P-TIES", layer=1, module="up_proj", locate=mode, neurons=0.3)
    label = tiny.state.recipe.label
    assert label.endswith("M=0.3" if mode == "top" else f"locate={mode}")
    curve = tiny.neurons.curve.object
    located = [t.name for t in curve.data if t.name.startswith("located")]
    assert located and located[0].startswith(f"located {mode}-M")
    assert label in curve.layout.title.text
    outcome = tiny.merge.plot.object
    assert label in outcome.layout.title.text and any(f"({mode}-M" in (t.name or "") for t in outcome.data)
    assert f"({mode}-M" in outcome.layout.annotations[1].text  # the ratio subplot's title
    assert yaml.safe_load(tiny.export.recipe_file().read())["label"] == label
    assert label in tiny.controls.reference.object
    tiny.state.locate = "top"


def test_locate_mode_on_trade_off_star(org_app):
    org_app.state.param.update(locate="random")
    names = [t.name for t in org_app.tradeoff.plot.object.data]
    assert [n for n in names if n.startswith("current:")] == [f"current: {org_app.state.recipe.label}"]
    assert org_app.state.recipe.label.endswith("locate=random")
    assert "locate=random" in org_app.generations.stages.object
    org_app.state.param.update(locate="top")


def test_n_items_wilson_interval_and_per_task_breakdown(org_app):
    s = org_app.state
    c = s.current
    vis = c["answers"]
    k = sum(a["category"] == "correct" for a in vis)
    text = org_app.tradeoff.numbers.object
    assert f"{k}/{len(vis)} items" in text and "95% Wilson" in text and "items per task" in text
    tasks = org_app.tradeoff.tasks.value
    assert set(tasks["task"]) == set(c["tasks"])  # every task of the evaluation, with its n
    for row in tasks.to_dict("records"):
        assert row["accuracy"] == pytest.approx(c["tasks"][row["task"]], abs=1e-3)
        assert row["n"] == 2 and row["lo"] <= row["accuracy"] <= row["hi"]


def test_compare_two_pinned_recipes(org_app, organism):
    from lfm.explorer.compute import organism_items

    s, compare = org_app.state, org_app.compare
    s.unpin_all()
    s.param.update(method="Neu-P-TIES", density=0.2, neurons=0.3, locate="top", layer=1, module="up_proj")
    compare.pin_button.clicks += 1
    first = s.recipe
    s.locate = "bottom"
    compare.pin_button.clicks += 1
    second = s.recipe
    assert [p["recipe"] for p in s.pinned] == [first, second]
    table = compare.table.value.set_index("measure")
    assert list(table.columns) == ["pin 1", "pin 2"]
    assert f"**pin 1**: {first.label}" in compare.legend.object and f"**pin 2**: {second.label}" in compare.legend.object
    for i, recipe in enumerate((first, second)):
        truth = s.source.evaluate(recipe, organism_items(2))
        assert float(table.loc["VA", f"pin {i + 1}"]) == round(truth["VA"], 3)
        for task, acc in truth["tasks"].items():
            kind = "visual" if any(a["task"] == task for a in truth["answers"]) else "language"
            assert float(table.loc[f"{kind}: {task}", f"pin {i + 1}"]) == pytest.approx(acc, abs=1e-3)
    names = [t.name for t in org_app.tradeoff.plot.object.data]
    assert f"pinned: {first.label}" in names and f"pinned: {second.label}" in names
    curve = org_app.neurons.curve.object
    # pins differing only in locate have one C'(i) (suppression is before locating): not drawn twice, said once
    assert f"pinned: C'(i) {first.label}" not in [t.name for t in curve.data]
    assert any(first.label in a.text and "same C′(i)" in a.text for a in curve.layout.annotations)
    # the changed items: restore-stage categories that differ, from a fresh evaluation of each recipe
    items = organism_items(2)
    from lfm.explorer.views import CHANGED_COLUMNS
    assert list(compare.changed.value.columns) == CHANGED_COLUMNS
    a = {x["id"]: x["category"] for x in s.source.evaluate(first, items)["answers"]}
    b = {x["id"]: x["category"] for x in s.source.evaluate(second, items)["answers"]}
    expected = sorted(i for i in a if a[i] != b[i])
    assert sorted(compare.changed.value["id"]) == expected
    assert f"**{len(expected)} items**" in compare.note.object
    compare.clear_button.clicks += 1
    assert s.pinned == [] and compare.table.value.empty and not compare.table.visible
    s.param.update(method="Neu-S-TIES", locate="top")


def test_generation_row_click_shows_detail(org_app):
    g = org_app.generations
    row = g.table.value.iloc[0]
    from panel.models.tabulator import CellClickEvent

    g.table.widget._process_event(CellClickEvent(model=None, column="answers", row=0))
    detail = g.detail.object
    assert 'width="192"' in detail and html.escape(str(row["question"])) in detail
    for stage in STAGES:
        assert f"<b>{stage}</b>: {html.escape(str(row[stage]))}" in detail


def test_organism_evaluator_equals_the_organism_suite(organism):
    """The two evaluations the page offers for the organism agree per task and per item: its default in-process
    evaluator (`lfm.organism.evaluate` through `MergeablePair`) and `--suite organism` (lm-eval + lmms-eval on
    the same held-out items through `PointRunner`, the path every other pair takes), on the first 2 items of
    each task."""
    from lfm.explorer.compute import organism_items
    from lfm.explorer.live import LivePair

    own, harness = LivePair(*organism), LivePair(*organism, suite="organism")
    assert own.evaluator.kind == "organism" and harness.evaluator.kind == "suite"
    for recipe in (None, Recipe(method="hard"), Recipe(density=0.2, neurons=0.0),
                   Recipe(density=0.5, neurons=0.3, restore="replace")):
        a, b = own.evaluate(recipe, organism_items(2)), harness.evaluate(recipe, harness.eval_items(2))
        assert a["tasks"] == b["tasks"] and (a["LA"], a["VA"]) == (b["LA"], b["VA"]), recipe
        assert {x["id"]: (x["generated"], x["category"]) for x in a["answers"]} == \
            {x["id"]: (x["generated"], x["category"]) for x in b["answers"]}
        assert {x["id"]: x["correct"] for x in a["language_answers"]} == \
            {x["id"]: x["correct"] for x in b["language_answers"]}
    assert own.evaluate_base(organism_items(2))["LA"] == harness.evaluate_base(harness.eval_items(2))["LA"]


def test_precompute_is_atomic_and_force_replaces(organism, tmp_path, capsys):
    """An error after the scores are written leaves no folder and no scratch beside it; --force swaps a
    complete new folder in for the old one."""
    from lfm.cli import main

    out = tmp_path / "results"
    base, tuned = str(organism[0]), str(organism[1])
    missing = tmp_path / "no-such-sweep.csv"
    assert main(["precompute", "--base", base, "--tuned", tuned, "--out", str(out), "--no-eval", "--quiet",
                 "--sweep-table", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no scratch
    out.mkdir()
    (out / "old.txt").write_text("from an earlier run")
    assert main(["precompute", "--base", base, "--tuned", tuned, "--out", str(out), "--no-eval", "--quiet"]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err and (out / "old.txt").exists()
    assert main(["precompute", "--base", base, "--tuned", tuned, "--out", str(out), "--no-eval", "--quiet",
                 "--force"]) == 0
    assert not (out / "old.txt").exists() and (out / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert ResultsFolder(out).names


def test_rows_table_puts_new_rows_on_the_page_as_a_new_table():
    """Panel's Tabulator drops rows that reach a browser still building it; RowsTable never changes the rows of
    a table on the page: new rows are a new Tabulator model whose rows are part of its construction."""
    from bokeh.document import Document

    from lfm.explorer.views import RowsTable

    clicks = []
    table = RowsTable(pd.DataFrame(columns=["a", "b"]), on_click=clicks.append, show_index=False, disabled=True)
    root = table.panel.get_root(Document())
    first = root.children[0]
    rows = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    table.value = rows
    shown = root.children[0]
    assert shown is not first and shown.source.data["a"].tolist() == [1, 2, 3]
    assert table.panel.objects == [table.widget] and table.value.equals(rows)
    table.value = rows.copy()  # the same rows: the table on the page stays
    assert root.children[0] is shown
    from panel.models.tabulator import CellClickEvent

    table.widget._process_event(CellClickEvent(model=None, column="a", row=1))  # the click handler follows
    assert [e.row for e in clicks] == [1]


def test_the_device_reaches_every_part(organism, monkeypatch, tmp_path):
    """`lfm explore --device` reaches the page's state, the source it opens and the LivePair, whose pair and
    evaluation model are both held there (the real objects' tensors say where); `lfm precompute`'s evaluations,
    PointRunner, MergeablePair and load_model take theirs too: on this CPU-only machine 'cuda' reaching any
    of them is the one-line refusal, never a silent CPU run."""
    import argparse
    import subprocess
    import sys

    import lfm.explorer.compute as compute
    import lfm.explorer.live as live_module
    from lfm.evaluate.sweep import PointRunner
    from lfm.explorer.cli import _evaluations
    from lfm.organism.evaluate import load_model
    from lfm.organism.merging import MergeablePair

    arrived = []

    class SpiedLivePair(live_module.LivePair):  # the real class, recording the device it is given
        def __init__(self, *args, device="cpu", **kwargs):
            arrived.append(device)
            super().__init__(*args, device=device, **kwargs)

    monkeypatch.setattr(compute, "LivePair", SpiedLivePair)
    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(organism[0]),
                          tuned_path=str(organism[1]), device="cpu:0")
    state.load()
    assert state.error == "" and arrived == ["cpu:0"]
    source = state.source
    assert source.resident.device == torch.device("cpu")
    assert {p.device for p in source.evaluator.pair.model.parameters()} == {source.resident.device}
    assert source.evaluator.pair.resident is source.resident  # one pair: the model's merges need no staging
    view = source.view(source.names[0], Recipe())
    assert view.scores.device == source.resident.device

    cuda = "CUDA is not available on this machine; use --device cpu"
    if torch.cuda.is_available():
        pytest.skip("the refusals below need a machine without CUDA (tests/test_gpu.py runs these on a GPU)")
    monkeypatch.setattr(live_module, "LivePair", SpiedLivePair)
    args = argparse.Namespace(base=str(organism[0]), tuned=str(organism[1]), suite=None, device="cuda",
                              per_task=1, quiet=True)
    with pytest.raises(ValueError, match=cuda):
        _evaluations(args, tmp_path, {"n_layers": 1})
    assert arrived[-1] == "cuda"
    for surface in (lambda: PointRunner(*organism, "organism", device="cuda"),
                    lambda: MergeablePair(*organism, device="cuda"), lambda: load_model(organism[1], "cuda")):
        with pytest.raises(ValueError, match=cuda):
            surface()
    explore = subprocess.run([sys.executable, "-m", "lfm.cli", "explore", "--device", "cuda", "--no-token",
                              "--port", "0"], capture_output=True, text=True, timeout=120)
    assert explore.returncode == 2 and "Traceback" not in explore.stderr and cuda in explore.stderr, explore.stderr
