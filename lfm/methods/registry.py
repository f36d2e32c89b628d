"""The registry: one row per merge method, and the one table of the recipe's settings.

A method is data (paper Eq. 1: theta_merge = theta_base + F(Sub(delta)), delta = theta_tuned - theta_base): its
Sub and F, the recipe settings it reads, and capability flags telling the engines what they may assume about
it. Callers ask the row; nothing outside this file compares a method's name. The settings table (`SETTINGS`)
is where the CLI options, YAML validation, the explorer's widgets and its URL keys come from.

This file imports no torch: `lfm --help` and the explorer's lists read it as is. A row names its functions as
'module:function' (imported at their first call) or holds them. Rows from outside come through
`register_method` (a notebook) or the entry-point group `lfm.methods` (an installed package: the entry point
is a `Method`); see docs/extending.md.

    >>> METHODS["ties"].title, METHODS["ties"].uses
    ('TIES', ('density', 'alpha'))
    >>> METHODS.aliases()["neu-s-ties"]
    {'method': 'neuron_fusion', 'suppress': 'ties', 'restore': 'rescale'}
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from lfm.methods.signatures import F, FunctionRef, Sub, TopK

if TYPE_CHECKING:
    from lfm.methods.recipe import Recipe

PAPER = "https://arxiv.org/abs/2505.16703"
NEURON_FUSION = "neuron_fusion"  # the paper's method: a recipe's default, and what the paper's stages build
ENTRY_POINT_GROUP = "lfm.methods"
LOCATE_MODES = ("top", "random", "bottom")  # lfm.neurons.locate: the paper's top C(i), and two controls
RESTORE_TAGS = {"replace": "P", "rescale": "S"}  # Neuron-Fusion's restore -> the paper's Neu-P / Neu-S


# ---------------------------------------------------------------------------------------------- the settings

@dataclass(frozen=True)
class Widget:
    """How the explorer shows a setting: a slider over ``bounds`` (numbers) or a choice (buttons or a list)."""

    label: str
    bounds: tuple[float, float] | None = None
    step: float | None = None
    buttons: bool = False


@dataclass(frozen=True)
class Setting:
    """One field of `lfm.methods.recipe.Recipe` (whose class holds its default): its type, what values are valid,
    and how each surface shows it."""

    name: str
    kind: type  # float, int, str, or tuple (of regexes)
    help: str
    valid: Callable[[object], bool] | None = None  # the range of a number
    must: str = ""  # the range in words: '{what} must {must}, got {value}'
    what: str = ""  # the setting in an error message (default: its name)
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None  # a callable: read from the registry
    flag: str | None = None  # a short CLI flag ('-K')
    label: str | None = None  # its key in Recipe.label ('K', 'a'; default: its name)
    url: str | None = None  # its key in the explorer's URL (None: not in the URL)
    widget: Widget | None = None  # its widget in the explorer (None: none)
    every_method: bool = False  # a tensor policy every method honours (not listed in a row's `uses`)

    def options(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def _in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[object], bool]:
    return lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high)


SEED_MAX = 2**63 - 1  # the largest seed: a 64-bit signed integer, as a link, a form or a YAML file can hold it

# table order is the order of the CLI options, the explorer's widgets and a label's extra settings
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("method", str, "the merge method (a registry row) or a paper alias", url="method"),
    Setting("density", float, "K in (0, 1]: fraction of delta entries each tensor keeps", _in(0, 1, low_open=True),
            "be in (0, 1]", "density K", flag="-K", label="K", url="K",
            widget=Widget("K (density: Δ entries kept)", (0.01, 1.0), 0.01)),
    Setting("neurons", float, "M in [0, 1]: fraction of neurons restored per module (0: the suppress-only stage)",
            _in(0, 1), "be in [0, 1] (M=0 is the suppress-only stage)", "neurons M", flag="-M", label="M", url="M",
            widget=Widget("M (neurons restored)", (0.0, 1.0), 0.01)),
    Setting("suppress", str, "Neuron-Fusion's Sub: a suppressor row", choices=lambda: METHODS.suppressors()),
    Setting("restore", str, "Neuron-Fusion's F: replace (Neu-P) or rescale (Neu-S)", choices=tuple(RESTORE_TAGS),
            url="restore", widget=Widget("restore located neurons by", buttons=True)),
    Setting("locate", str, "which M neurons are restored: top C(i) (the paper), random or bottom (controls)",
            choices=LOCATE_MODES, url="locate", widget=Widget("locate neurons")),
    Setting("alpha", float, "scales the final delta", lambda v: math.isfinite(v), "be a finite number", url="alpha",
            widget=Widget("α", (0.0, 2.0), 0.05), label="a"),
    Setting("gamma", float, "Breadcrumbs: fraction of the largest |delta| dropped as outliers",
            _in(0, 1, high_open=True), "be in [0, 1)", url="gamma", widget=Widget("γ (breadcrumbs outliers)", (0.0, 0.2), 0.005)),
    Setting("epsilon", float, "DELLA: keep probabilities span K-epsilon .. K+epsilon", url="epsilon",
            widget=Widget("ε (DELLA spread)", (0.0, 0.5), 0.01), label="eps"),
    Setting("rescale", str, "DARE / DELLA: 1/p (the papers) or l1 (match the l1 norm, as mergekit >= 0.1.0)",
            choices=("inverse", "l1")),
    Setting("seed", int, "random draws (same seed, same bytes): 0 .. 2**63-1", _in(0, SEED_MAX),
            "be an integer from 0 to 9223372036854775807 (2**63-1)", url="seed"),
    Setting("others", str, "non-linear LM tensors (norms, embeddings, lm_head): through the method, or from "
            "tuned / base", choices=("method", "tuned", "base"), url="others",
            widget=Widget("norms / embeddings / lm_head"), every_method=True),
    Setting("keep_base", tuple, "regexes on canonical names of tensors that take the base weight",
            every_method=True),
    Setting("keep_tuned", tuple, "regexes on canonical names of tensors that take the tuned weight",
            every_method=True),
)}


# ---------------------------------------------------------------------------------------------- the rows

@dataclass(frozen=True)
class MergekitForm:
    """How a row's recipe is written as a mergekit 0.1.5 YAML (`lfm.mergekit_export`). mergekit's generalized
    task arithmetic computes ``base + lambda * normalize(weight * sparsify(delta))``: with the tuned model's
    ``weight`` fixed at 1 (TIES / DELLA's ``normalize`` divides it away), lfm's alpha is mergekit's ``lambda``.

    Args:
        method: mergekit's ``merge_method``.
        model: {mergekit parameter of the tuned model: the lfm setting it takes}.
        shared: {mergekit parameter of the merge: the lfm setting it takes}.
        constants: {mergekit parameter of the merge: a fixed value} (written so the YAML says what it relies on).
        requires: {lfm setting: the only value mergekit can express} (DARE's 1/p rescale has no mergekit form).
    """

    method: str
    model: Mapping[str, str] = field(default_factory=dict)
    shared: Mapping[str, str] = field(default_factory=lambda: {"lambda": "alpha"})
    constants: Mapping[str, object] = field(default_factory=dict)
    requires: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One merge method. The flags are promises the engines rely on for speed; each defaults to False (the
    plain path: ``merge_delta`` on the whole float32 delta), which is always correct.

    Args:
        name: its key ('ties'); aliases: other names for it ('bread').
        title, reference: for labels, tables and the explorer ('TIES', a paper's URL).
        sub, f: its Sub and F (paper Eq. 1), functions or 'module:function'.
        uses: the recipe settings (``SETTINGS``) it reads; the explorer shows their widgets, a sweep varies them.
        short: its name inside a Neuron-Fusion label (default: the title).
        label_settings: settings its label always shows after the title (default: density when used).
        top_k: the k of the top-|delta| sets its Sub is made of (``TopK``).
        check: raises ValueError for a recipe it cannot merge (a combination of settings).
        masks: Sub is a mask and F is alpha * the kept delta: at alpha = 1 each merged entry is exactly the
            tuned or the base weight (selected in the storage dtype).
        interpolates: Sub keeps every entry and F is alpha * delta: the merge is one lerp of base and tuned
            (and as Neuron-Fusion's suppressor, alpha is the suppression).
        row_blocked: Sub and F act on each row alone: big tensors are merged a block of rows at a time.
        restores_neurons: Neuron-Fusion: Sub is the recipe's ``suppress`` row's, F is ``math.restore`` (the
            blocked engine and ResidentPair reproduce it); its settings include its suppressor's.
        suppressor: may be Neuron-Fusion's ``suppress`` (Sub a mask, or every entry; F alpha * the kept delta).
        copies_base: the merge is the base model itself (hard-merge).
        fast_in_memory: ``ResidentPair.apply`` writes it at alpha = 1 from cached top-k masks (needs ``top_k``,
            or a Sub keeping every entry).
        mergekit: its mergekit form (``MergekitForm``), or None: it has none (Neuron-Fusion, hard-merge).
    """

    name: str
    title: str
    reference: str
    sub: Sub | str
    f: F | str
    uses: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    short: str = ""
    label_settings: tuple[str, ...] | None = None
    top_k: TopK | str | None = None
    check: Callable[[Recipe], None] | None = None
    masks: bool = False
    interpolates: bool = False
    row_blocked: bool = False
    restores_neurons: bool = False
    suppressor: bool = False
    copies_base: bool = False
    fast_in_memory: bool = False
    mergekit: MergekitForm | None = None
    builtin: bool = field(default=False, repr=False)

    def __post_init__(self):
        where = f"method {self.name!r}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(self.name)):
            raise ValueError(f"{where}: a name is lowercase letters, digits and '_', starting with a letter")
        for part in ("sub", "f", "top_k"):
            value = getattr(self, part)
            if isinstance(value, str):
                if ":" not in value:
                    raise ValueError(f"{where}: {part} {value!r} must be a function or 'module:function'")
                object.__setattr__(self, part, FunctionRef(value))
            elif value is not None and not callable(value):
                raise ValueError(f"{where}: {part} must be a function or 'module:function', got {value!r}")
        object.__setattr__(self, "uses", tuple(self.uses))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        unknown = [s for s in self.uses if s not in SETTINGS or s == "method" or SETTINGS[s].every_method]
        if unknown:
            raise ValueError(f"{where}: uses {unknown} are no method settings; choose from "
                             f"{[s for s in SETTINGS if s != 'method' and not SETTINGS[s].every_method]}")
        if self.label_settings is None:
            object.__setattr__(self, "label_settings", ("density",) if "density" in self.uses else ())
        if self.fast_in_memory and not (self.top_k or self.interpolates or self.copies_base or self.restores_neurons):
            raise ValueError(f"{where}: fast_in_memory needs top_k (its Sub as top-|delta| sets)")
        object.__setattr__(self, "short", self.short or self.title)


def _della_spread(recipe: Recipe) -> None:
    if recipe.density < 1.0 and not (recipe.density - recipe.epsilon > 0 and recipe.density + recipe.epsilon <= 1):
        raise ValueError(f"della needs 0 < K-epsilon and K+epsilon <= 1, got K={recipe.density}, "
                         f"epsilon={recipe.epsilon}; lower --epsilon")


MATH = "lfm.methods.math:"
BUILTIN: tuple[Method, ...] = (
    Method(NEURON_FUSION, "Neuron-Fusion", PAPER, MATH + "keep_suppressed", MATH + "restore",
           ("neurons", "suppress", "restore", "locate", "alpha", "seed"), ("neuron-fusion",),
           restores_neurons=True, fast_in_memory=True, builtin=True),
    Method("ties", "TIES", "https://arxiv.org/abs/2306.01708", MATH + "keep_top_k", MATH + "scale",
           ("density", "alpha"), top_k=MATH + "ties_k", masks=True, suppressor=True, fast_in_memory=True,
           mergekit=MergekitForm("ties", {"density": "density"}, constants={"normalize": True, "rescale": False}),
           builtin=True),
    Method("breadcrumbs", "Breadcrumbs", "https://arxiv.org/abs/2312.06795", MATH + "keep_band", MATH + "scale",
           ("density", "gamma", "alpha"), ("bread",), short="Bread", top_k=MATH + "breadcrumbs_ks", masks=True,
           suppressor=True, fast_in_memory=True,
           mergekit=MergekitForm("breadcrumbs", {"density": "density", "gamma": "gamma"},
                                 constants={"normalize": False, "rescale": False}), builtin=True),
    Method("task_arithmetic", "TaskA", "https://arxiv.org/abs/2212.04089", MATH + "keep_all", MATH + "scale",
           ("alpha",), ("ta", "taska", "task-arithmetic"), label_settings=("alpha",), interpolates=True,
           suppressor=True, fast_in_memory=True,
           mergekit=MergekitForm("task_arithmetic", constants={"normalize": False}), builtin=True),
    Method("dare", "DARE", "https://arxiv.org/abs/2311.03099", MATH + "keep_bernoulli", MATH + "rescale_kept",
           ("density", "rescale", "alpha", "seed"), row_blocked=True,
           mergekit=MergekitForm("dare_linear", {"density": "density"}, constants={"normalize": False, "rescale": True},
                                 requires={"rescale": "l1"}), builtin=True),
    Method("della", "DELLA", "https://arxiv.org/abs/2406.11617", MATH + "keep_by_magnitude_rank",
           MATH + "rescale_kept", ("density", "epsilon", "rescale", "alpha", "seed"), check=_della_spread,
           row_blocked=True, mergekit=MergekitForm("della", {"density": "density", "epsilon": "epsilon"},
                                                   constants={"normalize": True, "rescale": True},
                                                   requires={"rescale": "l1"}), builtin=True),
    Method("hard", "hard-merge", PAPER, MATH + "keep_none", MATH + "scale", (), ("hard-merge",), copies_base=True,
           fast_in_memory=True, builtin=True),
)


# ---------------------------------------------------------------------------------------------- the table

class Registry(Mapping):
    """{name: Method}: the built-in rows, then every installed package's rows (entry-point group `lfm.methods`,
    read at the first look-up), then those registered in this process."""

    def __init__(self, rows):
        self._rows: dict[str, Method] = {}
        self._plugins_read = False
        for row in rows:
            self.register(row)

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True  # first: a plug-in module may look rows up while it is imported
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                row = point.load()
            except Exception as e:  # a broken installed package: say which, and how to get rid of it
                raise ValueError(f"method plug-in {point.name!r} ({point.value}, entry point group "
                                 f"{ENTRY_POINT_GROUP!r}) failed to load: {type(e).__name__}: {e}; fix or "
                                 f"uninstall its package") from e
            if not isinstance(row, Method):
                raise ValueError(f"method plug-in {point.name!r} ({point.value}) is a {type(row).__name__}, "
                                 f"not an lfm.methods.registry.Method")
            try:
                self.register(row)
            except ValueError as e:
                raise ValueError(f"method plug-in {point.name!r} ({point.value}): {e}") from e

    def __getitem__(self, name: str) -> Method:
        self._read_plugins()
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        self._read_plugins()
        return iter(self._rows)

    def __len__(self) -> int:
        self._read_plugins()
        return len(self._rows)

    def register(self, row: Method) -> Method:
        """Add ``row`` (a row of that name registered from outside is replaced: a notebook cell run again)."""
        old = self._rows.get(row.name)
        if old is not None and old.builtin:
            raise ValueError(f"method {row.name!r} is built in; register yours under another name")
        taken = {a: n for n, r in self._rows.items() if n != row.name for a in (n, *r.aliases)}
        clash = [a for a in (row.name, *row.aliases) if a in taken or a in self._neuron_fusion_aliases()]
        if clash:
            raise ValueError(f"method {row.name!r}: the names {clash} are taken; choose others")
        self._rows[row.name] = row
        return row

    def unregister(self, name: str) -> None:
        row = self[name]
        if row.builtin:
            raise ValueError(f"method {name!r} is built in; it cannot be removed")
        del self._rows[name]

    def suppressors(self) -> tuple[str, ...]:
        """The rows Neuron-Fusion may suppress with."""
        return tuple(n for n, r in self.items() if r.suppressor)

    def _neuron_fusion_aliases(self) -> dict[str, dict]:
        """'neu-p-ties', 'neu-s-bread', ...: a neuron-restoring row over a suppressor, by its name or alias."""
        return {f"neu-{tag.lower()}-{name}": {"method": row.name, "suppress": sup.name, "restore": restore}
                for row in self._rows.values() if row.restores_neurons
                for sup in self._rows.values() if sup.suppressor
                for restore, tag in RESTORE_TAGS.items() for name in (sup.name, *sup.aliases)}

    def aliases(self) -> dict[str, dict]:
        """{alias: recipe fields}: each row's aliases and the paper's Neu-P-* / Neu-S-* names."""
        self._read_plugins()
        return {**{a: {"method": n} for n, r in self._rows.items() for a in r.aliases}, **self._neuron_fusion_aliases()}

    def menu(self) -> dict[str, dict]:
        """{display name: recipe fields} for a method list: 'Neu-S-TIES', 'Neu-P-TIES', ..., 'TIES', 'DARE'."""
        out = {}
        for row in self.values():
            if row.restores_neurons:
                out.update({neuron_fusion_title(sup, restore): {"method": row.name, "suppress": sup.name,
                                                                "restore": restore}
                            for sup in self.values() if sup.suppressor for restore in ("rescale", "replace")})  # S first
        return out | {row.title: {"method": row.name} for row in self.values() if not row.restores_neurons}


METHODS = Registry(BUILTIN)


def register_method(name: str, *, title: str, sub: Sub | str, f: F | str, uses: tuple[str, ...] = (),
                    reference: str = "", **flags) -> Method:
    """Add a merge method to every surface of lfm in this process (``lfm.merge``, ``ResidentPair``, recipes,
    sweeps, the explorer). ``flags``: the other fields of ``Method`` (aliases, top_k, suppressor, ...).

    >>> row = register_method("ta_copy", title="TaskA copy", sub="lfm.methods.math:keep_all",
    ...                       f="lfm.methods.math:scale", uses=("alpha",), label_settings=("alpha",))
    >>> from lfm.methods.recipe import Recipe
    >>> Recipe(method="ta_copy", alpha=0.5).label
    'TaskA copy a=0.5'
    >>> unregister_method("ta_copy")
    """
    return METHODS.register(Method(name, title, reference, sub, f, tuple(uses), **flags))


def unregister_method(name: str) -> None:
    """Remove a method registered from outside (built-in rows stay)."""
    METHODS.unregister(name)


def neuron_fusion_title(suppressor: Method, restore: str) -> str:
    """'Neu-S-TIES': the paper's name of Neuron-Fusion restoring by ``restore`` over ``suppressor``."""
    return f"Neu-{RESTORE_TAGS[restore]}-{suppressor.short}"


def rows_of(recipe: Recipe) -> tuple[Method, ...]:
    """The rows a recipe runs: its method's, and for Neuron-Fusion its suppressor's."""
    row = METHODS[recipe.method]
    return (row, METHODS[recipe.suppress]) if row.restores_neurons else (row,)


def sub_row(recipe: Recipe) -> Method:
    """The row whose Sub the recipe applies: its method's, or Neuron-Fusion's suppressor's."""
    return rows_of(recipe)[-1]


def widgets_of(recipe: Recipe) -> tuple[str, ...]:
    """The settings a method list shows for ``recipe``'s method (and suppressor), in table order."""
    used = {s for row in rows_of(recipe) for s in row.uses}
    return tuple(s for s in SETTINGS if s in used or SETTINGS[s].every_method)


def settings_in_effect(recipe: Recipe) -> tuple[str, ...]:
    """The settings that change ``recipe``'s merge, in table order: its label names them, a sweep varies them;
    the others are ignored by it. Neuron-Fusion locates only when M > 0 and draws only to locate at random
    (or for its suppressor); hard-merge copies the base whatever the ``others`` policy."""
    row = METHODS[recipe.method]
    used = set(widgets_of(recipe))
    if row.restores_neurons:
        if recipe.neurons == 0:
            used -= {"locate", "seed"}
        elif recipe.locate != "random":
            used.discard("seed")
        used |= set(METHODS[recipe.suppress].uses)
    if row.copies_base:
        used.discard("others")
    return tuple(s for s in SETTINGS if s in used)


def alpha_is_the_suppression(recipe: Recipe) -> bool:
    """Neuron-Fusion over a suppressor that keeps every entry (TaskA): alpha scales the delta as the
    suppression, before the restore, and is not applied again after it."""
    row, sub = rows_of(recipe)[0], sub_row(recipe)
    return row.restores_neurons and sub.interpolates

