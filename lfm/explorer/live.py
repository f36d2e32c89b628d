"""A small (base, tuned) pair held in memory for live exploration: every slider move is a cached lookup.

Loaded once: each LM tensor's base and tuned weights, delta = tuned - base, C(i) for the linear
modules, and |delta| sorted descending (so TIES / Breadcrumbs thresholds at any K are lookups).
When the tuned model is an organism-style MLLM (`lfm.organism.evaluate.load_model` reloads it with
its processor) one model instance is kept, and merged LM weights are loaded into it in place for
evaluation: no merge ever touches the disk.

    >>> pair = LivePair("data/organism/base", "data/organism/tuned")      # doctest: +SKIP
    >>> pair.evaluate(Recipe(method="hard"))["VA"]                         # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from lfm.methods import Recipe, merge_tensor
from lfm.neurons import neuron_axis, neuron_scores
from lfm.pair import open_pair, text_config

from .analysis import TensorView, tensor_view

MAX_LIVE_PARAMS = 50_000_000  # above this the page asks for a precomputed results folder instead


@dataclass
class LiveTensor:
    name: str  # canonical name
    tuned_key: str
    base: torch.Tensor  # float32, shared rows only (extra vocabulary rows stay tuned)
    tuned: torch.Tensor  # float32, as stored (may have extra vocabulary rows)
    delta: torch.Tensor  # [shared shape] float32
    sorted_abs: torch.Tensor  # [numel] |delta| sorted descending
    scores: torch.Tensor | None  # C(i) for the seven linear modules, else None


class LivePair:
    """An in-memory pair. `progress(done, total, message)` is called while loading (optional)."""

    kind = "live"

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path, *, progress=None):
        self.base, self.tuned = str(base_dir), str(tuned_dir)
        pair = open_pair(base_dir, tuned_dir)
        n_params = sum(_numel(pair.tuned.meta(e.tuned_key)[0]) for e in pair.entries)
        if n_params > MAX_LIVE_PARAMS:
            raise ValueError(f"{tuned_dir}: the language model has {n_params / 1e6:.0f}M parameters, too many "
                             f"to explore live (limit {MAX_LIVE_PARAMS / 1e6:.0f}M); write a results folder with "
                             f"`lfm precompute --base {base_dir} --tuned {tuned_dir} --out RESULTS` and open that")
        self.description = pair.describe()
        cfg = text_config(pair.tuned.config)
        self.n_heads = cfg.get("num_attention_heads")
        self.n_kv_heads = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // self.n_heads if self.n_heads else None)
        self.n_layers = cfg.get("num_hidden_layers")
        self.tensors: dict[str, LiveTensor] = {}
        for i, (entry, base_t, tuned_t) in enumerate(pair.iter_lm()):
            if progress:
                progress(i, len(pair.entries), f"reading {entry.name}")
            base_t, tuned_t = base_t.float(), tuned_t.float()
            delta = tuned_t[: base_t.shape[0]] - base_t if tuned_t.shape != base_t.shape else tuned_t - base_t
            if not torch.isfinite(delta).all():
                raise ValueError(f"non-finite delta in tensor {entry.name!r}: one of the checkpoints holds NaN/Inf")
            axis = neuron_axis(entry.name)
            self.tensors[entry.name] = LiveTensor(
                entry.name, entry.tuned_key, base_t, tuned_t, delta,
                torch.sort(delta.abs().flatten(), descending=True).values,
                neuron_scores(delta, axis) if axis is not None else None)
        if progress:
            progress(len(pair.entries), len(pair.entries), "loading the tuned model for evaluation")
        self.names = [n for n, t in self.tensors.items() if t.scores is not None]
        self.scores = {n: self.tensors[n].scores for n in self.names}
        self._lock = threading.Lock()
        self.model, self.processor, self.eval_error = self._load_evaluator()

    # -- neurons -----------------------------------------------------------------------------

    def view(self, name: str, recipe: Recipe) -> TensorView:
        t = self.tensors[name]
        return tensor_view(name, t.delta, recipe, sorted_abs=t.sorted_abs, scores=t.scores)

    # -- evaluation --------------------------------------------------------------------------

    @property
    def can_evaluate(self) -> bool:
        return self.model is not None

    def _load_evaluator(self):
        """(model, processor, None), or (None, None, reason) when the tuned model is not organism-like."""
        try:
            from lfm.organism.evaluate import load_model
            model, processor = load_model(self.tuned)
            if not hasattr(processor, "image_processor"):
                return None, None, f"{self.tuned} is not a LLaVA with a processor"
        except Exception as e:  # any failure to load just disables evaluation; the reason is shown
            return None, None, f"evaluation needs an organism-style MLLM with its processor ({type(e).__name__}: {e})"
        keys = set(model.state_dict())
        self._model_keys = {}
        for t in self.tensors.values():
            key = _model_key(t.tuned_key, keys)
            if key is None:
                return None, None, f"tensor {t.tuned_key!r} has no counterpart in the loaded model"
            self._model_keys[t.name] = key
        return model, processor, None

    @torch.no_grad()
    def evaluate(self, recipe: Recipe | None, items: dict | None = None) -> dict:
        """Apply `recipe` (None = the tuned model itself) to the one loaded model and evaluate it with
        `lfm.organism.evaluate.evaluate` on `items` ({'language': [...], 'visual': [...]}, default all)."""
        from lfm.organism.evaluate import evaluate

        if not self.can_evaluate:
            raise RuntimeError(self.eval_error)
        with self._lock:
            merged = {}
            for name, t in self.tensors.items():
                if recipe is None:
                    merged[self._model_keys[name]] = t.tuned
                else:
                    merged[self._model_keys[name]] = merge_tensor(t.base, t.tuned, recipe, name=name,
                                                                  sorted_abs=t.sorted_abs, scores=t.scores)[0]
            self.model.load_state_dict(merged, strict=False)
            return evaluate((self.model, self.processor), items=items)

    def evaluate_base(self, items: dict | None = None) -> dict:
        """The base LLM on the language items (VA is None: a text-only model)."""
        from lfm.organism.evaluate import evaluate, load_model

        model, tokenizer = load_model(self.base)
        return evaluate((model, tokenizer), items=items)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _model_key(tuned_key: str, keys: set[str]) -> str | None:
    """The loaded model's state_dict key for a checkpoint key (transformers renames LLaVA keys on load)."""
    for candidate in (tuned_key, tuned_key.replace("language_model.model.", "model.language_model.", 1),
                      tuned_key.replace("language_model.lm_head.", "lm_head.", 1)):
        if candidate in keys:
            return candidate
    return None
