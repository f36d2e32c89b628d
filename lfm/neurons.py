"""Neurons of a transformer's linear modules, their change scores C(i), and the Locate step.

Which axis is a neuron, for a weight stored as [out_features, in_features] (as PyTorch and
safetensors store it):

    q_proj, k_proj, v_proj, gate_proj, up_proj   neuron i = row i     (axis 0)
    o_proj, down_proj                            neuron i = column i  (axis 1)

An FFN neuron i is row i of gate/up and column i of down (the paper's subkey / subvalue); an
attention neuron i is row i of q/k/v and column i of o. With grouped-query attention k_proj and
v_proj have fewer rows than q_proj (n_kv_heads * head_dim): lfm scores and locates them *within
their own matrix* (each k/v row is one neuron, top-M% is taken over that matrix's rows), so a
module's neurons are always the rows/columns of that one tensor. Nothing is summed across modules.

Change score (paper Eq. 2):  C(i) = sum_j |delta[i, j]|  along the non-neuron axis.
Everything here is a pure function on tensors.
"""

import re

import torch

from lfm.methods.registry import LOCATE_MODES

ROW_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
COLUMN_MODULES = ("o_proj", "down_proj")
LINEAR_MODULES = ROW_MODULES + COLUMN_MODULES

_LAYER = re.compile(r"layers\.(\d+)\.")


def module_of(name: str) -> str | None:
    """The linear module type of a weight name ('up_proj'), or None for norms, embeddings, heads."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in LINEAR_MODULES:
        return parts[-2]
    return None


def extra_vocab_rows(name: str, base_shape, tuned_shape) -> int | None:
    """How many vocabulary rows the tuned tensor adds (0 for equal shapes), or None when the shapes
    differ in any other way. Only embed_tokens / lm_head may grow, along dim 0 (an added `<image>` token).

    >>> extra_vocab_rows("lm_head.weight", (100, 8), (101, 8)), extra_vocab_rows("model.norm.weight", (8,), (9,))
    (1, None)
    """
    base_shape, tuned_shape = tuple(base_shape), tuple(tuned_shape)
    if base_shape == tuned_shape:
        return 0
    if ("embed" in name or "lm_head" in name) and len(base_shape) == len(tuned_shape) >= 1 \
            and base_shape[1:] == tuned_shape[1:] and tuned_shape[0] > base_shape[0]:
        return tuned_shape[0] - base_shape[0]
    return None


def layer_of(name: str) -> int | None:
    """The decoder layer index in a weight name, or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def neuron_axis(name: str) -> int | None:
    """0 (rows) for q/k/v/gate/up, 1 (columns) for o/down, None for every other tensor."""
    module = module_of(name)
    if module is None:
        return None
    return 0 if module in ROW_MODULES else 1


def neuron_sums(values: torch.Tensor, axis: int) -> torch.Tensor:
    """The sum of each neuron's entries of a 2-D float32 tensor (along dim ``1 - axis``) in one fixed order on
    every device: pairwise, by halving (entries j and j + n/2 added, an odd last one folded into the first,
    until one is left). Every step is an elementwise IEEE addition, so the CPU and a GPU give the same bits
    (``tensor.sum`` reduces in an order of its own per device and per thread count), and a neuron's sum does
    not depend on which other neurons are in the tensor (a block of rows sums each row as the whole tensor
    does). The one home of how C(i) and C'(i) are summed (docs/devices.md).

    >>> neuron_sums(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 0).tolist()
    [6.0, 15.0]
    >>> neuron_sums(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 1).tolist()
    [5.0, 7.0, 9.0]
    """
    dim = 1 - axis
    n = values.shape[dim]
    if n == 0:
        return values.new_zeros(values.shape[axis])
    x = values
    while n > 1:
        half = n // 2
        summed = x.narrow(dim, 0, half) + x.narrow(dim, half, half)
        if n % 2:
            summed.narrow(dim, 0, 1).add_(x.narrow(dim, 2 * half, 1))
        x, n = summed, half
    return x.reshape(-1).clone() if x is values else x.reshape(-1)


def neuron_scores(delta: torch.Tensor, axis: int) -> torch.Tensor:
    """C(i) = sum_j |delta_ij| (summed by ``neuron_sums``: the same bits on every device).

    Args:
        delta: [out, in] weight change.
        axis: the neuron axis (0: rows are neurons, 1: columns are neurons).
    Returns:
        scores: [n_neurons] float32.
    """
    if delta.dim() != 2:
        raise ValueError(f"neuron scores need a 2-D weight, got shape {tuple(delta.shape)}")
    return neuron_sums(delta.float().abs(), axis)


def locate(scores: torch.Tensor, fraction: float, how: str = "top",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Select int(fraction * n_neurons) neurons.

    Args:
        scores: [n_neurons] change scores.
        fraction: M in [0, 1].
        how: 'top' (largest C(i), the paper's Locate), 'bottom' (smallest) or 'random'
            (uniform, a control for whether locating by change matters).
        generator: a generator for 'random' (``lfm.methods.math.tensor_generator``; draws on its device).
    Returns:
        located: [n_neurons] bool. Ties in 'top'/'bottom' are broken by lower index.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"neuron fraction M must be in [0, 1], got {fraction}")
    if how not in LOCATE_MODES:
        raise ValueError(f"locate must be one of {LOCATE_MODES}, got {how!r}")
    n = scores.numel()
    k = int(fraction * n)
    located = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k == 0:
        return located
    if how == "random":
        # drawn on the generator's device (lfm.methods.math.tensor_generator: the merge's)
        where = scores.device if generator is None else generator.device
        order = torch.randperm(n, generator=generator, device=where).to(scores.device)
    else:
        # stable sort keeps ties in index order, so the choice is deterministic
        order = torch.sort(scores.float(), descending=(how == "top"), stable=True).indices
    located[order[:k]] = True
    return located


def tail_stats(scores: torch.Tensor) -> dict[str, float]:
    """How heavy-tailed a module's change scores are.

    Returns mean, max, median, max_over_median, and top1_share / top10_share: the share of the
    total change sum_i C(i) held by the top 1% / 10% of neurons (at least one neuron each), and
    top1_lift: top1_share over its no-concentration value k/n (k = the neurons counted, so 1.0 means
    uniform C(i) whatever the module's size; comparable across modules, unlike top1_share).
    """
    s = scores.float().flatten()
    total = float(s.sum())
    ordered = torch.sort(s, descending=True).values
    n = s.numel()

    def share(frac: float) -> float:
        return float(ordered[: max(1, int(frac * n))].sum()) / total if total > 0 else 0.0

    median = float(s.quantile(0.5))  # the midpoint average, as numpy.median
    return {
        "mean": float(s.mean()),
        "max": float(ordered[0]),
        "median": median,
        "max_over_median": float(ordered[0]) / median if median > 0 else float("inf"),
        "top1_share": share(0.01),
        "top1_lift": share(0.01) * n / max(1, int(0.01 * n)),
        "top10_share": share(0.10),
    }
