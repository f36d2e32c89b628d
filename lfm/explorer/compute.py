"""The explorer's heavy work: @pn.cache functions whose every input is an argument.

A source (`lfm.explorer.source.Source`: a `LivePair` or a `ResultsFolder`) is hashed by identity: the cache
lives as long as the loaded pair. Nothing here asks which kind of source it holds. A `Recipe` is hashed by its fields, so moving a slider back to a previous value is a
cache hit. Nothing here draws; `figures.py` turns these tables into plots.
"""

from __future__ import annotations

import html
import json
import threading
from pathlib import Path

import pandas as pd
import panel as pn

from lfm.images import thumbnail_uri
from lfm.methods import STAGES, Recipe, stage_recipes
from lfm.neurons import LINEAR_MODULES, layer_of, module_of
from lfm.score import summary_rows

from lfm.evaluate.compare import transition_counts, transitions  # noqa: F401 (transition_counts: the views')

from .analysis import located_ratio, outcome_row
from .live import LivePair, organism_items  # noqa: F401 (organism_items: precompute's, the tests')
from .results import ResultsFolder
from .source import REFERENCES


class Progress:
    """A progress callback `(done, total, message)`; never part of a cache key."""

    def __init__(self, callback=None):
        self.callback = callback

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.callback is not None:
            self.callback(done, total, message)


def _recipe_hash(recipe: Recipe) -> bytes:
    return json.dumps(recipe.to_dict(), sort_keys=True).encode()


HASH = {Recipe: _recipe_hash, Progress: lambda p: b"progress"}


_OPENING = threading.Lock()


def open_source(kind: str, path: str, tuned: str = "", suite: str = "", progress: Progress | None = None,
                device: str = "cpu"):
    """kind 'pair': LivePair(base=path, tuned=tuned, suite=suite or None, device=device) (held and evaluated on
    ``device``); kind 'results': ResultsFolder(path).

    One source opens at a time per process: a second session asking for the same source waits and gets the
    first's (cached), and models are never loaded from two threads at once (transformers' loading is not
    thread-safe: concurrent loads fail with 'Cannot copy out of meta tensor')."""
    with _OPENING:
        return _open_source(kind, path, tuned, suite, str(device), progress)


# kind -> how it opens (path, tuned, suite, device, progress): every one a `lfm.explorer.source.Source`
OPENERS = {"pair": lambda path, tuned, suite, device, progress: LivePair(path, tuned, suite=suite or None,
                                                                         progress=progress, device=device),
           "results": lambda path, tuned, suite, device, progress: ResultsFolder(path, progress=progress)}


@pn.cache(max_items=4, hash_funcs=HASH)
def _open_source(kind: str, path: str, tuned: str, suite: str, device: str, progress: Progress | None):
    if kind not in OPENERS:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {list(OPENERS)}")
    return OPENERS[kind](path, tuned, suite, device, progress)


@pn.cache(max_items=8)
def neuron_summary(source) -> pd.DataFrame:
    """Per-tensor tail statistics of C(i): name, layer, module, n_neurons, mean, max, median,
    max_over_median, top1_share, top10_share."""
    return pd.DataFrame(summary_rows(source.scores))


@pn.cache(max_items=256, hash_funcs=HASH)
def module_view(source, name: str, recipe: Recipe):
    """The TensorView (C, C', located, C_final) of one tensor under one recipe."""
    return source.view(name, recipe)


@pn.cache(max_items=64, hash_funcs=HASH)
def merge_outcome(source, recipe: Recipe) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-tensor outcome rows, long table of C'(i)/C(i) of located neurons: module, layer, ratio)."""
    rows, ratios = [], []
    for name in source.names:
        view = module_view(source, name, recipe)
        rows.append(outcome_row(view))
        for r in located_ratio(view).tolist():
            ratios.append({"module": module_of(name), "layer": layer_of(name), "ratio": r})
    return pd.DataFrame(rows), pd.DataFrame(ratios, columns=["module", "layer", "ratio"])


def view_note(source, recipe: Recipe) -> str:
    """'' when the view draws exactly `recipe`; else what it draws (a results folder's nearest K)."""
    return source.view_note(recipe)


def not_precomputed(source, recipe: Recipe) -> str:
    """Why the source has no LA/VA for `recipe` ('not precomputed: nearest is <label>'; '' when it has)."""
    return source.missing_note(recipe)


def answers_not_precomputed(source, recipe: Recipe) -> str:
    """Why the source has no per-item answers for `recipe`'s stages ('' when it has them)."""
    return source.answers_note(recipe)


def modules_present(source) -> list[str]:
    present = {module_of(n) for n in source.names}
    return [m for m in LINEAR_MODULES if m in present]


def tensor_name(source, layer: int, module: str) -> str | None:
    for name in source.names:
        if layer_of(name) == layer and module_of(name) == module:
            return name
    return None


# ----------------------------------------------------------------------------------------------
# Evaluation (a live pair evaluates, a results folder looks up)


@pn.cache(max_items=256, hash_funcs=HASH)
def evaluation(source, recipe: Recipe | None, per_task: int) -> dict | None:
    """LA / VA / OA (+ answers when live) of `recipe` (None = the tuned model); None if unavailable."""
    return source.evaluation(recipe, per_task)


@pn.cache(max_items=8)
def reference_points(source, per_task: int) -> pd.DataFrame:
    """Rows label, LA, VA, OA for base, tuned and hard-merge (those the source has)."""
    rows = [(label, source.reference(label, per_task)) for label in REFERENCES]
    return pd.DataFrame([{"label": label, "LA": r["LA"], "VA": r["VA"], "OA": r["OA"]} for label, r in rows if r],
                        columns=["label", "LA", "VA", "OA"])


@pn.cache(max_items=8)
def sweep_table(source, per_task: int, progress: Progress | None = None) -> pd.DataFrame | None:
    """The trade-off curves: a results folder's sweep.csv, or (live) a small sweep evaluated here."""
    return source.curves(per_task, progress)


# ----------------------------------------------------------------------------------------------
# Generations

def thumbnail(path: str, size: int = 48) -> str:
    """An <img> tag with a real thumbnail (``lfm.images.thumbnail_uri``: at most 256 px, made once per file and
    size) inlined as a data URI (no request leaves the page); an image that cannot be shown says why, as text."""
    if not path or not Path(path).is_file():
        return ""
    try:
        data = thumbnail_uri(path, size)
    except ValueError as e:  # a bomb or a broken file: this row says so, the others still show
        return f'<span title="{html.escape(str(e))}">image not shown: {html.escape(str(e).split(": ", 1)[-1][:80])}</span>'
    return (f'<img src="{data}" width="{size}" height="{size}" '
            f'style="image-rendering:pixelated" alt="item image">')


@pn.cache(max_items=64, hash_funcs=HASH)
def generations(source, recipe: Recipe, per_task: int) -> pd.DataFrame | None:
    """One row per multiple-choice item: its image, question, answer, and for each stage (hard,
    suppress at K, restore at K/M: lfm.methods.stage_recipes) the generated answer and its category."""
    try:
        stages = stage_recipes(recipe)
    except ValueError:  # no stages for this method (DARE, DELLA, hard-merge): the page says why
        return None
    per_stage = {}
    for stage, r in stages.items():
        answers = source.stage_answers(stage, r, per_task)
        if answers is None:
            return None
        per_stage[stage] = {a["id"]: a for a in answers}
    rows = []
    for item_id, a in per_stage["hard"].items():
        if any(item_id not in per_stage[s] for s in STAGES):
            continue
        image_path = a.get("image") or ""
        row = {"id": item_id, "image": thumbnail(image_path), "image_path": image_path, "task": a["task"],
               "question": a["question"], "choices": " / ".join(a["choices"]), "answer": a["answer"]}
        for s in STAGES:
            row[s] = per_stage[s][item_id]["generated"]
            row[f"{s}_category"] = per_stage[s][item_id]["category"]
        rows.append(row)
    return pd.DataFrame(rows)


def fixed_summary(table: pd.DataFrame) -> str:
    """'hard → suppress: 12 false → correct (9 not_known, 3 wrong_choice), 1 correct → false; suppress → restore: ...'
    from ``lfm.evaluate.compare.transitions``."""
    parts = []
    for before, after in (("hard", "suppress"), ("suppress", "restore")):
        t = transitions(table, before, after)
        by = sorted(((n, c) for c, n in t["fixed_by_category"].items() if n), key=lambda x: -x[0])
        detail = ", ".join(f"{n} {c}" for n, c in by)
        parts.append(f"{before} → {after}: {t['fixed']} false → correct" + (f" ({detail})" if detail else "")
                     + f", {t['broken']} correct → false")
    return "; ".join(parts)
