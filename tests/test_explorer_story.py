"""The explorer's words and its first-screen promises without a browser: the method line says what the engine
does (checked against the engine's own views), the report's findings come from the report's numbers, the tour has
one picture per step, generation filters update the item count, log axes are labelled at decades only."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from lfm.explorer import figures, story
from lfm.explorer.views import GenerationsView
from lfm.methods import STAGES, Recipe
from lfm.organism import ORGANISM_DIR
from lfm.resident import tensor_view

NAME = "model.layers.0.mlp.up_proj.weight"


def _percents(sentence: str) -> list[float]:
    return [float(p) / 100 for p in re.findall(r"([0-9.]+) %", sentence)]


@pytest.mark.parametrize("recipe", [Recipe(density=0.2, neurons=0.3), Recipe(density=0.35, neurons=0.1),
                                    Recipe(method="ties", density=0.15), Recipe(density=0.5, neurons=0.25,
                                                                               restore="replace")])
def test_method_line_states_what_the_engine_keeps_and_restores(recipe):
    delta = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    view = tensor_view(NAME, delta, recipe)
    sentence = story.method_sentence(recipe)
    shares = _percents(sentence)
    assert shares[0] == pytest.approx(view.kept_fraction, abs=1 / delta.numel())  # 'keeps its K % largest Δ'
    if recipe.method == "neuron_fusion":
        assert shares[1] == pytest.approx(view.located.float().mean().item(), abs=1 / 64)  # 'the M % ...'
        assert recipe.restore in sentence
        # top C(i): the located neurons are those tuning changed most
        assert view.scores[view.located].min() >= view.scores[~view.located].max()


def test_method_line_of_a_suppress_stage_and_of_methods_without_k():
    assert "no neuron is restored" in story.method_sentence(Recipe(neurons=0.0))
    hard = story.method_sentence(Recipe(method="hard"))
    assert "K=" not in hard and "base LLM" in hard
    assert "α=0.7" in story.method_sentence(Recipe(method="task_arithmetic", alpha=0.7))


def _report(top, random, sd=0.05):
    fields = Recipe(density=0.2, neurons=0.3).to_dict()
    return {"seeds": [0, 1], "table": {
        "tuned": {"LA": {"mean": 0.6, "sd": 0}, "VA": {"mean": 0.9, "sd": 0}},
        "hard": {"LA": {"mean": 0.98, "sd": 0}, "VA": {"mean": 0.0, "sd": 0}},
        "X (top)": {"VA": {"mean": top, "sd": sd}}, "X (random)": {"VA": {"mean": random, "sd": sd}}},
        "recipes": {"X (top)": {**fields, "locate": "top"}, "X (random)": {**fields, "locate": "random"}}}


def test_findings_follow_the_report_numbers():
    assert "top beats random" in " ".join(story.findings(_report(0.8, 0.5)))
    assert "random locating does as well as top" in " ".join(story.findings(_report(0.5, 0.52)))
    assert "random 0.52 ± 0.05" in " ".join(story.findings(_report(0.5, 0.52)))


def test_shipped_organism_report_findings_regression():
    """A regression check against the shipped report file: every number a finding quotes is in its table."""
    path, lines = story.pair_findings(ORGANISM_DIR / "tuned")
    assert path.endswith("results.json") and lines
    table = json.loads((ORGANISM_DIR / "results.json").read_text())["table"]
    means = {f"{c[m]['mean']:.2f}" for c in table.values() for m in ("LA", "VA") if isinstance(c.get(m), dict)}
    quoted = set(re.findall(r"(?<![±0-9.])([01]\.[0-9]{2})(?! ±[0-9])", " ".join(lines)))
    assert quoted and quoted <= means | {f"{c[m]['sd']:.2f}" for c in table.values() for m in ("LA", "VA")
                                         if isinstance(c.get(m), dict)}


def test_study_findings_read_every_seed_of_the_paper_question_by_its_own_interval():
    """A real-pair report with several tuning seeds: the Neuron-Fusion row against plain averaging is judged on
    each seed by that seed's paired interval (lfm.evaluate.paired.side), never by the mean."""
    def cmp(low, high):
        return {"OA": {"diff": (low + high) / 2, "low": low, "high": high}, "mcnemar": {"p": 0.5}}

    seeds = {"seeds": [0, 1, 2], "neuron_fusion": [
        {"label": "Neu-S-TIES K=0.2 M=0.3", "vs": "TaskA a=0.5",
         "per_seed": [cmp(-0.015, 0.005), cmp(-0.03, -0.01), cmp(0.001, 0.024)]},
        {"label": "Neu-S-TIES K=0.2 M=0.3", "vs": "tuned MLLM", "per_seed": [cmp(-0.01, 0.01)] * 3}]}
    lines = [x for x in story.study_findings({"findings": {}, "seeds": seeds}) if x.startswith("across tuning seeds")]
    assert lines == ["across tuning seeds, Neu-S-TIES K=0.2 M=0.3 vs plain averaging (TaskA a=0.5), each seed on its "
                     "own items: -0.5 [-1.5, +0.5] (seed 0), -2.0 [-3.0, -1.0] (seed 1), +1.2 [+0.1, +2.4] (seed 2): "
                     "above on 1 of 3, below on 1, not separable on 1."]
    one_seed = {**seeds, "seeds": [0], "neuron_fusion": [{**seeds["neuron_fusion"][0], "per_seed": [cmp(0.01, 0.02)]}]}
    assert not any(x.startswith("across") for x in story.study_findings({"findings": {}, "seeds": one_seed}))


def test_a_pair_without_report_has_no_findings(tmp_path):
    (tmp_path / "tuned").mkdir()
    assert story.pair_findings(tmp_path / "tuned") == ("", [])
    (tmp_path / "results.json").write_text("not json")
    assert story.pair_findings(tmp_path / "tuned") == ("", [])


def test_decade_log_axis_spans_whole_decades_labelled_one_decade_apart():
    """What plotly.js draws from it is checked in Chromium (tests/test_log_axes_browser.py)."""
    axis = figures.decade_log_axis([0.03, 2.0, 450.0])
    assert axis["type"] == "log" and axis["dtick"] == 1  # a label every decade, none between
    low, high = axis["range"]
    assert low <= np.log10(0.03) and high >= np.log10(450.0) and high - low <= 5.2


@pytest.mark.parametrize("step", [s for s in story.TOUR_STEPS if s != "answers"])
def test_tour_picture_of_each_step_draws_the_engine_view(step):
    recipe = Recipe(density=0.2, neurons=0.3)
    view = tensor_view(NAME, torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), recipe)
    fig = figures.tour_figure(step, view, "layer 0 up_proj", recipe.label)
    assert len(fig.data) == len(figures.TOUR_TRACES[step])
    if step == "locate":
        assert len(fig.data[1].x) == int(view.located.sum())
    if step == "C(i)":
        assert list(fig.data[0].y) == sorted(view.scores.tolist(), reverse=True)
    assert all(len(words.split(". ")) == 2 for _, words in story.TOUR)  # two sentences a step


def test_generations_item_count_follows_the_filters():
    table = pd.DataFrame({"task": ["a", "a", "b"], **{f"{s}_category": ["correct", "not_known", "correct"]
                                                      for s in STAGES}, **{s: ["x", "y", "z"] for s in STAGES}})
    assert GenerationsView.summary_text(table, table).startswith("**3 items**")
    only_a = GenerationsView.summary_text(table, table[table["task"] == "a"])
    assert only_a.startswith("**2 of 3 items** (filtered)") and "restore 1" in only_a


def _sweep(per_task):
    # written out of K order on purpose: the plot orders each curve by the setting it varies
    return pd.DataFrame({"curve": ["TIES over K"] * 3, "label": ["TIES K=0.5", "TIES K=0.1", "TIES K=0.3"],
                         "density": [0.5, 0.1, 0.3], "neurons": [0.3] * 3, "alpha": [1.0] * 3,
                         "LA": [0.6, 0.9, 0.7], "VA": [0.9, 0.1, 0.5], "per_task": [per_task] * 3})


def test_trade_off_curves_in_k_order_with_k_at_each_point_and_n_in_hover():
    refs = pd.DataFrame(columns=["label", "LA", "VA", "OA"])
    fig = figures.tradeoff(_sweep(8), refs, None, "x", per_task=8)
    curve = fig.data[0]
    assert list(curve.text) == ["K=0.1", "K=0.3", "K=0.5"] and list(curve.x) == [0.9, 0.7, 0.6]
    assert "n = 8 items per task" in curve.hovertemplate


def test_trade_off_greys_out_points_of_another_evaluation_size():
    refs = pd.DataFrame(columns=["label", "LA", "VA", "OA"])
    history = [{"label": "a", "LA": 0.5, "VA": 0.5, "per_task": 8}, {"label": "b", "LA": 0.6, "VA": 0.4, "per_task": 0}]
    current = {"label": "b", "LA": 0.6, "VA": 0.4, "OA": 0.5, "per_task": 0}
    fig = figures.tradeoff(_sweep(8), refs, current, "b", history=history, per_task=0)
    names = {t.name: t for t in fig.data}
    stale = [t for t in fig.data if "not comparable" in t.name]
    assert {t.name.split(" (")[0] for t in stale} == {"TIES over K", "visited at another n"}
    assert all(figures.STALE in (t.marker.color, getattr(t.line, "color", None)) for t in stale)
    assert list(names["visited"].x) == [0.6] and "n = all items" in names["current: b"].hovertemplate


def test_merge_outcome_without_located_neurons_draws_no_empty_panel():
    outcome = pd.DataFrame({"module": ["up_proj"], "kept_entries": [0.2], "change_after_suppress": [0.5],
                            "change_after_merge": [0.5], "located_fraction": [0.0]})
    fig = figures.outcome_figure(outcome, pd.DataFrame(columns=["module", "layer", "ratio"]), "TIES K=0.2")
    assert "xaxis2" not in fig.layout and all(t.type == "bar" for t in fig.data)
    assert "no neurons located" in fig.layout.title.text


def test_pins_with_one_suppressed_curve_share_one_overlay():

    recipe = Recipe(density=0.2, neurons=0.3)
    delta = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    view = tensor_view(NAME, delta, recipe)
    same_k = [tensor_view(NAME, delta, Recipe(density=0.4, neurons=m, restore=r)) for m, r in ((0.1, "replace"),
                                                                                              (0.5, "rescale"))]
    assert torch.equal(same_k[0].suppressed, same_k[1].suppressed)  # suppression comes before restore
    fig = figures.rank_curve(view, "up_proj", 0, recipe.label, overlays=(("A = B", same_k[0]),), shared=("C",))
    assert [t.name for t in fig.data].count("pinned: C'(i) A = B") == 1
    assert any("pinned C" in a.text for a in fig.layout.annotations)


def test_a_burst_of_k_moves_evaluates_only_where_it_stops(tmp_path, monkeypatch):
    """Eight K moves in a row on a served-like state (worker threads): only the last K is evaluated; its LA / VA
    and then its stages' answers arrive."""
    from app_support import organism_pair, wait_settled
    from lfm.explorer.state import ExplorerState

    base, tuned = organism_pair(tmp_path)
    s = ExplorerState(background=True, auto_sweep=False, source_kind="pair", base_path=str(base),
                      tuned_path=str(tuned), per_task=1)
    s.load()

    wait_settled(s, Recipe().label)
    # a burst is moves closer together than the settle time: hold it at 2 s, so a loaded machine (each move's
    # watchers taking > 0.15 s) cannot split these eight moves into several bursts
    monkeypatch.setattr("lfm.explorer.state.SETTLE_S", 2.0)
    ks = [round(0.2 + 0.01 * i, 2) for i in range(1, 9)]
    before = list(s.source._evaluations)  # the pair is cached across tests: what earlier ones evaluated is kept
    for k in ks:
        s.density = k
    wait_settled(s, Recipe(density=ks[-1]).label)
    evaluated = {recipe.density for recipe, _ in s.source._evaluations if recipe is not None}
    new = {recipe.density for recipe, n in s.source._evaluations if recipe is not None and (recipe, n) not in before}
    assert ks[-1] in evaluated and not new & set(ks[:-1]), new
    assert s.generations_recipe == Recipe(density=ks[-1]) and len(s.generations) > 0
    s.session.work.shutdown(wait=True)


def test_every_setting_widget_of_the_controls_is_in_its_column():
    """The restore buttons, the sliders (inside a row with their help icon) and the lists all reach the page."""
    import panel as pn

    from lfm.explorer.state import ExplorerState
    from lfm.explorer.views import Controls

    controls = Controls(ExplorerState(background=False, auto_sweep=False))
    column = controls.__panel__()
    shown = [w for w in column.select(pn.widgets.Widget)]
    for name in controls.settings:
        assert any(w is getattr(controls, name) for w in shown), name


def test_stages_line_says_why_a_suppressor_restores_at_the_default_m():
    ties = Recipe(method="ties", density=0.2, neurons=0.6)
    line = GenerationsView._stages(ties, "", "", ties)
    assert "restore**: Neu-S-TIES K=0.2 M=0.3" in line and "M does nothing" in line and "default M=0.3" in line
    paper = Recipe(density=0.2, neurons=0.6)
    assert "M does nothing" not in GenerationsView._stages(paper, "", "", paper)


def test_a_pair_without_numbers_shows_one_line_in_the_trade_off_place():
    from lfm.explorer.views import TradeoffView

    none = pd.DataFrame(columns=["label", "LA", "VA", "OA"])
    assert not TradeoffView.has_points(None, none) and TradeoffView._empty_line(None, none, "", "", "").count("\n") == 0
    assert TradeoffView._empty_line(None, none, "", "", "")
    assert TradeoffView._empty_line(None, none, "", "", "evaluation off: needs a suite") == ""  # said above it
    assert TradeoffView.has_points(None, none, "", "Neu-S-TIES K=0.2 M=0.3")
