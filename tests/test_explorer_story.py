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


def test_a_pair_without_report_has_no_findings(tmp_path):
    (tmp_path / "tuned").mkdir()
    assert story.pair_findings(tmp_path / "tuned") == ("", [])
    (tmp_path / "results.json").write_text("not json")
    assert story.pair_findings(tmp_path / "tuned") == ("", [])


def test_decade_log_axis_labels_decades_only():
    axis = figures.decade_log_axis([0.03, 2.0, 450.0])
    assert axis["type"] == "log"
    assert axis["tickvals"] == [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    assert all(np.log10(v) == round(np.log10(v)) for v in axis["tickvals"])


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
