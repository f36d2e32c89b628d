"""What a merge does to one tensor's neurons, built only from the engine's public functions.

The engine (lfm.methods) returns a merged delta and DeltaStats; the explorer also wants the
per-neuron picture the paper reasons with:

    C(i)        change score of neuron i before the merge        lfm.neurons.neuron_scores(delta)
    C'(i)       its score after Sub (the suppress stage)          lfm.methods.suppress / METHODS[m].sub
    located     the top-M% neurons (Neuron-Locate)                lfm.neurons.locate, same generator
                                                                  as lfm.methods.merge_tensor
    C_final(i)  its score in the final merged delta (alpha in)    lfm.methods.merge_delta

C'(i)/C(i) of the located neurons is what Neuron-Rescale undoes (it multiplies by C(i)/C'(i)).
Nothing here is new math: these helpers only call the engine and summarise its outputs.
"""

from dataclasses import dataclass, replace

import torch

from lfm.methods import Recipe, merge_delta, suppress, tensor_generator
from lfm.neurons import layer_of, locate, module_of, neuron_axis, neuron_scores


@dataclass
class TensorView:
    """One linear-module tensor under one recipe. All vectors are [n_neurons] float32."""

    name: str
    scores: torch.Tensor  # C(i)
    suppressed: torch.Tensor  # C'(i) after Sub (Neuron-Fusion: the suppress stage)
    located: torch.Tensor  # bool, the neurons restored (empty unless neuron_fusion with M > 0)
    final: torch.Tensor  # C_final(i) of the merged delta
    kept_fraction: float  # entries of delta surviving Sub


def tensor_view(name: str, delta: torch.Tensor, recipe: Recipe, *, sorted_abs: torch.Tensor | None = None,
                scores: torch.Tensor | None = None) -> TensorView:
    """Run the engine's merge of one linear tensor and keep the per-neuron scores at each step.

    Args:
        name: canonical weight name (decides the neuron axis and the random generator's seed).
        delta: [out, in] float32 tuned - base.
        sorted_abs: optional cached |delta| sorted descending (flat).
        scores: optional cached C(i).
    """
    axis = neuron_axis(name)
    if axis is None:
        raise ValueError(f"{name!r} is not one of the seven linear modules; it has no neurons")
    if scores is None:
        scores = neuron_scores(delta, axis)
    generator = tensor_generator(recipe, name) if recipe.is_random else None
    new_delta, stats = merge_delta(delta, recipe, neuron_axis=axis, generator=generator,
                                   sorted_abs=sorted_abs, scores=scores)
    if recipe.method == "neuron_fusion":
        suppressed, _ = suppress(delta, recipe, sorted_abs)
        if recipe.neurons > 0:
            located = locate(scores, recipe.neurons, recipe.locate, tensor_generator(recipe, name)
                             if recipe.is_random else None)
        else:
            located = torch.zeros_like(scores, dtype=torch.bool)
        after = neuron_scores(suppressed, axis)
    else:
        # the method's own Sub and F, without alpha: what survives of each neuron
        unscaled, _ = merge_delta(delta, replace(recipe, alpha=1.0), neuron_axis=axis,
                                  generator=tensor_generator(recipe, name) if recipe.is_random else None,
                                  sorted_abs=sorted_abs, scores=scores)
        after = neuron_scores(unscaled, axis)
        located = torch.zeros_like(scores, dtype=torch.bool)
    return TensorView(name, scores, after, located, neuron_scores(new_delta, axis), stats.kept_fraction)


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
