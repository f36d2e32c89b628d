"""A (base, tuned) pair opened live in the explorer: the engine's ``ResidentPair`` for the neuron views, plus
one loaded model merges are evaluated on, with the pair's suite.

No merge math here: ``view`` is ``ResidentPair.view`` (computed per viewed tensor, on demand) and
``evaluate`` is ``lfm.evaluate.sweep.PointRunner.evaluate`` (the path ``lfm sweep`` takes): the recipe
written into the one loaded model with ``ResidentPair.apply``, then the suite's lm-eval / lmms-eval tasks
(``limit`` items per task), per-item answers from the harness samples classified by ``lfm.taxonomy``. No
parameter cap either: what limits a live pair is memory, checked before anything is read
(``lfm.resident.check_memory``).

Which suite (explicit, never a fallback): the one given; without one, the organism's own ('organism': its
held-out items as local tasks) when the tuned model is an organism (its word-level tokenizer,
``lfm.organism.tokenizer.is_organism_tokenizer``); any other pair is explored without evaluation and
``eval_error`` says to pass a suite.

    >>> from lfm.organism import base_dir, tuned_dir
    >>> pair = LivePair(base_dir(), tuned_dir())
    >>> pair.evaluate(Recipe(method="hard"), pair.eval_items(2))["VA"] is not None
    True
"""

from __future__ import annotations

from pathlib import Path

from lfm.methods import Recipe
from lfm.pair import is_multimodal, open_pair, text_config
from lfm.resident import ResidentPair, TensorView

NEEDS_SUITE = ("evaluation needs a suite for this pair: pass --suite SUITE.yaml (the real pair's is "
               "<root>/suite/suite.yaml) or enter it in 'evaluation suite' and load again")


class LivePair:
    """A pair held in memory for the explorer. `progress(done, total, message)` is called while loading.

    Args:
        suite: 'organism', 'paper' or a suite YAML (``lfm.evaluate.suites.get_suite``); None: 'organism' for
            an organism, no evaluation otherwise (module docstring).
    Attributes:
        runner: the ``PointRunner`` (None without evaluation); eval_error: why there is none.
    """

    kind = "live"

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
        self.multimodal = is_multimodal(pair.tuned.config)
        self.resident = ResidentPair(pair, device=device, progress=progress or False)
        self.names, self.scores = self.resident.names, self.resident.scores
        if progress:
            progress(len(pair.entries), len(pair.entries), "loading the tuned model for evaluation")
        self.runner, self.eval_error = self._load_runner(suite, device)
        if self.runner is not None:
            self.description += f"\nevaluation: suite {self.runner.suite.name!r}" + (
                f" ({suite})" if suite and str(suite) != self.runner.suite.name else "")

    def view(self, name: str, recipe: Recipe) -> TensorView:
        return self.resident.view(name, recipe)

    # -- evaluation --------------------------------------------------------------------------

    @property
    def can_evaluate(self) -> bool:
        return self.runner is not None

    @property
    def sweeps_live(self) -> bool:
        """Whether the page sweeps its trade-off curves live (~30 points): on the organism's suite only (a few
        seconds a point). On another suite a point takes seconds to minutes, and a background sweep would hold
        the one model while the user waits for the recipe in view; `lfm precompute --suite` or `lfm sweep`
        draw those curves instead."""
        return self.runner is not None and self.runner.suite.name == "organism"

    def _load_runner(self, suite, device):
        """(PointRunner, None), or (None, the one line saying why there is no evaluation). A suite that cannot
        be read is an error of the load (raised), not a page without evaluation."""
        from lfm.evaluate.suites import check_datasets, get_suite
        from lfm.evaluate.sweep import PointRunner
        from lfm.organism.tokenizer import is_organism_tokenizer

        if not self.multimodal:
            return None, f"{self.tuned} is not an MLLM: the page evaluates a tuned MLLM (its LA and VA)"
        suite = str(suite).strip() if suite is not None else ""
        if not suite:
            if not is_organism_tokenizer(self.tuned):
                return None, NEEDS_SUITE
            suite = "organism"
        suite = get_suite(suite)
        check_datasets(suite)
        return PointRunner(self.base, self.tuned, suite, device=device, resident=self.resident), None

    def eval_items(self, per_task: int) -> int | None:
        """What `evaluate` takes for `per_task` items of each task (0 = all): the harness limit."""
        return per_task if per_task > 0 else None

    def evaluate(self, recipe: Recipe | None, limit: int | None = None) -> dict:
        """Apply `recipe` (None = the tuned model itself) to the one loaded model and evaluate it on the suite,
        `limit` items per task (`eval_items(per_task)`; None = all). Returns ``lfm.evaluate.harness.evaluate``'s
        result: LA, VA, OA, tasks, answers (visual, with image paths and taxonomy categories) and
        language_answers."""
        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        return self.runner.evaluate("tuned" if recipe is None else recipe, limit=limit, log_samples=True)

    def evaluate_base(self, limit: int | None = None) -> dict:
        """The base LLM on the suite's language tasks (VA is None: a text-only model)."""
        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        return self.runner.evaluate("base", limit=limit, log_samples=True)
