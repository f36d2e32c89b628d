"""The order of a move's work on the page: its evaluation starts first and its numbers are handed to the page
before the neuron views are recomputed for it (they cost the page's thread, the browser and the pair's one lock,
which the evaluation's merge needs too). A slider's float noise sets the recipe once: one evaluation per move.
The timings this buys are benchmarks/explorer_latency.py's, not asserted here."""

from __future__ import annotations

from lfm.explorer.app import ExplorerApp, extension
from lfm.explorer.state import FIRST_ITEMS, ExplorerState
from lfm.methods import Recipe


def _organism_page(organism, per_task: int):
    extension()
    s = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(organism[0]),
                      tuned_path=str(organism[1]), per_task=per_task)
    app = ExplorerApp(s, load=False)
    app.__panel__()
    s.load()
    assert s.error == "" and s.current is not None, s.error
    return s, app


def test_a_move_hands_its_numbers_to_the_page_before_the_neuron_views_are_recomputed(organism, monkeypatch):
    monkeypatch.setattr("lfm.explorer.state.PREVIEW_AFTER_S", 0.0)  # a long evaluation: first items, then all
    s, app = _organism_page(organism, per_task=4)
    recipe = Recipe(density=0.37)
    events = []
    resident = s.source.resident
    apply, view = resident.apply, resident.view

    def spied_apply(model, r=None, **kw):  # the evaluation's merge into the loaded model (the real call)
        events.append(("merge", r))
        return apply(model, r, **kw)

    def spied_view(name, r=None, **kw):  # a neuron view's tensor (the real call)
        events.append(("view", r))
        return view(name, r, **kw)

    resident.apply, resident.view = spied_apply, spied_view
    s.param.watch(lambda e: events.append(("numbers", e.new["per_task"])) if e.new and e.new["label"] ==
                  recipe.label else None, "current")
    s.param.watch(lambda e: events.append(("drawn", e.new)), "drawn_recipe")
    app.neurons.curve.param.watch(lambda e: events.append(("curve", e.new.layout.title.text)), "object")
    s.density = 0.37
    mine = [e for e in events if e[0] in ("numbers", "drawn", "curve") or e[1] == recipe]
    kinds = [kind for kind, _ in mine]
    assert kinds[0] == "merge", kinds  # the evaluation starts first
    assert ("numbers", FIRST_ITEMS) in mine and ("numbers", 4) in mine, mine
    last_numbers = kinds.index("numbers", kinds.index("numbers") + 1)
    assert kinds.index("numbers") < last_numbers < min(kinds.index("drawn"), kinds.index("curve")), kinds
    assert "view" not in kinds[:last_numbers], kinds  # no tensor of the neuron views computed before the numbers
    assert "view" in kinds[last_numbers:] and "K=0.37" in mine[kinds.index("curve")][1], kinds


def test_a_slider_value_with_float_noise_evaluates_once(organism):
    s, _ = _organism_page(organism, per_task=2)
    recipes, requests = [], s.session._latest
    s.param.watch(lambda e: recipes.append(e.new), "recipe")
    s.density = 0.23000000000000004  # what a slider sends after 0.22 + 0.01
    assert s.density == 0.23 and recipes == [Recipe(density=0.23)]
    assert s.session._latest == requests + 1  # one evaluation requested, not one per write of the value


def test_a_slider_is_never_sent_back_the_rounding_of_what_it_sent(organism):
    """The K slider's value from the browser (with float noise) sets the state, which rounds it; the slider is
    not written the rounded number (a write in flight while the user pressed on stepped the slider back one:
    a lost key press, the slider out of step with the recipe evaluated). A link or the tour still moves it."""
    s, app = _organism_page(organism, per_task=2)
    slider, writes = app.controls.density, []
    slider.param.watch(lambda e: writes.append(e.new), "value")
    slider.value = 0.23000000000000004  # as the browser sends it after 0.22 + 0.01
    assert s.density == 0.23 and s.recipe == Recipe(density=0.23)
    assert writes == [0.23000000000000004]  # only the browser's own value: nothing written back to it
    s.density = 0.5  # a link, the tour, a reset: the slider follows
    assert slider.value == 0.5 and writes[-1] == 0.5


def test_a_pin_made_before_its_answers_arrive_gets_them_when_they_do(organism):
    """The stage answers follow the numbers (and the neuron views, ``VIEWS_AFTER_NUMBERS_S``): a pin made in between
    holds none at first, and the compare table would say it has no per-item answers; it gets them on arrival. A
    pin of another recipe is left as it was."""
    s, _ = _organism_page(organism, per_task=2)
    answers, recipe, other = s.generations, s.recipe, Recipe(density=0.41)
    assert answers is not None and s.generations_recipe == recipe
    s.param.update(generations=None, generations_recipe=None)  # as between the numbers and the answers
    s.pinned = [{"recipe": other, "current": s.current, "generations": None},
                {"recipe": recipe, "current": s.current, "generations": None}]
    s.param.update(generations=answers, generations_recipe=recipe)
    assert s.pinned[1]["generations"] is answers and s.pinned[0]["generations"] is None
