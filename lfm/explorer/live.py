"""A (base, tuned) pair opened live in the explorer: the engine's ``ResidentPair`` for the neuron views, plus
one evaluator that scores a recipe merged into one loaded model.

No merge math here: ``view`` is ``ResidentPair.view`` (computed per viewed tensor, on demand) and
``evaluate`` writes the recipe into one loaded model with ``ResidentPair.apply``. No parameter cap either:
what limits a live pair is memory, checked before anything is read (``lfm.resident.check_memory``).

Which evaluator (explicit, never a fallback):
    suite given      ``SuiteEvaluator``: ``lfm.evaluate.sweep.PointRunner`` (the path ``lfm sweep`` takes),
                     the suite's lm-eval / lmms-eval tasks, ``limit`` items per task, per-item answers from
                     the harness samples classified by ``lfm.taxonomy``
    no suite         ``OrganismEvaluator`` when the tuned model is an organism (its word-level tokenizer,
                     ``lfm.organism.tokenizer.is_organism_tokenizer``): ``lfm.organism.evaluate`` on the
                     organism's held-out items, in process (fast enough to follow a slider; per item the
                     same answers as ``suite='organism'`` through the harnesses, tests/test_app.py)
                     any other pair: no evaluation, and ``eval_error`` says to pass a suite

    >>> from lfm.organism import base_dir, tuned_dir
    >>> pair = LivePair(base_dir(), tuned_dir())
    >>> pair.evaluate(Recipe(method="hard"), pair.eval_items(2))["VA"] is not None
    True
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from lfm.methods import Recipe
from lfm.pair import open_pair, text_config
from lfm.resident import ResidentPair, TensorView

from .results import sweep_recipes, sweep_row

LIVE_SWEEP = dict(densities=(0.05, 0.1, 0.2, 0.4, 0.7), neurons=(0.0, 0.1, 0.3, 0.5), alphas=(0.3, 0.5, 0.7))
REFERENCE_RECIPES = {"tuned": None, "hard-merge": Recipe(method="hard")}  # the merges among the references
NEEDS_SUITE = ("evaluation needs a suite for this pair: pass --suite SUITE.yaml (the real pair's is "
               "<root>/suite/suite.yaml) or enter it in 'evaluation suite' and load again")


@lru_cache(maxsize=8)
def organism_items(per_task: int) -> dict:
    """The organism's held-out items, the first `per_task` of each task (0 = all)."""
    from lfm.organism import load_items

    out = {}
    for kind in ("language", "visual"):
        items, seen = [], {}
        for it in load_items(kind):
            seen[it.task] = seen.get(it.task, 0) + 1
            if per_task <= 0 or seen[it.task] <= per_task:
                items.append(it)
        out[kind] = items
    return out


class OrganismEvaluator:
    """``lfm.organism.evaluate`` of a recipe on the organism's held-out items (``MergeablePair``)."""

    kind = "organism"
    evaluates_rest = False  # in process, no per-call cost to save: more items are evaluated whole

    def __init__(self, resident: ResidentPair, base: str, tuned: str):
        from lfm.cancel import watch
        from lfm.organism import scienceqa_records
        from lfm.organism.merging import MergeablePair

        self.base = base
        self.pair = MergeablePair(resident, tuned)
        if not hasattr(self.pair.processor, "image_processor"):
            raise ValueError(f"{tuned} is not a LLaVA with a processor")
        resident.check_model(self.pair.model)  # every LM tensor has a place in the model
        watch(self.pair.model)  # the page stops an evaluation a newer move replaced (lfm.cancel)
        self.images = {r["id"]: r["image"] for r in scienceqa_records()}

    def items(self, per_task: int) -> dict:
        return organism_items(per_task)

    def evaluate(self, recipe: Recipe | None, items: dict) -> dict:
        return self._with_images(self.pair.evaluate(recipe, items))

    def evaluate_base(self, items: dict) -> dict:
        from lfm.organism.evaluate import evaluate, load_model

        return evaluate(load_model(self.base, self.pair.resident.device), items=items)  # on the pair's device

    def _with_images(self, result: dict) -> dict:
        result["answers"] = [{**a, "image": self.images.get(a["id"], "")} for a in result["answers"]]
        return result


class SuiteEvaluator:
    """``PointRunner.evaluate`` of a recipe on a suite (``lfm.evaluate.harness.evaluate``, samples logged)."""

    kind = "suite"
    evaluates_rest = True  # more items after fewer: only the rest is evaluated (``evaluate_rest``)

    def __init__(self, resident: ResidentPair, base: str, tuned: str, suite, device: str):
        from lfm.evaluate.suites import check_datasets, get_suite
        from lfm.evaluate.sweep import PointRunner

        suite = get_suite(suite)
        check_datasets(suite)
        self.runner = PointRunner(base, tuned, suite, device=device, resident=resident)

    def items(self, per_task: int) -> int | None:
        """The harness limit: `per_task` items of each task (0 = all)."""
        return per_task if per_task > 0 else None

    def evaluate(self, recipe: Recipe | None, limit: int | None) -> dict:
        return self.runner.evaluate("tuned" if recipe is None else recipe, limit=limit, log_samples=True)

    def evaluate_base(self, limit: int | None) -> dict:
        return self.runner.evaluate("base", limit=limit, log_samples=True)

    def evaluate_rest(self, recipe: Recipe | None, first: dict, skip: int, limit: int | None) -> dict:
        """`recipe` on `limit` items per task, given `first`, its evaluation on the first `skip`: only the rest
        runs, and ``harness.combine`` joins the two (the same numbers and answers as one evaluation)."""
        from lfm.evaluate.harness import combine

        rest = self.runner.evaluate("tuned" if recipe is None else recipe, limit=limit, skip=skip, log_samples=True)
        return combine(self.runner.suite, first, rest, limit=limit)


def _is_organism(tuned: str) -> bool:
    from lfm.organism.tokenizer import is_organism_tokenizer

    return is_organism_tokenizer(tuned)


class LivePair:
    """A pair held in memory for the explorer (an ``lfm.explorer.source.Source``). `progress(done, total,
    message)` is called while loading.

    Args:
        suite: 'organism', 'paper' or a suite YAML (``lfm.evaluate.suites.get_suite``); None: the organism's
            own evaluator for an organism, no evaluation otherwise (module docstring).
    """

    EVALUATIONS_KEPT = 256  # (recipe, per_task) results remembered: moving back to a setting costs nothing

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path, *, suite: str | Path | None = None,
                 progress=None, device: str = "cpu"):
        self.base, self.tuned = str(base_dir), str(tuned_dir)
        pair = open_pair(base_dir, tuned_dir)
        self.description = pair.describe()
        cfg = text_config(pair.tuned.config)
        self.n_heads = cfg.get("num_attention_heads")
        self.n_kv_heads = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // self.n_heads if self.n_heads else None)
        self.n_layers = cfg.get("num_hidden_layers")
        # the model evaluations load runs on the pair's device: the memory check counts it there
        evaluates = bool(suite is not None and str(suite).strip()) or _is_organism(self.tuned)
        self.resident = ResidentPair(pair, device=device, progress=progress or False,
                                     model_device=device if evaluates else None)
        self.names, self.scores = self.resident.names, self.resident.scores
        if progress:
            progress(len(pair.entries), len(pair.entries), "loading the tuned model for evaluation")
        self.evaluator, self.eval_error = self._load_evaluator(suite, device)
        self._evaluations: OrderedDict[tuple, dict] = OrderedDict()
        self._evaluations_lock = threading.Lock()
        self._seconds: dict[int, float] = {}  # per_task -> the last whole evaluation of a merge (``seconds``)
        if self.evaluator is not None:
            what = "the organism's held-out items" if self.evaluator.kind == "organism" else \
                f"suite {self.evaluator.runner.suite.name!r}" + (f" ({suite})" if isinstance(suite, (str, Path))
                                                                  else "")
            self.description += f"\nevaluation: {what}"

    def view(self, name: str, recipe: Recipe) -> TensorView:
        return self.resident.view(name, recipe)

    def view_note(self, recipe: Recipe) -> str:
        return ""  # the view of exactly this recipe, computed now

    # -- numbers (the Source operations) ---------------------------------------------------------

    @property
    def evaluation_off(self) -> str:
        return "" if self.can_evaluate else self.eval_error

    @property
    def draws_curves(self) -> bool:
        return self.sweeps_live

    def evaluation(self, recipe: Recipe | None, per_task: int) -> dict | None:
        """``evaluate`` on ``per_task`` items per task, once per (recipe, per_task): the stages, the references
        and the live sweep share the evaluations of the recipes they have in common. When `recipe` was evaluated
        on fewer items per task (a move's first numbers), a suite evaluates only the rest and combines them."""
        if not self.can_evaluate:
            return None
        key = (recipe, per_task)
        with self._evaluations_lock:
            if key in self._evaluations:
                self._evaluations.move_to_end(key)
                return self._evaluations[key]
            fewer = [k for r, k in self._evaluations if r == recipe and 0 < k and (per_task <= 0 or k < per_task)]
            first = (max(fewer), self._evaluations[(recipe, max(fewer))]) if fewer else None
        if first is not None and self.evaluator.evaluates_rest:  # the page's first numbers: only the rest runs now
            result = self.evaluator.evaluate_rest(recipe, first[1], first[0], self.eval_items(per_task))
        else:
            started = time.perf_counter()
            result = self.evaluate(recipe, self.eval_items(per_task))
            if recipe is not None:  # a merge and its evaluation, as a move costs (the tuned model needs no merge)
                self._seconds[per_task] = time.perf_counter() - started
        with self._evaluations_lock:
            self._evaluations[key] = result
            if len(self._evaluations) > self.EVALUATIONS_KEPT:
                self._evaluations.popitem(last=False)
        return result

    def missing_note(self, recipe: Recipe) -> str:
        return ""

    def seconds(self, per_task: int) -> float | None:
        return self._seconds.get(per_task)

    def reference(self, label: str, per_task: int) -> dict | None:
        if not self.can_evaluate:
            return None
        if label == "base":
            return self.evaluate_base(self.eval_items(per_task))
        return self.evaluation(REFERENCE_RECIPES[label], per_task)

    def curves(self, per_task: int, progress=None):
        """The trade-off curves of a small sweep (``LIVE_SWEEP``), evaluated now; None without evaluation."""
        import pandas as pd

        if not self.can_evaluate:
            return None
        points = sweep_recipes(LIVE_SWEEP["densities"], LIVE_SWEEP["neurons"], alphas=LIVE_SWEEP["alphas"])
        rows = []
        for i, (curve, recipe) in enumerate(points):
            if progress:
                progress(i, len(points), f"sweep: {recipe.label}")
            rows.append(sweep_row(curve, recipe, self.evaluation(recipe, per_task)))
        if progress:
            progress(len(points), len(points), "sweep done")
        return pd.DataFrame(rows)

    def stage_answers(self, stage: str, recipe: Recipe, per_task: int) -> list[dict] | None:
        result = self.evaluation(recipe, per_task)
        return None if result is None else result["answers"]

    def answers_note(self, recipe: Recipe) -> str:
        return ""

    # -- evaluation --------------------------------------------------------------------------

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None

    @property
    def sweeps_live(self) -> bool:
        """Whether the page sweeps its trade-off curves live (~30 points): with the organism's in-process
        evaluator only. A suite evaluation takes seconds to minutes per point, and a background sweep would
        hold the one model while the user waits for the recipe in view; `lfm precompute --suite` or
        `lfm sweep` draw those curves instead."""
        return self.evaluator is not None and self.evaluator.kind == "organism"

    def _load_evaluator(self, suite, device):
        """(evaluator, None), or (None, the one line saying why there is no evaluation). A suite that cannot
        be read is an error of the load (raised), not a page without evaluation."""
        if suite is not None and str(suite).strip():
            suite = suite.strip() if isinstance(suite, str) else suite  # a Suite: trusted by `lfm precompute`
            return SuiteEvaluator(self.resident, self.base, self.tuned, suite, device), None
        if not _is_organism(self.tuned):
            return None, NEEDS_SUITE
        try:
            return OrganismEvaluator(self.resident, self.base, self.tuned), None
        except Exception as e:  # an organism that cannot be loaded: the page shows why
            return None, f"the organism evaluator could not load {self.tuned} ({type(e).__name__}: {e})"

    def eval_items(self, per_task: int):
        """What `evaluate` takes for `per_task` items per task (0 = all): organism items, or a harness limit."""
        return self.evaluator.items(per_task)

    def evaluate(self, recipe: Recipe | None, items=None) -> dict:
        """Apply `recipe` (None = the tuned model itself) to the one loaded model and evaluate it on `items`
        (`eval_items(per_task)`; None = all). Returns LA, VA, OA, tasks, answers (visual, with their image
        paths and taxonomy categories) and language_answers."""
        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        return self.evaluator.evaluate(recipe, self.eval_items(0) if items is None else items)

    def evaluate_base(self, items=None) -> dict:
        """The base LLM on the language side (VA is None: a text-only model)."""
        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        return self.evaluator.evaluate_base(self.eval_items(0) if items is None else items)
