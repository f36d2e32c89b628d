"""Every merge method of Locate-then-Merge, as pure functions on one weight's delta.

The paper's framework (Eq. 1):  theta_merge = theta_base + F(Sub(delta)),  delta = theta_tuned - theta_base.
A method is one row of `METHODS`: its Sub (which entries of delta survive) and its F (how the
survivors are scaled back). Neuron-Fusion's Sub is a *suppressor* (one of the magnitude baselines,
or uniform alpha-scaling) and its F is a *restore* of the located neurons.

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

The functions never modify their inputs; they may return an input itself where nothing changes (a
mask that keeps everything, alpha = 1, a tensor taken whole from one side). A weight is [out, in] as
stored; see `lfm.neurons` for which axis is a neuron.
"""

import math
import re
import zlib
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from lfm.kernels import (count_true, equal, greater, greater_equal, keep_where, kth_smallest, less, masked_values,
                         ranks_of_magnitude, select, true_positions)
from lfm.names import ALIASES, LOCATE_MODES, METHOD_ROWS, OTHERS, RESCALES, RESTORES, SUPPRESSORS, parse_seed
from lfm.neurons import extra_vocab_rows, locate, module_of, neuron_axis, neuron_scores


# ----------------------------------------------------------------------------------------------
# The recipe: every knob of a merge, validated once.

@dataclass(frozen=True)
class Recipe:
    """One merge, fully described. Defaults are the paper's good settings (K=0.2, M=0.3, alpha=1)."""

    method: str = "neuron_fusion"
    density: float = 0.2  # K in (0, 1]: fraction of delta entries each tensor keeps
    neurons: float = 0.3  # M in [0, 1]: fraction of neurons restored per module; 0 = suppress-only stage
    suppress: str = "ties"  # neuron_fusion's Sub: ties | breadcrumbs | task_arithmetic
    restore: str = "rescale"  # neuron_fusion's F: replace (Neu-P-*) | rescale (Neu-S-*)
    alpha: float = 1.0  # scales the final delta (is the suppressor itself for task_arithmetic)
    gamma: float = 0.01  # breadcrumbs: fraction of largest |delta| dropped as outliers
    epsilon: float = 0.1  # della: keep probabilities span K-eps .. K+eps
    rescale: str = "inverse"  # dare/della: 1/p (the papers) or l1 (match the l1 norm, as mergekit >= 0.1.0)
    locate: str = "top"  # which neurons to restore: top C(i) (the paper), random or bottom (controls)
    seed: int = 0  # for dare, della and locate=random; same seed => same bytes
    others: str = "method"  # non-linear LM tensors (norms, embeddings, lm_head): method | tuned | base
    keep_base: tuple[str, ...] = ()  # regexes on canonical names that take the base weight
    keep_tuned: tuple[str, ...] = ()  # regexes on canonical names that take the tuned weight

    def __post_init__(self):
        object.__setattr__(self, "keep_base", tuple(self.keep_base))
        object.__setattr__(self, "keep_tuned", tuple(self.keep_tuned))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)} "
                             f"or a paper alias {sorted(ALIASES)}")
        _check_choice("suppress", self.suppress, SUPPRESSORS)
        _check_choice("restore", self.restore, RESTORES)
        _check_choice("rescale", self.rescale, RESCALES)
        _check_choice("locate", self.locate, LOCATE_MODES)
        _check_choice("others", self.others, OTHERS)
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density K must be in (0, 1], got {self.density}")
        if not 0.0 <= self.neurons <= 1.0:
            raise ValueError(f"neurons M must be in [0, 1] (M=0 is the suppress-only stage), got {self.neurons}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        parse_seed(self.seed)  # lfm.names: one rule for every seed
        if self.method == "della" and self.density < 1.0 and not (
                self.density - self.epsilon > 0 and self.density + self.epsilon <= 1):
            raise ValueError(f"della needs 0 < K-epsilon and K+epsilon <= 1, got K={self.density}, "
                             f"epsilon={self.epsilon}; lower --epsilon")
        for pattern in self.keep_base + self.keep_tuned:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"invalid regex {pattern!r} in keep_base/keep_tuned: {e}") from e

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Recipe":
        """Build a recipe from a method name or a paper alias ('neu-p-ties', 'neu-s-bread', 'ta', ...)."""
        _check_keys(overrides)
        key = name.strip().lower()
        preset = dict(ALIASES.get(key, {"method": key.replace("-", "_")}))
        preset.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**preset)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Strict: an unknown key is an error (a typo must not silently become a default)."""
        _check_keys(data)
        data = dict(data)
        method = data.pop("method", "neuron_fusion")
        return cls.from_name(method, **data)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_base"], d["keep_tuned"] = list(self.keep_base), list(self.keep_tuned)
        return d

    @property
    def label(self) -> str:
        """A short human name: 'Neu-S-TIES K=0.2 M=0.3', 'TIES K=0.2', 'hard-merge'. Every setting that
        changes the merge and is not its default is named, so two different merges never share a label
        (the explorer and the reports show numbers under it): 'Neu-S-TIES K=0.2 M=0.3 locate=random',
        'TIES K=0.2 a=0.7', 'DARE K=0.3 seed=2', 'TIES K=0.2 others=tuned'.

        >>> Recipe(locate="bottom").label
        'Neu-S-TIES K=0.2 M=0.3 locate=bottom'
        >>> Recipe(method="della", density=0.3, epsilon=0.05, rescale="l1", seed=1).label
        'DELLA K=0.3 eps=0.05 rescale=l1 seed=1'
        """
        if self.method == "hard":
            return "hard-merge"
        suppressor = self.sub_method
        if self.method == "task_arithmetic":
            name = f"TaskA a={self.alpha:g}"
        elif self.method == "neuron_fusion":
            sup = {"ties": "TIES", "breadcrumbs": "Bread", "task_arithmetic": "TaskA"}[self.suppress]
            tag = "P" if self.restore == "replace" else "S"
            k = f" a={self.alpha:g}" if self.suppress == "task_arithmetic" else f" K={self.density:g}"
            where = "" if self.locate == "top" or self.neurons == 0 else f" locate={self.locate}"
            name = f"Neu-{tag}-{sup}{k} M={self.neurons:g}{where}"
        else:
            name = f"{METHODS[self.method].title} K={self.density:g}"
        default = Recipe()
        extras = []
        if suppressor != "task_arithmetic" and self.alpha != default.alpha:
            extras.append(f"a={self.alpha:g}")
        if suppressor == "breadcrumbs" and self.gamma != default.gamma:
            extras.append(f"gamma={self.gamma:g}")
        if self.method == "della" and self.epsilon != default.epsilon:
            extras.append(f"eps={self.epsilon:g}")
        if self.method in ("dare", "della") and self.rescale != default.rescale:
            extras.append(f"rescale={self.rescale}")
        if self.is_random and self.seed != default.seed and not (self.method == "neuron_fusion" and self.neurons == 0):
            extras.append(f"seed={self.seed}")
        if self.others != default.others:
            extras.append(f"others={self.others}")
        for side, patterns in (("keep_base", self.keep_base), ("keep_tuned", self.keep_tuned)):
            if patterns:
                extras.append(f"{side}={','.join(patterns)}")
        return " ".join([name, *extras])

    @property
    def sub_method(self) -> str:
        """The registry row whose Sub this recipe applies: the method itself, or Neuron-Fusion's suppressor."""
        return self.suppress if self.method == "neuron_fusion" else self.method

    @property
    def is_random(self) -> bool:
        return self.method in ("dare", "della") or (self.method == "neuron_fusion" and self.locate == "random")


def _check_keys(data: dict) -> None:
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown recipe keys {unknown}; valid keys: {sorted(known)}")


def make_recipe(recipe: "Recipe | dict | str | None" = None, **fields) -> Recipe:
    """A Recipe from a Recipe, a dict (strict keys), a method name/alias, or keyword fields.

    >>> make_recipe("neu-p-ties", density=0.3).label
    'Neu-P-TIES K=0.3 M=0.3'
    >>> make_recipe("ties", densty=0.3)
    Traceback (most recent call last):
    ...
    ValueError: unknown recipe keys ['densty']; valid keys: ['alpha', 'density', 'epsilon', 'gamma', 'keep_base', 'keep_tuned', 'locate', 'method', 'neurons', 'others', 'rescale', 'restore', 'seed', 'suppress']
    """
    if isinstance(recipe, Recipe):
        return Recipe.from_dict({**recipe.to_dict(), **fields}) if fields else recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict({**recipe, **fields})
    method = recipe or fields.pop("method", "neuron_fusion")
    return Recipe.from_name(method, **fields)


STAGES = ("hard", "suppress", "restore")


def stage_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """The paper's three stages (Section 4.5) at ``recipe``'s settings: hard-merge, suppress (M = 0) and
    restore (M > 0). A TIES / Breadcrumbs / TaskA recipe is the suppress stage itself: restore is
    Neuron-Fusion over it at the default M. DARE, DELLA and hard-merge have no such stages.

    >>> {s: r.label for s, r in stage_recipes(Recipe(density=0.2, neurons=0.3)).items()}
    {'hard': 'hard-merge', 'suppress': 'Neu-S-TIES K=0.2 M=0', 'restore': 'Neu-S-TIES K=0.2 M=0.3'}
    """
    if recipe.method in SUPPRESSORS:
        recipe = Recipe(**{**recipe.to_dict(), "method": "neuron_fusion", "suppress": recipe.method,
                           "neurons": Recipe.neurons})
    elif recipe.method != "neuron_fusion":
        raise ValueError(f"{recipe.label} has no suppress/restore stages; pick Neuron-Fusion or one of its "
                         f"suppressors {list(SUPPRESSORS)}")
    if recipe.neurons <= 0:
        raise ValueError("the restore stage needs M > 0 (M = 0 is the suppress stage)")
    return {"hard": Recipe(method="hard"), "suppress": replace(recipe, neurons=0.0), "restore": recipe}


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Sub: which entries of delta survive. Each returns (mask [same shape, bool], keep_prob or None).

EXACT_SELECT_MAX = 1 << 17  # up to this many entries a full selection is fast enough
SAMPLE_SIZE = 65536  # about this many strided entries bracket the answer of a bigger selection


def _band_bounds(sample: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) around the k-th largest of n values, from a strided sample of them, for one pass that takes
    the entries >= hi as certainly above it and keeps the few in (lo, hi) to select it among: the sample's
    order statistics at the answer's quantile -+1%. Deltas of half-precision checkpoints tie by thousands:
    a bound equal to the sample's value at the answer's quantile sits in the tie group that probably holds
    the answer, so it moves just past that value (the group is kept whole); a bound elsewhere leaves its own
    tie group outside the band. The caller checks the answer fell inside, by counts."""
    m = sample.numel()
    q = 1.0 - k / n
    lo = kth_smallest(sample, max(1, int((q - 0.01) * m)))
    mid = kth_smallest(sample, min(m, max(1, int(q * m))))
    hi = kth_smallest(sample, min(m, int((q + 0.01) * m) + 1))
    if lo == mid:
        lo = torch.nextafter(lo, torch.tensor(-math.inf))
    if hi == mid:
        hi = torch.nextafter(hi, torch.tensor(math.inf))
    return lo, hi


def _above_and_band(magnitude: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries >= hi, entries in (lo, hi)) of a block, as two bool masks from two compares and an xor."""
    over = greater_equal(magnitude, hi)
    return over, greater(magnitude, lo).logical_xor_(over)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a flat tensor (1 <= k <= n), exactly.

    For big tensors a full selection over n entries is slow on CPU, so the answer is first
    bracketed by quantiles of a fixed strided sample and then selected exactly among the few
    entries inside the bracket. If the bracket misses (adversarial layouts), the exact full
    selection runs instead: the result never depends on the sample.
    """
    n = values.numel()
    if n <= EXACT_SELECT_MAX:
        return kth_smallest(values, n - k + 1)
    lo, hi = _band_bounds(values[:: n // SAMPLE_SIZE], n, k)
    over, band = _above_and_band(values, lo, hi)
    above, inside = count_true(over), masked_values(values, band)
    if above < k <= above + inside.numel():
        return kth_smallest(inside, inside.numel() - (k - above) + 1)
    return kth_smallest(values, n - k + 1)


def top_k_mask(abs_delta: torch.Tensor, k: int, sorted_abs: torch.Tensor | None = None) -> torch.Tensor:
    """Exactly k True entries at the largest |delta| (ties broken by lower flat index).

    Args:
        abs_delta: |delta|, any shape.
        k: how many to keep, clipped to [0, numel].
        sorted_abs: optional [numel] |delta| sorted descending; makes the threshold a lookup
            (sweeps compute it once per tensor).
    """
    n = abs_delta.numel()
    flat = abs_delta.reshape(-1)
    if k >= n:
        return torch.ones_like(abs_delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(abs_delta, dtype=torch.bool)
    threshold = sorted_abs[k - 1] if sorted_abs is not None else kth_largest(flat, k)
    mask = greater_equal(flat, threshold)
    extra = count_true(mask) - k
    if extra > 0:  # entries tied at the threshold: keep the lower flat indices
        tied = true_positions(equal(flat, threshold))
        mask[tied[tied.numel() - extra:]] = False
    return mask.view_as(abs_delta)


MERGE_BLOCK = 1 << 20  # entries per block of the block-by-block merges and of DELLA's row ranking (4 MB of
# float32: a block's temporaries stay in the CPU's last-level cache; measured on a 0.4B TIES merge, 2 cores:
# 1M-entry blocks 2.6 s, 256K 3.5 s, 4M 2.9 s)
# tensors from this size on are merged in blocks, smaller ones whole (fewer torch calls). Every torch call is
# a barrier for torch's threads: blocks are only fast when idle threads sleep instead of spinning
# (OMP_WAIT_POLICY=PASSIVE, set by the `lfm` command: lfm.cli.let_idle_threads_sleep)
BLOCKED_FROM = 1 << 20


def delta_into(delta: torch.Tensor, base_float: torch.Tensor, tuned_block: torch.Tensor,
               base_block: torch.Tensor) -> torch.Tensor:
    """``tuned_block.float() - base_block`` bit for bit into ``delta`` (float32, same shape), leaving base's
    float32 copy in ``base_float`` for a later add: two conversions into reused buffers, where a mixed-dtype
    subtraction would convert into a fresh temporary. Returns ``delta``."""
    base_float.copy_(base_block)
    return delta.copy_(tuned_block).sub_(base_float)


def _delta_blocks(base: torch.Tensor, tuned: torch.Tensor, name: str, check: bool = True):
    """Yield (block slice, delta block [MERGE_BLOCK] float32, base block as float32) over the flat entries of tuned - base,
    refusing a non-finite delta (one cheap sum per block; only a non-finite sum looks closer) unless
    ``check`` is False (a second pass over blocks already checked). Every block is the same reused buffer:
    the caller is done with one before it asks for the next."""
    flat_base, flat_tuned = base.reshape(-1), tuned.reshape(-1)
    scratch = torch.empty((2, min(MERGE_BLOCK, flat_base.numel())), dtype=torch.float32, device=base.device)
    for start in range(0, flat_base.numel(), MERGE_BLOCK):
        block = slice(start, start + MERGE_BLOCK)
        size = flat_base[block].numel()
        delta = delta_into(scratch[0, :size], scratch[1, :size], flat_tuned[block], flat_base[block])
        if check:
            refuse_non_finite(delta, name)
        yield block, delta, scratch[1, :size]


def _abs_delta_bounds(base: torch.Tensor, tuned: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``_band_bounds`` of the k-th largest |tuned - base| from a strided sample; (-1, inf): every value
    in the band, when the tensor is small enough to select in full."""
    n = base.numel()
    if n <= EXACT_SELECT_MAX:
        return torch.tensor(-1.0), torch.tensor(math.inf)
    step = n // SAMPLE_SIZE
    return _band_bounds((tuned.reshape(-1)[::step].float() - base.reshape(-1)[::step]).abs(), n, k)


def _kth_in_band(above: int, inside: torch.Tensor, k: int):
    """The k-th largest of a tensor from the count of its entries above a bracket and the values inside it:
    (threshold, n_above: entries > it, n_tied: entries == it), or None when the k-th largest is not inside."""
    if not above < k <= above + inside.numel():
        return None
    threshold = kth_smallest(inside, inside.numel() - (k - above) + 1)
    return threshold, above + count_true(greater(inside, threshold)), count_true(equal(inside, threshold))


def _kth_abs_delta(above: int, inside: list[torch.Tensor], k: int, base: torch.Tensor, tuned: torch.Tensor):
    """``_kth_in_band`` of the blocks' bands of |tuned - base|; when the bracket missed (adversarial layouts),
    the selection over the whole |delta| instead."""
    return _kth_in_band(above, torch.cat(inside), k) or _kth_in_band(0, (tuned.float() - base).abs().reshape(-1), k)


def kth_largest_abs_delta(base: torch.Tensor, tuned: torch.Tensor, k: int, name: str) -> tuple[torch.Tensor, int, int]:
    """The k-th largest |tuned - base| (1 <= k <= n) as ``kth_largest`` selects it, exactly, without ever
    holding |delta| whole: a strided sample brackets it, then one pass over blocks counts the entries above
    the bracket and keeps those inside. Returns (threshold, n_above: entries > it, n_tied: entries == it)."""
    lo, hi = _abs_delta_bounds(base, tuned, k)
    above, inside = 0, []
    for _, delta, _ in _delta_blocks(base, tuned, name):
        magnitude = delta.abs_()
        over, band = _above_and_band(magnitude, lo, hi)
        above += count_true(over)
        inside.append(masked_values(magnitude, band))
    return _kth_abs_delta(above, inside, k, base, tuned)


def _top_k_block_mask(magnitude: torch.Tensor, threshold, ties_left: int, drop_ties: bool) -> tuple[torch.Tensor, int]:
    """The top-k mask of one block in flat order, given the threshold and how many entries equal to it are
    still to be kept (``top_k_mask``'s rule: ties kept by lower flat index). Returns (mask, ties left)."""
    if not drop_ties:  # every entry equal to the threshold is kept
        return greater_equal(magnitude, threshold), ties_left
    if ties_left == 0:  # the kept ties were all in earlier blocks
        return greater(magnitude, threshold), 0
    mask = greater_equal(magnitude, threshold)
    is_tied = equal(magnitude, threshold)
    n_tied = count_true(is_tied)
    if n_tied > ties_left:  # the block where the kept ties end: drop the later ones
        mask.view(-1)[true_positions(is_tied)[ties_left:]] = False
    return mask, max(0, ties_left - n_tied)


def select_top_k_one_pass(base: torch.Tensor, tuned: torch.Tensor, k: int, name: str, out: torch.Tensor) -> bool:
    """TIES at alpha = 1 (each entry exactly tuned where |delta| is among the k largest, else base) in one pass
    over the inputs: a strided sample brackets the k-th largest |delta| in (lo, hi) (``_band_bounds``); every
    block's entries >= hi are taken from tuned, the rest from base, and the few inside the bracket are remembered; once
    the exact threshold is known among them, the kept ones are patched to tuned. The set is ``top_k_mask``'s
    (ties at the threshold kept by lower flat index).

    Args: base, tuned: same shape and dtype, n > EXACT_SELECT_MAX entries; 0 < k < n; out: [same], contiguous.
    Returns False, with ``out`` partly written, when the bracket missed the k-th largest (then merge another way).
    """
    n = base.numel()
    flat_base, flat_tuned, flat_out = base.reshape(-1), tuned.reshape(-1), out.view(-1)
    lo, hi = _abs_delta_bounds(base, tuned, k)
    scratch = torch.empty((2, min(MERGE_BLOCK, n)), dtype=torch.float32, device=base.device)  # reused per block
    above, band_ids, band_values = 0, [], []
    for start in range(0, n, MERGE_BLOCK):
        block = slice(start, start + MERGE_BLOCK)
        size = min(MERGE_BLOCK, n - start)
        m = delta_into(scratch[0, :size], scratch[1, :size], flat_tuned[block], flat_base[block]).abs_()
        refuse_non_finite(m, name)
        keep, band = _above_and_band(m, lo, hi)
        above += count_true(keep)
        ids = true_positions(band)
        band_values.append(m.index_select(0, ids))
        band_ids.append(ids.add_(start))
        select(keep, flat_tuned[block], flat_base[block], out=flat_out[block])
    values, ids = torch.cat(band_values), torch.cat(band_ids)  # ids ascend: flat order
    if not above < k <= above + values.numel():
        return False
    rank = k - above  # how many of the bracket's entries are kept
    threshold = kth_smallest(values, values.numel() - rank + 1)
    chosen = greater(values, threshold)
    tied = true_positions(equal(values, threshold))
    chosen[tied[: rank - count_true(chosen)]] = True  # ties: the lower flat indices
    kept = ids[chosen]
    flat_out[kept] = flat_tuned[kept]
    return True


def merge_top_k_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                          out: torch.Tensor) -> "DeltaStats":
    """``merge_tensor`` of a recipe whose whole change is a TIES mask (TIES, or Neuron-Fusion's TIES suppress
    where no neuron is restored) into ``out``, block by block: |delta| is never held whole, so beside the
    inputs and the output only a few blocks of float32 are in memory. The bytes equal the whole-tensor path
    (`top_k_mask` then `select` at alpha = 1 for TIES, else base + alpha * masked delta in float32).

    Args: base, tuned: same shape; out: [same shape], tuned's dtype, contiguous. Returns the DeltaStats.
    """
    n = base.numel()
    (k,) = top_k_counts(recipe, n, "ties")
    k = min(max(k, 0), n)
    as_select = recipe.method == "ties" and recipe.alpha == 1.0
    axis = neuron_axis(name) if recipe.method == "neuron_fusion" else None
    stats = DeltaStats(n, k, n_neurons=0 if axis is None else base.shape[axis])
    if as_select and base.dtype == tuned.dtype and 0 < k < n and n > EXACT_SELECT_MAX and \
            select_top_k_one_pass(base, tuned, k, name, out):
        return stats
    threshold, n_above, n_tied = kth_largest_abs_delta(base, tuned, k, name) if 0 < k < n else (None, 0, 0)
    ties_left = k - n_above  # entries equal to the threshold that are kept: the first ones in flat order
    flat_base, flat_tuned, flat_out = base.reshape(-1), tuned.reshape(-1), out.view(-1)
    checked = threshold is not None and n > EXACT_SELECT_MAX  # kth_largest_abs_delta's pass checked every block
    magnitude = torch.empty(min(MERGE_BLOCK, n), dtype=torch.float32, device=base.device)  # reused per block
    for block, delta, base_float in _delta_blocks(base, tuned, name, check=not checked):
        if threshold is None:
            mask = torch.full_like(delta, k == n, dtype=torch.bool)
        else:
            mask, ties_left = _top_k_block_mask(torch.abs(delta, out=magnitude[: delta.numel()]), threshold,
                                                ties_left, n_tied > k - n_above)
        if as_select and flat_tuned.dtype == flat_base.dtype:
            select(mask, flat_tuned[block], flat_base[block], out=flat_out[block])
        elif as_select:
            flat_out[block] = select(mask, flat_tuned[block], flat_base[block])
        else:
            kept = keep_where(mask, delta, out=delta)
            if recipe.alpha != 1.0:
                kept.mul_(recipe.alpha)
            flat_out[block] = kept.add_(base_float)
    return stats


def merge_rows_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                         out: torch.Tensor) -> "DeltaStats":
    """``merge_tensor`` of a DARE or DELLA recipe (rescale 'inverse') into ``out``, a block of rows at a time:
    beside the inputs and the output only a few [MERGE_BLOCK] float32 temporaries are in memory. The bytes
    equal the whole-tensor path: both methods act on each row alone (DELLA ranks within a row, DARE per
    entry), the CPU generator's stream does not depend on how a draw is split, and the rest is elementwise.

    Args: base, tuned: [rows, ...] same shape; out: [same shape], tuned's dtype. Returns the DeltaStats.
    """
    method = METHODS[recipe.method]
    generator = tensor_generator(recipe, name)
    rows_base, rows_tuned = base.reshape(base.shape[0], -1), tuned.reshape(tuned.shape[0], -1)
    rows_out = out.view(out.shape[0], -1)
    step = max(1, MERGE_BLOCK // max(rows_base.shape[1], 1))
    kept = 0
    for start in range(0, rows_base.shape[0], step):
        block = slice(start, start + step)
        delta = rows_tuned[block].float() - rows_base[block]
        refuse_non_finite(delta, name)
        mask, keep_prob = method.sub(delta, recipe, generator, None)
        new_delta, _ = method.f(delta, mask, keep_prob, recipe)
        rows_out[block] = new_delta.add_(rows_base[block])
        kept += count_true(mask)
    return DeltaStats(base.numel(), kept)


def merge_neuron_fusion_in_blocks(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, name: str,
                                  out: torch.Tensor) -> "DeltaStats":
    """``merge_tensor`` of Neuron-Fusion with the TIES suppressor on one linear weight into ``out``, a block of
    rows at a time, in two passes over the inputs instead of ~20 whole-tensor float32 passes:

        pass 1   delta -> |delta|: the k-th largest (bracketed, as ``kth_largest_abs_delta``) and C(i)
        locate   the top-M neurons by C(i)
        pass 2   delta -> TIES mask -> suppressed -> C'(i) -> restored (replace / rescale) -> + base -> out

    The bytes equal the whole-tensor path (``merge_delta``): every step is elementwise except the sums C(i)
    and C'(i). A row's sum over a block of whole rows is bitwise its sum in the whole tensor (torch reduces
    each row alone; tested), so row neurons (axis 0) are summed per block; a column's sum over a block of rows
    is not, so for column neurons (axis 1) |delta| (then |suppressed|) is kept whole in one float32 buffer
    and summed whole, and the mask is kept for pass 2.

    Args: base, tuned: [out, in], same shape; out: [same shape], tuned's dtype. Returns the DeltaStats.
    """
    axis = neuron_axis(name)
    n, (n_rows, n_cols) = base.numel(), base.shape
    step = max(1, MERGE_BLOCK // max(n_cols, 1))
    blocks = [slice(start, start + step) for start in range(0, n_rows, step)]
    (k,) = top_k_counts(recipe, n, "ties")
    k = min(max(k, 0), n)

    scratch = torch.empty((4, min(step, n_rows), n_cols), dtype=torch.float32, device=base.device)  # reused

    def delta_of(block):  # tuned.float() - base of these rows, bit for bit; base's float32 copy in scratch[3]
        rows = base[block].shape[0]
        return delta_into(scratch[0, :rows], scratch[3, :rows], tuned[block], base[block])

    lo, hi = _abs_delta_bounds(base, tuned, k) if 0 < k < n else (None, None)
    whole_abs = torch.empty(base.shape, dtype=torch.float32, device=base.device) if axis == 1 else None
    row_scores, above, inside = [], 0, []
    for block in blocks:  # pass 1
        delta = delta_of(block)
        refuse_non_finite(delta, name)
        magnitude = delta.abs_()
        if axis == 0:
            row_scores.append(magnitude.sum(dim=1))  # C(i) = neuron_scores(delta, 0), bit for bit
        else:
            whole_abs[block] = magnitude
        if lo is not None:
            over, band = _above_and_band(magnitude, lo, hi)
            above += count_true(over)
            inside.append(masked_values(magnitude, band))
    scores = torch.cat(row_scores) if axis == 0 else whole_abs.sum(dim=0)
    threshold, n_above, n_tied = _kth_abs_delta(above, inside, k, base, tuned) if lo is not None else (None, 0, 0)
    del inside

    generator = tensor_generator(recipe, name) if recipe.is_random else None
    located = locate(scores, recipe.neurons, recipe.locate, generator)
    stats = DeltaStats(n, k, n_neurons=scores.numel(), n_located=count_true(located))
    drop_ties, ties_left = n_tied > k - n_above, k - n_above

    def mask_of(magnitude):
        nonlocal ties_left
        if threshold is None:
            return torch.full_like(magnitude, k == n, dtype=torch.bool)
        mask, ties_left = _top_k_block_mask(magnitude, threshold, ties_left, drop_ties)
        return mask

    ratio = empty = whole_mask = None
    if axis == 1:  # C'(i) over the whole |suppressed|: |delta * mask| is |delta| * mask, exactly
        whole_mask = torch.empty(base.shape, dtype=torch.bool, device=base.device)
        for block in blocks:
            whole_mask[block] = mask_of(whole_abs[block])
            whole_abs[block] = keep_where(whole_mask[block], whole_abs[block])
        if recipe.restore == "rescale":
            ratio, empty = rescale_ratio(scores, whole_abs.sum(dim=0), located)
            ratio, empty = ratio.view(1, -1), empty.view(1, -1)
        del whole_abs
    for block in blocks:  # pass 2
        delta = delta_of(block)
        if axis == 1:
            mask = whole_mask[block]
        else:
            magnitude = torch.abs(delta, out=scratch[1, : delta.shape[0]])
            mask = mask_of(magnitude)
        restored = keep_where(mask, delta, out=scratch[2, : delta.shape[0]])  # the suppressed delta
        if recipe.restore == "replace" and axis == 0:  # the located rows' delta back, copied row by row
            rows = true_positions(located[block])
            restored.index_copy_(0, rows, delta.index_select(0, rows))  # torch.where(keep rows, delta, restored)
        elif recipe.restore == "replace":
            if bool(located.any()):
                restored = torch.where(located.view(1, -1), delta, restored)
        else:
            if axis == 0:  # C'(i) of the located rows (the others keep ratio 1): |delta * mask| = |delta| * mask
                rows = true_positions(located[block])
                after = torch.zeros(delta.shape[0], dtype=torch.float32, device=delta.device)
                after[rows] = keep_where(mask[rows], magnitude[rows]).sum(dim=1)  # a row's sum: as in the whole
                ratio, empty = rescale_ratio(scores[block], after, located[block])
                ratio, empty = ratio.view(-1, 1), empty.view(-1, 1)
                stats.n_fallback_replace += count_true(empty)
                restored[rows] = restored[rows].mul_(ratio[rows])
            else:
                restored = restored.mul_(ratio)
            if bool(empty.any()):
                restored = torch.where(empty, delta, restored)
        if recipe.alpha != 1.0:
            restored = restored.mul_(recipe.alpha)
        out[block] = restored.add_(scratch[3, : delta.shape[0]])  # + base
    if recipe.restore == "rescale" and axis == 1:
        stats.n_fallback_replace = count_true(empty)
    return stats


def streams_rows(recipe: Recipe, base: torch.Tensor) -> bool:
    """Whether `merge_rows_in_blocks` computes this tensor's merge: DARE / DELLA with the papers' 1/p rescale
    of a matrix (the l1 rescale needs the whole tensor's norms; a vector is one DELLA row)."""
    return recipe.method in ("dare", "della") and recipe.rescale == "inverse" and base.dim() >= 2


def streams_neurons(recipe: Recipe, name: str, base: torch.Tensor) -> bool:
    """Whether `merge_neuron_fusion_in_blocks` computes this tensor's merge: Neuron-Fusion with the TIES
    suppressor restoring neurons of a linear weight, on CPU (on a GPU the whole-tensor path is kept: its
    reductions are not guaranteed to sum a block of rows as they sum the whole tensor)."""
    return (recipe.method == "neuron_fusion" and recipe.suppress == "ties" and recipe.neurons > 0
            and neuron_axis(name) is not None and base.dim() == 2 and base.device.type == "cpu")


def streams_top_k(recipe: Recipe, name: str) -> bool:
    """Whether `merge_top_k_in_blocks` computes this tensor's merge: the recipe's change is one TIES mask."""
    if recipe.method == "ties":
        return True
    return recipe.method == "neuron_fusion" and recipe.suppress == "ties" and (
        recipe.neurons == 0 or neuron_axis(name) is None)


def top_k_counts(recipe: Recipe, numel: int, sub: str | None = None) -> tuple[int, ...]:
    """The k of every top-k set of |delta| the recipe's Sub (or the row ``sub``) takes for a tensor of
    ``numel`` entries.

    TIES keeps the int(K*n) largest; Breadcrumbs keeps the band between the int(gamma*n) largest
    (outliers, shrunk so that int(K*n) entries are still kept when K + gamma > 1) and the next int(K*n).

    >>> top_k_counts(Recipe(method="breadcrumbs", density=0.2, gamma=0.01), 1000)
    (210, 10)
    >>> top_k_counts(Recipe(density=0.2), 1000), top_k_counts(Recipe(method="dare"), 1000)
    ((200,), ())
    """
    sub = sub or recipe.sub_method
    n_keep = int(recipe.density * numel)
    if sub == "ties":
        return (n_keep,)
    if sub == "breadcrumbs":
        n_top = min(int(recipe.gamma * numel), numel - n_keep)
        return (n_top + n_keep, n_top)
    return ()


def keep_all(delta, recipe, generator=None, sorted_abs=None):
    """Task arithmetic: every entry survives (mask None means 'all', saving a pass)."""
    return None, None


def keep_none(delta, recipe, generator=None, sorted_abs=None):
    return torch.zeros_like(delta, dtype=torch.bool), None


def keep_top_k(delta, recipe, generator=None, sorted_abs=None):
    """TIES trim: the int(K*n) largest |delta|."""
    (k,) = top_k_counts(recipe, delta.numel(), "ties")
    return top_k_mask(delta.abs(), k, sorted_abs), None


def keep_band(delta, recipe, generator=None, sorted_abs=None):
    """Breadcrumbs: drop the int(gamma*n) largest |delta| (outliers), keep the next int(K*n).

    When K + gamma > 1 the outlier drop shrinks so that int(K*n) entries are still kept.
    """
    outer, n_top = top_k_counts(recipe, delta.numel(), "breadcrumbs")
    magnitude = delta.abs()
    # top-k masks are nested (same threshold rule), so the difference is exactly the band
    band = top_k_mask(magnitude, outer, sorted_abs) & ~top_k_mask(magnitude, n_top, sorted_abs)
    return band, None


def keep_bernoulli(delta, recipe, generator=None, sorted_abs=None):
    """DARE: keep every entry independently with probability K."""
    p = torch.tensor(recipe.density, dtype=torch.float32).expand(delta.shape)  # one value, no memory per entry
    mask = less(torch.rand(delta.shape, generator=generator), p)
    return mask.to(delta.device), p.to(delta.device)


def keep_by_magnitude_rank(delta, recipe, generator=None, sorted_abs=None):
    """DELLA MagPrune: per row, keep probability grows linearly with |delta|'s rank in that row,
    from K-eps (smallest) to K+eps (largest)."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n_cols = rows.shape[1]
    p = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    # rows are independent: ranked a block of rows at a time, the int64 sort indices stay small
    step = max(1, MERGE_BLOCK // max(n_cols, 1))
    for start in range(0, rows.shape[0], step):
        ranks = ranks_of_magnitude(rows[start: start + step])
        rank01 = ranks.float() / (n_cols - 1) if n_cols > 1 else torch.full_like(ranks, 0.5, dtype=torch.float32)
        p[start: start + step] = (recipe.density - recipe.epsilon) + 2 * recipe.epsilon * rank01
    draw = torch.rand(rows.shape, generator=generator).to(rows.device)
    mask = less(draw, p)
    return mask.reshape(delta.shape), p.reshape(delta.shape)


# ----------------------------------------------------------------------------------------------
# F: how the survivors are scaled back.

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
# Neuron-Fusion: suppress, then restore the located neurons.

def keep_suppressed(delta, recipe, generator=None, sorted_abs=None):
    """Neuron-Fusion's Sub: the suppressor's Sub (TIES, Breadcrumbs at K; TaskA keeps every entry)."""
    return METHODS[recipe.suppress].sub(delta, recipe, None, sorted_abs)


def suppressed_delta(delta: torch.Tensor, mask: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """Neuron-Suppress's output: delta * mask (alpha comes after restore); alpha * delta for the
    task_arithmetic suppressor (uniform scaling is the suppression)."""
    if recipe.suppress == "task_arithmetic":
        return recipe.alpha * delta
    return delta.masked_fill(~mask, 0.0)


def suppress(delta: torch.Tensor, recipe: Recipe, sorted_abs: torch.Tensor | None = None):
    """Neuron-Suppress. Returns (suppressed [same shape], mask [bool], all True for task_arithmetic)."""
    mask, _ = keep_suppressed(delta, recipe, None, sorted_abs)
    suppressed = suppressed_delta(delta, mask, recipe)
    return suppressed, torch.ones_like(delta, dtype=torch.bool) if mask is None else mask


def restore(delta, mask, keep_prob, recipe, located=None, axis=None, scores=None):
    """Neuron-Fusion's F: the suppressed delta with the located neurons restored (replace or rescale),
    then alpha (not again for the task_arithmetic suppressor, where alpha was the suppression).
    ``scores``: C(i) of ``delta`` when the caller has it (saves a pass)."""
    suppressed, n_fallback = suppressed_delta(delta, mask, recipe), 0
    if located is not None:
        if recipe.restore == "replace":
            suppressed = restore_replace(delta, suppressed, located, axis)
        else:
            suppressed, n_fallback = restore_rescale(delta, suppressed, located, axis, scores)
    if recipe.suppress == "task_arithmetic" or recipe.alpha == 1.0:
        return suppressed, n_fallback
    return recipe.alpha * suppressed, n_fallback


def restore_replace(delta: torch.Tensor, suppressed: torch.Tensor, located: torch.Tensor, axis: int):
    """Neuron-Replace (paper Eq. 3): located neurons get their full delta back.

    delta, suppressed: [out, in]; located: [n_neurons] bool along `axis`.
    """
    if not bool(located.any()):  # nothing to restore (rescale's usual case: every located C'(i) > 0)
        return suppressed
    keep = located.view(-1, 1) if axis == 0 else located.view(1, -1)
    return torch.where(keep, delta, suppressed)


def rescale_ratio(scores: torch.Tensor, scores_after: torch.Tensor, located: torch.Tensor):
    """Neuron-Rescale's factor per neuron: C(i)/C'(i) for located neurons with C'(i) > 0, else 1.

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
    """Neuron-Rescale (paper Eq. 4): a located neuron's surviving entries are scaled by C(i)/C'(i),
    so its change score after suppression equals the original.

    A located neuron with no surviving entry (C'(i) = 0) cannot be rescaled: it is restored by
    replace instead. ``scores``: C(i) of ``delta`` when the caller has it. Returns (restored, n_replaced_fallback).
    """
    scores = neuron_scores(delta, axis) if scores is None else scores
    ratio, empty = rescale_ratio(scores, neuron_scores(suppressed, axis), located)
    ratio = ratio.view(-1, 1) if axis == 0 else ratio.view(1, -1)
    restored = suppressed * ratio
    restored = restore_replace(delta, restored, empty, axis)
    return restored, count_true(empty)


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


# ----------------------------------------------------------------------------------------------
# The registry: a method is data.

@dataclass(frozen=True)
class Method:
    title: str
    sub: object  # (delta, recipe, generator, sorted_abs) -> (mask | None for all, keep_prob | None)
    # (delta, mask, keep_prob, recipe, located [n_neurons] bool | None, neuron axis | None, C(i) of delta | None)
    #   -> (new delta, located neurons restored by replace because nothing of them survived Sub)
    f: object
    reference: str = ""
    uses: tuple[str, ...] = field(default=())  # which recipe fields matter (for UIs and recipes)


_MATH = {  # method -> (Sub, F)
    "task_arithmetic": (keep_all, scale),
    "ties": (keep_top_k, scale),
    "breadcrumbs": (keep_band, scale),
    "dare": (keep_bernoulli, rescale_kept),
    "della": (keep_by_magnitude_rank, rescale_kept),
    "hard": (keep_none, scale),
    "neuron_fusion": (keep_suppressed, restore),
}
METHODS: dict[str, Method] = {name: Method(title, *_MATH[name], reference, uses)
                              for name, (title, reference, uses) in METHOD_ROWS.items()}


def merge_delta(delta: torch.Tensor, recipe: Recipe, *, neuron_axis: int | None = None,
                generator: torch.Generator | None = None, sorted_abs: torch.Tensor | None = None,
                scores: torch.Tensor | None = None):
    """F(Sub(delta)) for one tensor.

    Args:
        delta: [out, in] (or any shape for non-neuron tensors), float32.
        recipe: the merge.
        neuron_axis: 0/1 for the seven linear modules (neuron restore applies), None otherwise
            (neuron_fusion then only suppresses).
        generator: CPU generator for dare / della / locate=random.
        sorted_abs: optional cached |delta| sorted descending (flat), for fast repeated thresholds.
        scores: optional cached C(i) for this tensor.
    Returns:
        (new_delta [same shape as delta], DeltaStats)
    """
    method = METHODS[recipe.method]
    mask, keep_prob = method.sub(delta, recipe, generator, sorted_abs)
    stats = DeltaStats(delta.numel(), delta.numel() if mask is None else count_true(mask))
    located = None
    if "neurons" in method.uses and neuron_axis is not None:  # Neuron-Locate
        stats.n_neurons = delta.shape[neuron_axis]
        if recipe.neurons > 0:
            scores = neuron_scores(delta, neuron_axis) if scores is None else scores
            located = locate(scores, recipe.neurons, recipe.locate, generator)
            stats.n_located = count_true(located)
    new_delta, stats.n_fallback_replace = method.f(delta, mask, keep_prob, recipe, located, neuron_axis, scores)
    return new_delta, stats


# ----------------------------------------------------------------------------------------------
# One named tensor: policies (others, keep_base/keep_tuned, extra vocabulary rows) + the math.

def tensor_generator(recipe: Recipe, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name): the draw for a tensor does not depend on
    the order tensors are visited or on the device (crc32, not Python's salted hash)."""
    return torch.Generator().manual_seed(recipe.seed * 1_000_003 + zlib.crc32(name.encode()))


def source_of(name: str, recipe: Recipe) -> str:
    """Where tensor `name` comes from: 'tuned', 'base' or 'method' (merged)."""
    if any(re.search(p, name) for p in recipe.keep_tuned):
        return "tuned"
    if any(re.search(p, name) for p in recipe.keep_base):
        return "base"
    if recipe.method == "hard":
        return "base"
    if module_of(name) is None and recipe.others != "method":
        return recipe.others
    return "method"


def merge_tensor(base: torch.Tensor, tuned: torch.Tensor, recipe: Recipe, *, name: str,
                 sorted_abs: torch.Tensor | None = None, scores: torch.Tensor | None = None):
    """theta_base + F(Sub(theta_tuned - theta_base)) for one named LM tensor.

    base: [n_base, ...]; tuned: [n_tuned, ...] with n_tuned >= n_base only for vocabulary
    tensors (embed_tokens, lm_head): the shared rows are merged and the extra rows (e.g. an added
    `<image>` token) are kept from the tuned model. The delta is float32 on the tensors' device
    (task arithmetic is one lerp in the storage dtype, which half types compute in float32 inside
    the kernel); the result has the tuned tensor's dtype.

    Returns (merged, DeltaStats, source) where source is 'method', 'tuned' or 'base'.
    Raises ValueError naming the tensor on shape mismatch or a non-finite delta.
    """
    extra_rows = None
    if base.shape != tuned.shape:
        if not extra_vocab_rows(name, base.shape, tuned.shape):
            raise ValueError(f"shape mismatch for tensor {name!r}: base {tuple(base.shape)} vs tuned "
                             f"{tuple(tuned.shape)}; the tuned model must be fine-tuned from this base")
        extra_rows = tuned[base.shape[0]:]
        tuned = tuned[: base.shape[0]]

    source = source_of(name, recipe)
    in_blocks = None
    if source == "method" and sorted_abs is None and base.numel() >= BLOCKED_FROM:
        in_blocks = (merge_top_k_in_blocks if streams_top_k(recipe, name)
                     else merge_neuron_fusion_in_blocks if scores is None and streams_neurons(recipe, name, base)
                     else merge_rows_in_blocks if streams_rows(recipe, base) else None)
    if in_blocks is not None:
        n_extra = 0 if extra_rows is None else extra_rows.shape[0]
        merged = torch.empty((base.shape[0] + n_extra, *base.shape[1:]) if base.dim() else (),
                             dtype=tuned.dtype, device=tuned.device)
        stats = in_blocks(base, tuned, recipe, name, merged[: base.shape[0]] if base.dim() else merged)
        if n_extra:
            merged[base.shape[0]:] = extra_rows
        return merged, stats, source
    if source == "tuned":
        merged, stats = tuned.float(), DeltaStats(tuned.numel(), tuned.numel())
    elif source == "base":
        merged, stats = base.float(), DeltaStats(base.numel(), 0)
    elif recipe.method == "task_arithmetic" and base.dtype == tuned.dtype:
        # base + alpha * (tuned - base) as one fused lerp in the storage dtype (half types are
        # computed in float32 inside the kernel and rounded once): a TA merge then costs about
        # one pass over the data, so disk I/O, not arithmetic, bounds it.
        merged = torch.lerp(base, tuned, recipe.alpha)
        if not torch.isfinite(merged.sum()):  # half sums accumulate in float32; NaN/Inf propagate
            _raise_non_finite(tuned.float() - base.float(), name)
        stats = DeltaStats(base.numel(), base.numel())
    else:
        delta = tuned.float() - base  # float32; a half base is widened inside the kernel, not copied
        refuse_non_finite(delta, name)
        if recipe.method in ("ties", "breadcrumbs") and recipe.alpha == 1.0:
            # with alpha = 1 a masking method keeps each entry exactly tuned or exactly base: select
            # in the storage dtype instead of base + delta * mask in float32 (same values, fewer passes)
            mask, _ = METHODS[recipe.method].sub(delta, recipe, None, sorted_abs)
            merged = select(mask, tuned, base)
            stats = DeltaStats(delta.numel(), count_true(mask))
        else:
            generator = tensor_generator(recipe, name) if recipe.is_random else None
            new_delta, stats = merge_delta(delta, recipe, neuron_axis=neuron_axis(name), generator=generator,
                                           sorted_abs=sorted_abs, scores=scores)
            merged = new_delta.add_(base)  # float32; in place: new_delta is this function's delta or a new tensor
    merged = merged.to(tuned.dtype)
    if extra_rows is not None:
        merged = torch.cat([merged, extra_rows.to(merged.device)], dim=0)
    return merged, stats, source


def refuse_non_finite(delta: torch.Tensor, name: str) -> None:
    """Raise ValueError naming the tensor if ``delta`` (or a block of it, or its |delta|) holds NaN/Inf: one
    cheap reduction (NaN/Inf anywhere make the sum non-finite); only a non-finite sum looks closer."""
    if not torch.isfinite(delta.sum()):
        _raise_non_finite(delta, name)


def _raise_non_finite(delta: torch.Tensor, name: str):
    bad = "NaN" if torch.isnan(delta).any() else "Inf"
    raise ValueError(f"{bad} in the delta of tensor {name!r}: one of the checkpoints holds "
                     f"non-finite weights; fix or re-download it")
