"""Summaries of what a merge does to one tensor's neurons (the engine's ``lfm.resident.TensorView``).

The per-neuron picture the paper reasons with, as ``lfm.resident.tensor_view`` computes it:

    C(i)        change score of neuron i before the merge        lfm.neurons.neuron_scores(delta)
    C'(i)       its score after Sub (the suppress stage)          lfm.methods.suppress / METHODS[m].sub
    located     the top-M% neurons (Neuron-Locate)                lfm.neurons.locate, same generator
                                                                  as lfm.methods.merge_tensor
    C_final(i)  its score in the final merged delta (alpha in)    lfm.methods.merge_delta

C'(i)/C(i) of the located neurons is what Neuron-Rescale undoes (it multiplies by C(i)/C'(i)).
Nothing here is new math: these helpers only summarise the engine's views.
"""

import math

import pandas as pd
import torch

from lfm.neurons import layer_of, module_of
from lfm.resident import TensorView, tensor_view  # noqa: F401 (the engine's view, drawn here)


def outcome_row(view: TensorView) -> dict:
    """Per-tensor summary of a merge: entries kept, share of the total change sum_i C(i) that survives
    Sub and that is in the final delta, located fraction, and C'(i)/C(i) over the located neurons."""
    total = float(view.scores.sum())
    ratio = located_ratio(view)
    return {
        "name": view.name, "layer": layer_of(view.name), "module": module_of(view.name),
        "kept_entries": view.kept_fraction,
        "change_after_suppress": float(view.suppressed.sum()) / total if total > 0 else 0.0,
        "change_after_merge": float(view.final.sum()) / total if total > 0 else 0.0,
        "located_fraction": float(view.located.float().mean()) if view.located.numel() else 0.0,
        "located_ratio_median": float(ratio.median()) if ratio.numel() else float("nan"),
        "located_ratio_min": float(ratio.min()) if ratio.numel() else float("nan"),
    }


def located_ratio(view: TensorView) -> torch.Tensor:
    """C'(i)/C(i) of the located neurons with C(i) > 0: [n_located]."""
    keep = view.located & (view.scores > 0)
    return view.suppressed[keep] / view.scores[keep]


def head_groups(module: str, n_neurons: int, head_dim: int | None, n_heads: int | None,
                n_kv_heads: int | None) -> torch.Tensor | None:
    """Attention head of each neuron: [n_neurons] long, or None for MLP modules.

    q/k/v rows and o columns are grouped by head_dim; with GQA (n_kv_heads < n_heads), k/v head h is
    shared by query heads h*g .. h*g+g-1, g = n_heads / n_kv_heads.
    """
    if module not in ("q_proj", "k_proj", "v_proj", "o_proj") or not head_dim:
        return None
    if n_neurons % head_dim:
        return None
    return torch.arange(n_neurons) // head_dim


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct/n (95% for z=1.96): honest for small n and
    for 0 or n correct, where the normal interval collapses.

    >>> lo, hi = wilson_interval(14, 24)
    >>> round(lo, 3), round(hi, 3)
    (0.388, 0.755)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> wilson_interval(6, 6)[1], wilson_interval(0, 6)[0]  # exactly: the formula rounds to 0.9999999999999999
    (1.0, 0.0)
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # all correct (none correct): the score equation's root is exactly 1 (0), which the sum misses by rounding
    return (0.0 if correct <= 0 else max(0.0, centre - half)), (1.0 if correct >= n else min(1.0, centre + half))


def item_counts(result: dict) -> dict:
    """Items behind an evaluation's LA and VA: {'language': (correct, n), 'visual': (correct, n)} from its
    answer lists (lfm.organism.evaluate.evaluate); a side without answers is absent (a results folder)."""
    out = {}
    lang = result.get("language_answers") or []
    if lang:
        out["language"] = (sum(bool(a["correct"]) for a in lang), len(lang))
    vis = result.get("answers") or []
    if vis:
        out["visual"] = (sum(a["category"] == "correct" for a in vis), len(vis))
    return out


def per_task_table(result: dict) -> pd.DataFrame:
    """One row per task of an evaluation: kind (language | visual), task, correct, n, accuracy and its 95%
    Wilson interval (lo, hi), counted from the answer lists (so n is visible: a task on 8 items moves in
    steps of 0.125)."""
    rows = []
    for kind, answers, ok in (("language", result.get("language_answers") or [], lambda a: bool(a["correct"])),
                              ("visual", result.get("answers") or [], lambda a: a["category"] == "correct")):
        by_task: dict[str, list[bool]] = {}
        for a in answers:
            by_task.setdefault(a["task"], []).append(ok(a))
        for task, hits in by_task.items():
            lo, hi = wilson_interval(sum(hits), len(hits))
            rows.append({"kind": kind, "task": task, "correct": sum(hits), "n": len(hits),
                         "accuracy": sum(hits) / len(hits), "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["kind", "task", "correct", "n", "accuracy", "lo", "hi"])


def changed_items(first: pd.DataFrame, second: pd.DataFrame, stage: str = "restore") -> pd.DataFrame:
    """Items whose `stage` category differs between two generations tables (compute.generations): id, task,
    question, answer, and each side's answer and category (columns first / first_category, second / ...)."""
    a = first[["id", "task", "question", "answer", stage, f"{stage}_category"]]
    b = second[["id", stage, f"{stage}_category"]]
    both = a.merge(b, on="id", suffixes=("_first", "_second"))
    both = both[both[f"{stage}_category_first"] != both[f"{stage}_category_second"]]
    return both.rename(columns={f"{stage}_first": "first", f"{stage}_category_first": "first_category",
                                f"{stage}_second": "second", f"{stage}_category_second": "second_category"})
