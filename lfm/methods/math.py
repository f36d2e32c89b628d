"""The paper's merge math, as pure functions on one weight's delta: every method's Sub and F, and
Neuron-Fusion (suppress, then restore the located neurons).

The framework (Eq. 1):  theta_merge = theta_base + F(Sub(delta)),  delta = theta_tuned - theta_base.
A method is one row of `lfm.methods.registry.METHODS` naming its Sub (which entries of delta survive) and
its F (how the survivors are scaled back). Neuron-Fusion's Sub is a *suppressor* (one of the magnitude
baselines, or uniform alpha-scaling) and its F is a *restore* of the located neurons.

    method           Sub(delta)                                   F(x)
    task_arithmetic  delta                                        alpha * x
    ties             keep the int(K*n) largest |delta|            alpha * x          (one tuned model: no sign election)
    breadcrumbs      drop the top int(gamma*n), keep next int(K*n) alpha * x
    dare             keep each entry with probability K           alpha * x / K      (or l1-norm matching)
    della            per row, keep prob. K-eps..K+eps by |rank|   alpha * x / p_ij   (or l1-norm matching)
    hard             nothing (the base LLM inside the MLLM)       0
    neuron_fusion    suppress (ties | breadcrumbs: mask at K,     restore located neurons: replace (their full
                     task_arithmetic: alpha * delta)              delta) or rescale (x C(i)/C'(i)); then alpha
                                                                  (not again for the task_arithmetic suppressor)

The functions never modify their inputs; they may return an input itself where nothing changes (a mask that
keeps everything, alpha = 1). A weight is [out, in] as stored; `lfm.neurons` says which axis is a neuron.
The same bytes for big tensors, block by block: `lfm.methods.blocked`; one named tensor: `lfm.methods.tensor`.
"""

import zlib
from dataclasses import dataclass

import torch

from lfm.kernels import count_true, keep_where, less, ranks_of_magnitude
from lfm.methods.recipe import Recipe
from lfm.methods.registry import METHODS, alpha_is_the_suppression, rows_of, sub_row
from lfm.methods.select import top_k_mask
from lfm.neurons import locate, neuron_scores

RANK_BLOCK = 1 << 20  # entries DELLA ranks at once: rows are independent, and the int64 sort indices stay small


def tensor_generator(recipe: Recipe, name: str, device: str | torch.device = "cpu") -> torch.Generator:
    """The random draws of one tensor (DARE, DELLA, locate=random): a generator of ``device`` (the one the
    merge runs on: the draws are made there, never copied from the host) seeded from (seed, tensor name), so a
    draw does not depend on the order tensors are visited (crc32, not Python's salted hash). Reproducible per
    device: a CPU generator (Mersenne Twister) and a CUDA one (Philox) give different streams from one seed
    (docs/devices.md). Taken modulo 2**64, the range torch accepts: the same number as before for every seed
    below ~1.8e13, and no overflow above."""
    seed = (recipe.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def uniform(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) float32 of ``shape``, drawn on the generator's device (else ``device``), returned on ``device``."""
    where = device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=where).to(device)


def true_divide(values: torch.Tensor, divisor: float) -> torch.Tensor:
    """``values / divisor`` as an IEEE division on every device, in place: CUDA turns a division by a Python
    number into a multiplication by its reciprocal (another rounding); by a tensor on the same device it
    divides. On CPU float32 division by a number already divides: the same bytes as ``values / divisor``."""
    return values.div_(torch.tensor(divisor, dtype=values.dtype, device=values.device))


# ----------------------------------------------------------------------------------------------
# Sub: which entries of delta survive. Each returns (mask [same shape, bool], keep_prob or None).

def ties_k(recipe: Recipe, numel: int) -> tuple[int]:
    """TIES keeps the int(K*n) largest |delta|."""
    return (int(recipe.density * numel),)


def breadcrumbs_ks(recipe: Recipe, numel: int) -> tuple[int, int]:
    """Breadcrumbs keeps the band between the int(gamma*n) largest (outliers, shrunk so that int(K*n)
    entries are still kept when K + gamma > 1) and the next int(K*n)."""
    n_keep = int(recipe.density * numel)
    n_top = min(int(recipe.gamma * numel), numel - n_keep)
    return (n_top + n_keep, n_top)


def top_k_counts(recipe: Recipe, numel: int) -> tuple[int, ...]:
    """The k of every top-k set of |delta| the recipe's Sub takes for a tensor of ``numel`` entries (its row's
    ``top_k``; none for a Sub not made of such sets).

    >>> top_k_counts(Recipe(method="breadcrumbs", density=0.2, gamma=0.01), 1000)
    (210, 10)
    >>> top_k_counts(Recipe(density=0.2), 1000), top_k_counts(Recipe(method="dare"), 1000)
    ((200,), ())
    """
    row = sub_row(recipe)
    return () if row.top_k is None else tuple(row.top_k(recipe, numel))


def keep_all(delta, recipe, generator=None, sorted_abs=None):
    """Task arithmetic: every entry survives (mask None means 'all', saving a pass)."""
    return None, None


def keep_none(delta, recipe, generator=None, sorted_abs=None):
    return torch.zeros_like(delta, dtype=torch.bool), None


def keep_top_k(delta, recipe, generator=None, sorted_abs=None):
    """TIES trim: the int(K*n) largest |delta|."""
    (k,) = ties_k(recipe, delta.numel())
    return top_k_mask(delta.abs(), k, sorted_abs), None


def keep_band(delta, recipe, generator=None, sorted_abs=None):
    """Breadcrumbs: drop the int(gamma*n) largest |delta| (outliers), keep the next int(K*n).

    When K + gamma > 1 the outlier drop shrinks so that int(K*n) entries are still kept.
    """
    outer, n_top = breadcrumbs_ks(recipe, delta.numel())
    magnitude = delta.abs()
    # top-k masks are nested (same threshold rule), so the difference is exactly the band
    band = top_k_mask(magnitude, outer, sorted_abs) & ~top_k_mask(magnitude, n_top, sorted_abs)
    return band, None


def keep_bernoulli(delta, recipe, generator=None, sorted_abs=None):
    """DARE: keep every entry independently with probability K."""
    # one value on the delta's device, no memory per entry (and no copy of it anywhere)
    p = torch.tensor(recipe.density, dtype=torch.float32, device=delta.device).expand(delta.shape)
    return less(uniform(delta.shape, generator, delta.device), p), p


def keep_by_magnitude_rank(delta, recipe, generator=None, sorted_abs=None):
    """DELLA MagPrune: per row, keep probability grows linearly with |delta|'s rank in that row,
    from K-eps (smallest) to K+eps (largest)."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n_cols = rows.shape[1]
    p = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    step = max(1, RANK_BLOCK // max(n_cols, 1))  # a block of rows at a time
    for start in range(0, rows.shape[0], step):
        ranks = ranks_of_magnitude(rows[start: start + step])
        rank01 = true_divide(ranks.float(), n_cols - 1) if n_cols > 1 else \
            torch.full_like(ranks, 0.5, dtype=torch.float32)
        p[start: start + step] = (recipe.density - recipe.epsilon) + 2 * recipe.epsilon * rank01
    mask = less(uniform(rows.shape, generator, rows.device), p)
    return mask.reshape(delta.shape), p.reshape(delta.shape)


# ----------------------------------------------------------------------------------------------
# F: how the survivors are scaled back. Each returns (new delta, located neurons restored by replace).

def scale(delta, mask, keep_prob, recipe, located=None, axis=None, scores=None):
    """alpha * Sub(delta)."""
    kept = delta if mask is None else delta.masked_fill(~mask, 0.0)
    return (kept if recipe.alpha == 1.0 else recipe.alpha * kept), 0


def rescale_kept(delta, mask, keep_prob, recipe, located=None, axis=None, scores=None):
    """alpha * Sub(delta) / p (inverse), or matched to delta's l1 norm ('l1', as mergekit)."""
    kept = keep_where(mask, delta)  # a new tensor: scaled in place from here (the same arithmetic)
    if recipe.rescale == "inverse":
        return kept.mul_(recipe.alpha).div_(keep_prob), 0
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return kept.mul_(recipe.alpha), 0
    return kept.mul_(recipe.alpha).mul_(before / after), 0


# ----------------------------------------------------------------------------------------------
# Neuron-Fusion: suppress, then restore the located neurons (Locate: lfm.neurons.locate).

def keep_suppressed(delta, recipe, generator=None, sorted_abs=None):
    """Neuron-Fusion's Sub: the suppressor's Sub (TIES, Breadcrumbs at K; TaskA keeps every entry)."""
    return METHODS[recipe.suppress].sub(delta, recipe, generator, sorted_abs)


def suppressed_delta(delta: torch.Tensor, mask: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """Neuron-Suppress's output: delta * mask (alpha comes after restore); alpha * delta for a suppressor
    keeping every entry (task_arithmetic: uniform scaling is the suppression)."""
    if alpha_is_the_suppression(recipe):
        return recipe.alpha * delta
    return delta.masked_fill(~mask, 0.0)


def suppress(delta: torch.Tensor, recipe: Recipe, sorted_abs: torch.Tensor | None = None):
    """Neuron-Suppress. Returns (suppressed [same shape], mask [bool], all True for task_arithmetic)."""
    mask, _ = keep_suppressed(delta, recipe, None, sorted_abs)
    suppressed = suppressed_delta(delta, mask, recipe)
    return suppressed, torch.ones_like(delta, dtype=torch.bool) if mask is None else mask


def restore(delta, mask, keep_prob, recipe, located=None, axis=None, scores=None):
    """Neuron-Fusion's F: the suppressed delta with the located neurons restored (replace or rescale),
    then alpha (not again where alpha was the suppression). ``scores``: C(i) of ``delta`` if known."""
    suppressed, n_fallback = suppressed_delta(delta, mask, recipe), 0
    if located is not None:
        if recipe.restore == "replace":
            suppressed = restore_replace(delta, suppressed, located, axis)
        else:
            suppressed, n_fallback = restore_rescale(delta, suppressed, located, axis, scores)
    if alpha_is_the_suppression(recipe) or recipe.alpha == 1.0:
        return suppressed, n_fallback
    return recipe.alpha * suppressed, n_fallback


def along(vector: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-neuron [n_neurons] vector shaped to broadcast over an [out, in] weight along the neuron axis."""
    return vector.view(-1, 1) if axis == 0 else vector.view(1, -1)


def restore_replace(delta: torch.Tensor, suppressed: torch.Tensor, located: torch.Tensor, axis: int):
    """Neuron-Replace (paper Eq. 3): located neurons get their full delta back.

    delta, suppressed: [out, in]; located: [n_neurons] bool along `axis`.
    """
    if not bool(located.any()):  # nothing to restore (rescale's usual case: every located C'(i) > 0)
        return suppressed
    return torch.where(along(located, axis), delta, suppressed)


def rescale_ratio(scores: torch.Tensor, scores_after: torch.Tensor, located: torch.Tensor):
    """Neuron-Rescale's factor per neuron (the one home of its rule; the engines apply it): C(i)/C'(i) for
    located neurons with C'(i) > 0, else 1. A located neuron with C'(i) = 0 cannot be rescaled: it is
    restored by replace instead.

    Args: scores C(i), scores_after C'(i), located: [n_neurons] (bool for located).
    Returns: (ratio [n_neurons] float32, empty [n_neurons] bool: located with C'(i) = 0, restored by replace).

    >>> rescale_ratio(torch.tensor([4., 2., 3.]), torch.tensor([2., 0., 1.]), torch.tensor([True, True, False]))
    (tensor([2., 1., 1.]), tensor([False,  True, False]))
    """
    empty = located & (scores_after == 0)
    rescalable = located & ~empty
    ratio = torch.ones_like(scores)
    ratio[rescalable] = scores[rescalable] / scores_after[rescalable]
    return ratio, empty


def restore_rescale(delta: torch.Tensor, suppressed: torch.Tensor, located: torch.Tensor, axis: int,
                    scores: torch.Tensor | None = None):
    """Neuron-Rescale (paper Eq. 4): a located neuron's surviving entries are scaled by C(i)/C'(i), so its
    change score after suppression equals the original (``rescale_ratio``). ``scores``: C(i) of ``delta`` if
    known. Returns (restored, n_replaced_fallback)."""
    scores = neuron_scores(delta, axis) if scores is None else scores
    ratio, empty = rescale_ratio(scores, neuron_scores(suppressed, axis), located)
    restored = suppressed * along(ratio, axis)
    restored = restore_replace(delta, restored, empty, axis)
    return restored, count_true(empty)


def final_scores(scores: torch.Tensor, suppressed: torch.Tensor, located: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """C_final(i) of a masking recipe from C(i), C'(i) and the located neurons, by what F does to a neuron: a
    located neuron gets its C(i) back (Replace: its full delta; Rescale: times C(i)/C'(i)), the others keep
    C'(i); then |alpha| (not where alpha was the suppression: C'(i) has it already; none for hard-merge).

    >>> final_scores(torch.tensor([4., 2.]), torch.tensor([1., 1.]), torch.tensor([True, False]), Recipe(alpha=0.5))
    tensor([2.0000, 0.5000])
    """
    final = torch.where(located, scores, suppressed)
    if rows_of(recipe)[0].copies_base or alpha_is_the_suppression(recipe):
        return final
    return final * abs(recipe.alpha)


# ----------------------------------------------------------------------------------------------
# Eq. 1 for one delta: Sub, Neuron-Locate for a neuron-restoring row, F.

@dataclass
class DeltaStats:
    """What a merge did to one tensor (aggregated per module into lfm_recipe.json)."""

    numel: int
    kept: int  # entries surviving Sub / suppress
    n_neurons: int = 0
    n_located: int = 0
    n_fallback_replace: int = 0  # located neurons with C'(i)=0, restored by replace

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.numel if self.numel else 0.0


def merge_delta(delta: torch.Tensor, recipe: Recipe, *, neuron_axis: int | None = None,
                generator: torch.Generator | None = None, sorted_abs: torch.Tensor | None = None,
                scores: torch.Tensor | None = None):
    """F(Sub(delta)) for one tensor.

    Args:
        delta: [out, in] (or any shape for non-neuron tensors), float32.
        recipe: the merge.
        neuron_axis: 0/1 for the seven linear modules (neuron restore applies), None otherwise
            (neuron_fusion then only suppresses).
        generator: ``tensor_generator`` (on delta's device) for dare / della / locate=random.
        sorted_abs: optional cached |delta| sorted descending (flat), for fast repeated thresholds.
        scores: optional cached C(i) for this tensor.
    Returns:
        (new_delta [same shape as delta], DeltaStats)
    """
    method = METHODS[recipe.method]
    mask, keep_prob = method.sub(delta, recipe, generator, sorted_abs)
    stats = DeltaStats(delta.numel(), delta.numel() if mask is None else count_true(mask))
    located = None
    if method.restores_neurons and neuron_axis is not None:  # Neuron-Locate
        stats.n_neurons = delta.shape[neuron_axis]
        if recipe.neurons > 0:
            scores = neuron_scores(delta, neuron_axis) if scores is None else scores
            located = locate(scores, recipe.neurons, recipe.locate, generator)
            stats.n_located = count_true(located)
    new_delta, stats.n_fallback_replace = method.f(delta, mask, keep_prob, recipe, located, neuron_axis, scores)
    return new_delta, stats
