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
