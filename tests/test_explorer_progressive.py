"""Numbers that arrive progressively: a long live evaluation's LA / VA come first from the first items of each task,
then from all of them, each with its 95 % Wilson interval (which narrows); the final numbers are a plain
`PointRunner.evaluate` of the recipe, and a burst of moves still evaluates only where it stops, at either size. A
short evaluation (under PREVIEW_AFTER_S here) comes once: the preview would delay the full numbers more than it
shows early."""

from __future__ import annotations

import pytest

from app_support import organism_pair, wait_settled
from lfm.explorer.analysis import item_counts, wilson_interval
from lfm.explorer.state import FIRST_ITEMS, ExplorerState, evaluation_sizes
from lfm.methods import Recipe

Z = 1.96


@pytest.mark.parametrize("correct, n", [(0, 1), (1, 1), (0, 6), (3, 6), (6, 6), (14, 24), (49, 96), (1, 100),
                                        (99, 100), (500, 1000)])
def test_wilson_interval_is_scipys_and_solves_the_score_equation(correct, n):
    """Against scipy's Wilson interval at the same z, and against its definition: its ends are the two p at which
    the score statistic (p̂ - p) / sqrt(p (1 - p) / n) is ±z."""
    from scipy.stats import binomtest, norm

    lo, hi = wilson_interval(correct, n)
    ci = binomtest(correct, n).proportion_ci(confidence_level=2 * norm.cdf(Z) - 1, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
    p_hat = correct / n
    for p in (lo, hi):
        assert (p_hat - p) ** 2 == pytest.approx(Z * Z * p * (1 - p) / n, abs=1e-12)
    assert lo <= p_hat <= hi


def test_no_items_is_the_whole_unit_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _width(current: dict, side: str) -> float:
    lo, hi = wilson_interval(*item_counts(current)[side])
    return hi - lo


def test_a_move_shows_its_first_items_then_all_equal_to_a_plain_point_runner(tmp_path, monkeypatch):
    """One move on a pair evaluated through its suite (the organism's, lm-eval + lmms-eval: PointRunner, the
    path of every pair but the organism's own evaluator): two updates, the first from FIRST_ITEMS items per
    task (wide intervals, said in the numbers and on the star's error bars), then from all items (narrower);
    the last equals a fresh PointRunner's evaluation of that recipe on all items."""
    from lfm.evaluate.sweep import PointRunner
    from lfm.explorer.app import ExplorerApp, extension

    extension()
    monkeypatch.setattr("lfm.explorer.state.PREVIEW_AFTER_S", 0.0)  # every evaluation counts as long
    base, tuned = organism_pair(tmp_path)
    recipe = Recipe(density=0.3)
    s = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(base),
                      tuned_path=str(tuned), suite_path="organism", per_task=0, density=0.3)
    app = ExplorerApp(s, load=False)
    app.__panel__()
    updates, stars = [], []
    s.param.watch(lambda e: updates.append(e.new) if e.new and e.new["label"] == recipe.label else None, "current")
    app.tradeoff.plot.param.watch(lambda e: stars.extend(
        (t.error_x, t.error_y, e.new.layout.title.text) for t in e.new.data if t.name == f"current: {recipe.label}"),
        "object")
    numbers = []
    s.param.watch(lambda e: numbers.append(app.tradeoff.numbers.object), "current", precedence=10)
    s.load()
    assert s.error == "" and s.recipe == recipe, s.error
    assert evaluation_sizes(0) == (FIRST_ITEMS, 0)
    first, final = updates
    assert (first["per_task"], first["first_of"]) == (FIRST_ITEMS, 0) and final["per_task"] == 0
    assert "first_of" not in final and s.current is final
    for side in ("language", "visual"):
        assert item_counts(first)[side][1] < item_counts(final)[side][1]
        assert _width(first, side) > _width(final, side)
    assert "first numbers" in "".join(numbers) and "first numbers" not in app.tradeoff.numbers.object
    # the star's error bars are the Wilson intervals, and they narrow
    (first_x, first_y, first_title), (final_x, final_y, final_title) = stars[0], stars[-1]
    assert f"first {FIRST_ITEMS} items per task" in first_title and "first" not in final_title
    assert first_y.arrayminus[0] + first_y.array[0] == pytest.approx(_width(first, "visual"))
    assert final_y.arrayminus[0] + final_y.array[0] < first_y.arrayminus[0] + first_y.array[0]
    # a pin waits for all the items; visited points hold final numbers only
    assert [h["per_task"] for h in s.history] == [0]

    truth = PointRunner(base, tuned, "organism").evaluate(recipe, limit=None, log_samples=True)
    assert (final["LA"], final["VA"], final["OA"]) == (truth["LA"], truth["VA"], truth["OA"])
    assert final["tasks"] == truth["tasks"]


def test_a_burst_evaluates_neither_size_of_the_moves_it_skips(tmp_path, monkeypatch):
    """Eight K moves in a row (worker threads, as served) at 4 items per task: the skipped Ks are evaluated at
    no size, the last one at its first items and then at all 4."""
    monkeypatch.setattr("lfm.explorer.state.PREVIEW_AFTER_S", 0.0)  # every evaluation counts as long
    base, tuned = organism_pair(tmp_path)
    s = ExplorerState(background=True, auto_sweep=False, source_kind="pair", base_path=str(base),
                      tuned_path=str(tuned), per_task=4)
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
    evaluated = {(recipe.density, n) for recipe, n in s.source._evaluations if recipe is not None}
    new = {(recipe.density, n) for recipe, n in s.source._evaluations if recipe is not None and (recipe, n) not in before}
    assert {(ks[-1], FIRST_ITEMS), (ks[-1], 4)} <= evaluated
    assert not {k for k, _ in new} & set(ks[:-1]), new
    s.session.work.shutdown(wait=True)


def test_a_short_evaluation_comes_once_and_a_long_one_first_from_its_first_items(tmp_path, monkeypatch):
    """The page times each whole evaluation of a merge (``LivePair.seconds``); a move whose last evaluation of that
    size took less than PREVIEW_AFTER_S shows its numbers once, on all its items; over it (here: the threshold
    set below what this pair takes), first from FIRST_ITEMS items per task."""
    base, tuned = organism_pair(tmp_path)
    s = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(base),
                      tuned_path=str(tuned), suite_path="organism", per_task=4)
    s.load()
    seconds = s.source.seconds(4)
    assert seconds is not None and 0 < seconds < 60  # the load evaluated a merge (hard-merge) on 4 items per task
    updates = []
    s.param.watch(lambda e: updates.append(e.new) if e.new else None, "current")
    monkeypatch.setattr("lfm.explorer.state.PREVIEW_AFTER_S", seconds * 100)  # this pair's evaluations are short
    s.density = 0.33
    assert [(u["label"], u["per_task"], "first_of" in u) for u in updates] == [(Recipe(density=0.33).label, 4, False)]
    updates.clear()
    monkeypatch.setattr("lfm.explorer.state.PREVIEW_AFTER_S", s.source.seconds(4) / 100)  # ... and now long
    s.density = 0.34
    label = Recipe(density=0.34).label
    assert [(u["label"], u["per_task"], u.get("first_of")) for u in updates] == [(label, FIRST_ITEMS, 4), (label, 4, None)]
