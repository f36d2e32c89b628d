"""A (base, tuned) pair opened live in the explorer: the engine's ``ResidentPair`` for the neuron views, plus
the organism's evaluator when the tuned model is an organism-style LLaVA.

No merge math here: ``view`` is ``ResidentPair.view`` (computed per viewed tensor, on demand) and
``evaluate`` writes the recipe into one loaded model with ``ResidentPair.apply`` (``MergeablePair``). No
parameter cap either: what limits a live pair is memory, checked before anything is read
(``lfm.resident.check_memory``).

    >>> from lfm.organism import base_dir, tuned_dir
    >>> pair = LivePair(base_dir(), tuned_dir())
    >>> pair.evaluate(Recipe(method="hard"))["VA"] is not None
    True
"""

from __future__ import annotations

from pathlib import Path

from lfm.methods import Recipe
from lfm.pair import open_pair, text_config
from lfm.resident import ResidentPair, TensorView


class LivePair:
    """A pair held in memory for the explorer. `progress(done, total, message)` is called while loading."""

    kind = "live"

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path, *, progress=None, device: str = "cpu"):
        self.base, self.tuned = str(base_dir), str(tuned_dir)
        pair = open_pair(base_dir, tuned_dir)
        self.description = pair.describe()
        cfg = text_config(pair.tuned.config)
        self.n_heads = cfg.get("num_attention_heads")
        self.n_kv_heads = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // self.n_heads if self.n_heads else None)
        self.n_layers = cfg.get("num_hidden_layers")
        self.resident = ResidentPair(pair, device=device, progress=progress or False)
        self.names, self.scores = self.resident.names, self.resident.scores
        if progress:
            progress(len(pair.entries), len(pair.entries), "loading the tuned model for evaluation")
        self.evaluator, self.eval_error = self._load_evaluator()

    def view(self, name: str, recipe: Recipe) -> TensorView:
        return self.resident.view(name, recipe)

    # -- evaluation --------------------------------------------------------------------------

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None

    def _load_evaluator(self):
        """(MergeablePair, None), or (None, reason) when the tuned model is not an organism-style LLaVA."""
        from lfm.organism.merging import MergeablePair

        try:
            evaluator = MergeablePair(self.resident, self.tuned)
            if not hasattr(evaluator.processor, "image_processor"):
                return None, f"{self.tuned} is not a LLaVA with a processor"
            self.resident._model_objects(evaluator.model)  # every LM tensor has a place in the model
        except Exception as e:  # any failure to load just disables evaluation; the reason is shown
            return None, f"evaluation needs an organism-style MLLM with its processor ({type(e).__name__}: {e})"
        return evaluator, None

    def evaluate(self, recipe: Recipe | None, items: dict | None = None) -> dict:
        """Apply `recipe` (None = the tuned model itself) to the one loaded model and evaluate it with
        `lfm.organism.evaluate.evaluate` on `items` ({'language': [...], 'visual': [...]}, default all)."""
        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        return self.evaluator.evaluate(recipe, items)

    def evaluate_base(self, items: dict | None = None) -> dict:
        """The base LLM on the language items (VA is None: a text-only model)."""
        from lfm.organism.evaluate import evaluate

        return evaluate(self.base, items=items)
