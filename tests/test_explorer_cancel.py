"""A newer move stops the evaluation it replaced (lfm.cancel): the stopped evaluation raises at the
model's next forward pass, leaves nothing cached, and the harnesses give every item the same answer afterwards
as an evaluation that was never stopped; in the explorer a move's evaluation and its stages' answers stop when
the user moves on, so the newest setting is evaluated next instead of after them."""

from __future__ import annotations

import threading
import time

import pytest

from app_support import organism_pair
from lfm.cancel import Superseded, cancel_when
from lfm.evaluate.sweep import item_outcomes
from lfm.methods import Recipe


def _answers(res: dict) -> dict:
    """Every logged item's generated answer and score, by task and doc id."""
    return {(task, s["doc_id"]): (s["generated"], s["score"]) for task, samples in res["samples"].items()
            for s in samples}


def _stale_after(model, passes: int):
    """A `stale()` that turns True after `passes` forward passes of `model` (counted by a hook of this test)."""
    seen = []
    model.get_input_embeddings().register_forward_pre_hook(lambda m, a: seen.append(1))
    return lambda: len(seen) >= passes, seen


def test_a_stopped_point_runner_evaluation_leaves_the_next_ones_unchanged(tmp_path):
    """Stopped mid-way (lm-eval's language tasks and lmms-eval's visual ones, and in the merge into the model),
    the runner's next evaluations of those recipes give every item the answer a runner never stopped gives."""
    from lfm.evaluate.sweep import PointRunner

    base, tuned = organism_pair(tmp_path)
    stopped = PointRunner(base, tuned, "organism")
    fresh = PointRunner(base, tuned, "organism")
    first, second = Recipe(density=0.3), Recipe(density=0.2, neurons=0.3)
    for passes in (1, 3):  # at the second forward pass (of 6 here), and a few passes in
        stale, seen = _stale_after(stopped.em.model, passes)
        with pytest.raises(Superseded), cancel_when(stale):
            stopped.evaluate(first, limit=4, log_samples=True)
        assert len(seen) == passes  # it stopped in the pass where stale() turned True, not later
    layers_run = []  # within that pass: before its first layer (each layer checks, lfm.cancel.watch)
    for name, module in stopped.em.model.named_modules():
        if name.endswith("layers.0"):
            module.register_forward_hook(lambda m, a, out: layers_run.append(len(seen)))
    stale, seen = _stale_after(stopped.em.model, 1)
    with pytest.raises(Superseded), cancel_when(stale):
        stopped.evaluate(first, limit=4, log_samples=True)
    assert layers_run == []  # its first layer checked: the pass stopped before any layer ran
    asked = []  # stopped half-way through writing the merged tensors into the model (ResidentPair.apply)
    with pytest.raises(Superseded), cancel_when(lambda: asked.append(1) or len(asked) > 5):
        stopped.evaluate(second, limit=4, log_samples=True)
    assert len(asked) == 6 and len(stopped.resident.entries) > 6
    for recipe in (first, second):
        want = fresh.evaluate(recipe, limit=4, log_samples=True)
        got = stopped.evaluate(recipe, limit=4, log_samples=True)
        assert _answers(got) == _answers(want) and _answers(want)
        assert item_outcomes(stopped.suite, got) == item_outcomes(fresh.suite, want)
    assert layers_run  # (the layer hook of this test does see the layers that run)


def _wait(predicate, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _move_during(first: float, then: float, moving_now) -> tuple:
    """A served-like state (worker threads) on the organism at K=0.3, moved to K=`first`; at the first forward
    pass where `moving_now(state)` holds, the user moves on to K=`then`. Returns the state and its source once
    `then`'s numbers on all items and its answers are shown."""
    from lfm.explorer.state import ExplorerState

    s = ExplorerState(background=True, auto_sweep=False, per_task=8, density=0.3)
    s.load()
    _wait(lambda: s.source is not None and s.current is not None and not s.pending and s.generations is not None)
    assert s.error == "", s.error
    moved = threading.Event()

    def move(module, args):
        if s.recipe == Recipe(density=first) and not moved.is_set() and moving_now(s):
            moved.set()
            s.density = then

    hook = s.source.evaluator.pair.model.get_input_embeddings().register_forward_pre_hook(move)
    try:
        s.density = first
        _wait(lambda: s.current is not None and s.current["label"] == Recipe(density=then).label
              and "first_of" not in s.current and s.generations_recipe == Recipe(density=then))
    finally:
        hook.remove()
    assert moved.is_set() and s.error == "", s.error
    return s, s.source


def test_a_move_stops_the_evaluation_it_replaced():
    """With worker threads (as served): moving K while the last K evaluates stops that evaluation at its next
    forward pass; only the new K is evaluated (and cached), and its numbers and answers are the page's."""
    replaced, wanted = Recipe(density=0.4), Recipe(density=0.45)
    s, source = _move_during(0.4, 0.45, lambda s: True)  # on the replaced K's first forward pass
    evaluated = {recipe for recipe, _ in source._evaluations}
    assert wanted in evaluated and replaced not in evaluated  # stopped at its first items: nothing kept
    assert s.current["LA"] == source.evaluation(wanted, 8)["LA"]
    assert [h["label"] for h in s.history].count(replaced.label) == 0


def test_a_move_stops_the_last_moves_stage_answers():
    """A move made while the last move's stages (hard / suppress / restore) are being answered stops them: the
    new K's numbers come next, and the old K's suppress stage is never finished (nor cached)."""
    from lfm.methods import stage_recipes

    answered, wanted = Recipe(density=0.35), Recipe(density=0.25)
    # the numbers of `answered` on all items are shown: its stages are computing
    s, source = _move_during(0.35, 0.25, lambda s: s.current and s.current["label"] == answered.label
                             and "first_of" not in s.current)
    evaluated = {recipe for recipe, _ in source._evaluations}
    assert answered in evaluated and stage_recipes(answered)["suppress"] not in evaluated
    assert stage_recipes(wanted)["suppress"] in evaluated
