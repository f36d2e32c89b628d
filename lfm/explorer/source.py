"""What the explorer looks at: one `Source` protocol, two implementations.

    LivePair       (live.py)     a pair held in memory: views computed now, merges evaluated now
    ResultsFolder  (results.py)  what `lfm precompute` wrote for a pair too big to hold: views and numbers
                                 looked up (K snaps to the folder's grid), a note where the folder has none

The compute layer (`compute.py`) and the views call these operations only; they never ask which source
they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from lfm.methods.recipe import Recipe
    from lfm.resident import TensorView

REFERENCES = ("base", "tuned", "hard-merge")  # the trade-off plot's anchors
Progress = Callable[[int, int, str], None]  # (done, total, message)


class Source(Protocol):
    # -- the pair ---------------------------------------------------------------------------------
    base: str  # the base model's directory
    tuned: str  # the tuned model's directory
    description: str  # what the page says about it (several lines)
    names: list[str]  # the linear-module tensors a view can draw, in checkpoint order
    scores: dict[str, torch.Tensor]  # {name: C(i) [n_neurons]}
    n_layers: int | None
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None

    def view(self, name: str, recipe: Recipe) -> TensorView:
        """C(i), C'(i), located neurons and C_final(i) of one tensor under ``recipe``; ValueError when this
        source cannot draw that recipe (the page shows why)."""

    def view_note(self, recipe: Recipe) -> str:
        """'' when ``view`` draws exactly ``recipe``, else what it draws instead (a nearer grid point)."""

    # -- numbers ------------------------------------------------------------------------------------
    evaluation_off: str  # '' when the page can show numbers, else why it cannot (one line)
    draws_curves: bool  # whether the page draws trade-off curves for it (cheaply enough to do on load)

    def evaluation(self, recipe: Recipe | None, per_task: int) -> dict | None:
        """LA / VA / OA (and answers, when evaluated live) of ``recipe`` (None: the tuned model), on ``per_task``
        items per task (0: all); None when this source has no numbers for it (``missing_note`` says why)."""

    def missing_note(self, recipe: Recipe) -> str:
        """'' or why ``evaluation(recipe)`` has no numbers ('not precomputed: nearest is ...')."""

    def seconds(self, per_task: int) -> float | None:
        """How long the last whole evaluation of a merge on ``per_task`` items per task took here; None before
        the first (or when numbers are looked up, not evaluated)."""

    def reference(self, label: str, per_task: int) -> dict | None:
        """LA / VA / OA of one of ``REFERENCES``; None when unavailable."""

    def curves(self, per_task: int, progress: Progress | None) -> pd.DataFrame | None:
        """The trade-off curves: rows curve, label, method, ..., LA, VA, OA (results.SWEEP_COLUMNS)."""

    def stage_answers(self, stage: str, recipe: Recipe, per_task: int) -> list[dict] | None:
        """The answers of one stage recipe (``lfm.methods.recipe.stage_recipes``); None if unavailable."""

    def answers_note(self, recipe: Recipe) -> str:
        """'' or why the stages of ``recipe`` have no answers."""
