"""An evaluation in two calls: the first k items of each task, then the rest (``harness.evaluate(skip=k)``), joined
item by item by ``harness.combine``, is one evaluation on all items: every task's number, LA / VA / OA and every
item's outcome and answer equal a plain ``PointRunner.evaluate``. What the explorer's second numbers cost after
its first ones (``LivePair.evaluation``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lfm.evaluate.harness import combinable, combine
from lfm.evaluate.suites import TaskSpec, get_suite
from lfm.evaluate.sweep import PointRunner, item_outcomes
from lfm.methods import Recipe

COMPARED = ("LA", "VA", "OA", "tasks", "answers", "language_answers")


def _assert_two_calls_are_one(runner: PointRunner, recipe, skip: int, limit: int | None):
    whole = runner.evaluate(recipe, limit=limit, log_samples=True)
    first = runner.evaluate(recipe, limit=skip, log_samples=True)
    rest = runner.evaluate(recipe, limit=limit, skip=skip, log_samples=True)
    joined = combine(runner.suite, first, rest, limit=limit)
    for key in COMPARED:
        assert joined[key] == whole[key], key
    outcomes = item_outcomes(runner.suite, joined)
    assert outcomes == item_outcomes(runner.suite, whole) and outcomes
    for spec in runner.suite.language + runner.suite.visual:  # the rest ran no item twice, and only the rest
        ids = [x["doc_id"] for x in rest["samples"].get(spec.task, [])]
        start = skip if combinable(spec) else 0
        assert ids == list(range(start, start + len(ids))), spec.task
        assert [x["doc_id"] for x in joined["samples"][spec.task]] == [x["doc_id"] for x in whole["samples"][spec.task]]
    return whole, rest


@pytest.mark.parametrize("skip", [2, 30])
def test_rest_after_first_items_is_one_evaluation_on_the_organism(skip):
    """All items of each task (25 language, 32 visual); at 30 the language tasks have none left (not run)."""
    from lfm.organism import base_dir, tuned_dir

    runner = PointRunner(base_dir(), tuned_dir(), "organism")
    whole, rest = _assert_two_calls_are_one(runner, Recipe(density=0.3), skip=skip, limit=None)
    assert {t: len(v) for t, v in rest["samples"].items()} == {t: len(v) - skip for t, v in whole["samples"].items()
                                                               if len(v) > skip}


def test_a_task_that_cannot_be_joined_is_run_whole():
    """A sum of two metrics (as MME's score is) is not a mean over items: the rest runs that task from its first
    item, and the joined result takes it from there; its neighbours are still joined."""
    from lfm.organism import base_dir, tuned_dir

    organism = get_suite("organism")
    summed = replace(organism.language[0], extra_metrics=("acc,none",))
    suite = replace(organism, language=(summed,) + organism.language[1:])
    assert not combinable(summed) and combinable(organism.language[1])
    runner = PointRunner(base_dir(), tuned_dir(), suite)
    whole, rest = _assert_two_calls_are_one(runner, "hard", skip=2, limit=4)
    assert len(rest["samples"][summed.task]) == 4 and len(rest["samples"][organism.language[1].task]) == 2
    assert whole["tasks"][summed.label] == 2 * sum(x["score"] for x in whole["samples"][summed.task]) / 4


@pytest.mark.parametrize("suite_key", ["suite", "prose"])
def test_rest_after_first_items_is_one_evaluation_on_the_smoke_real_pair(smoke_pair, suite_key):
    """The real pair's suite (accuracy tasks, all 4 items each) and its prose suite (perplexities: re-run whole)."""
    from lfm.realpair.study import pair_paths

    root, _ = smoke_pair
    paths = pair_paths(root, 0, "smoke")
    runner = PointRunner(paths["base"], paths["tuned"], str(paths[suite_key]))
    assert all(combinable(s) for s in runner.suite.language + runner.suite.visual) == (suite_key == "suite")
    if suite_key == "suite":
        _assert_two_calls_are_one(runner, Recipe(density=0.3), skip=2, limit=None)
    else:  # no per-item outcomes: the numbers alone
        first = runner.evaluate(Recipe(density=0.3), limit=1, log_samples=True)
        rest = runner.evaluate(Recipe(density=0.3), limit=None, skip=1, log_samples=True)
        whole = runner.evaluate(Recipe(density=0.3), limit=None, log_samples=True)
        assert combine(runner.suite, first, rest)["tasks"] == whole["tasks"] and whole["tasks"]


@pytest.mark.parametrize("spec, joins", [
    (TaskSpec("t", "t"), True),
    (TaskSpec("t", "t", metric="exact_match,strict-match"), True),
    (TaskSpec("t", "t", metric="acc_norm,none"), True),
    (TaskSpec("t", "t", 8, "exact_match,strict-match"), False),  # GSM8K: few-shot examples drawn in item order
    (TaskSpec("t", "t", 0, "mme_perception_score,none", scale=2800.0,
              extra_metrics=("mme_cognition_score,none",)), False),
    (TaskSpec("t", "t", metric="token_perplexity,none"), False),
])
def test_which_tasks_join_item_by_item(spec, joins):
    assert combinable(spec) is joins


def test_combine_needs_the_samples():
    suite = get_suite("organism")
    empty = {"raw": {}, "samples": {}}
    with pytest.raises(ValueError, match="log_samples=True"):
        combine(suite, {"raw": {}}, empty)


def test_the_same_point_again_keeps_the_weights_in_place_and_its_answers():
    """The rest after the first items is the same point: the model already holds its weights (not written twice);
    a point in between is written, and the first one written back, answers unchanged."""
    import torch

    from lfm.organism import base_dir, tuned_dir

    runner = PointRunner(base_dir(), tuned_dir(), "organism")
    recipe = Recipe(density=0.3)
    a = runner.evaluate(recipe, limit=2, log_samples=True)
    held = {k: v.clone() for k, v in runner.em.model.state_dict().items()}
    again = runner.evaluate(recipe, limit=2, log_samples=True)
    assert all(torch.equal(held[k], v) for k, v in runner.em.model.state_dict().items())
    tuned = runner.evaluate("tuned", limit=2, log_samples=True)
    assert any(not torch.equal(held[k], v) for k, v in runner.em.model.state_dict().items())
    back = runner.evaluate(recipe, limit=2, log_samples=True)
    assert all(torch.equal(held[k], v) for k, v in runner.em.model.state_dict().items())
    fresh = PointRunner(base_dir(), tuned_dir(), "organism")
    fresh.evaluate(recipe, limit=1)
    assert all(torch.equal(held[k], v) for k, v in fresh.em.model.state_dict().items())
    for key in COMPARED:
        assert a[key] == again[key] == back[key], key
    assert tuned["tasks"] != a["tasks"] or tuned["answers"] != a["answers"]
