"""The recipe: every knob of one merge, validated once against the settings table and the method's row.

    >>> Recipe(method="ties", density=0.3).label
    'TIES K=0.3'
    >>> make_recipe("neu-p-bread", gamma=0.02).label
    'Neu-P-Bread K=0.2 M=0.3 gamma=0.02'

Torch-free, like the registry: the CLI and the explorer build recipes without loading torch.
"""

from __future__ import annotations

import difflib
import numbers
import re
from dataclasses import asdict, dataclass, fields, replace

from lfm.methods.registry import METHODS, NEURON_FUSION, SETTINGS, neuron_fusion_title, rows_of, settings_in_effect, sub_row


@dataclass(frozen=True)
class Recipe:
    """One merge, fully described. Defaults are the paper's good settings (K=0.2, M=0.3, alpha=1). Each field
    is a row of ``lfm.methods.registry.SETTINGS`` (its type, range and help)."""

    method: str = NEURON_FUSION
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
        if self.method not in METHODS:
            hint = did_you_mean(self.method, [*METHODS, *METHODS.aliases()])
            raise ValueError(f"unknown method {self.method!r}{hint}; choose one of {sorted(METHODS)} "
                             f"or a paper alias {sorted(METHODS.aliases())}")
        for setting in SETTINGS.values():
            if setting.name != "method":
                object.__setattr__(self, setting.name, _checked(setting, getattr(self, setting.name)))
        for row in rows_of(self):
            if row.check is not None:
                row.check(self)
        for pattern in self.keep_base + self.keep_tuned:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"invalid regex {pattern!r} in keep_base/keep_tuned: {e}") from e

    @classmethod
    def from_name(cls, name: str, **overrides) -> Recipe:
        """Build a recipe from a method name or a paper alias ('neu-p-ties', 'neu-s-bread', 'ta', ...)."""
        check_keys(overrides)
        key = name.strip().lower()
        preset = dict(METHODS.aliases().get(key, {"method": key.replace("-", "_")}))
        preset.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**preset)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """Strict: an unknown key is an error (a typo must not silently become a default)."""
        check_keys(data)
        data = dict(data)
        method = data.pop("method", NEURON_FUSION)
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
        row, sub = rows_of(self)[0], sub_row(self)
        in_effect = settings_in_effect(self)
        if row.restores_neurons:  # 'Neu-S-TIES K=0.2 M=0.3 locate=random': the paper's names
            shown = ("suppress", "restore", *sub.label_settings, "neurons", "locate")
            words = [neuron_fusion_title(sub, self.restore), *(self._setting(s) for s in sub.label_settings),
                     self._setting("neurons")]
            if "locate" in in_effect and self.locate != Recipe.locate:
                words.append(self._setting("locate"))
        else:
            shown = row.label_settings
            words = [row.title, *(self._setting(s) for s in row.label_settings)]
        default = Recipe()
        extras = [self._setting(s) for s in in_effect if s not in shown and getattr(self, s) != getattr(default, s)]
        return " ".join(words + extras)

    def _setting(self, name: str) -> str:
        """'K=0.2', 'locate=random', 'keep_base=a,b': one setting as a label shows it."""
        setting, value = SETTINGS[name], getattr(self, name)
        text = ",".join(value) if setting.kind is tuple else f"{value:g}" if setting.kind is float else value
        return f"{setting.label or name}={text}"

    @property
    def sub_method(self) -> str:
        """The registry row whose Sub this recipe applies: the method itself, or Neuron-Fusion's suppressor."""
        return sub_row(self).name

    @property
    def is_random(self) -> bool:
        """Whether the merge draws random numbers (its seed changes it)."""
        return "seed" in settings_in_effect(self)


def _is_number(value, kind: type) -> bool:
    """``value`` is of a number setting's ``kind`` (an int for a float; never a bool)."""
    wanted = numbers.Integral if kind is int else numbers.Real
    return isinstance(value, wanted) and not isinstance(value, bool)


_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # ASCII digits only
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # at most 30 digits: no int() of a 5000-digit text


def read_number(text: str, kind: type = float):
    """The number ``text`` writes: '0.2' -> 0.2, a percent '20%' -> 0.2 (not for ``kind`` int), '7' -> 7; None
    when it writes none. The one home of reading numbers from text (flags, YAML files, sweep grids).

    >>> [read_number(t) for t in ("0.2", "20%", " 5 % ", "1e-1", "abc", "nan")]
    [0.2, 0.2, 0.05, 0.1, None, None]
    >>> read_number("7", int), read_number("7%", int)
    (7, None)
    """
    text = text.strip()
    if kind is int:
        return int(text) if _INTEGER.fullmatch(text) else None
    if text.endswith("%") and _NUMBER.fullmatch(text[:-1].strip()):
        return float(text[:-1].strip()) / 100  # '23%' -> 0.23, as a user reads it (23 * 0.01 is 0.23000000000000001)
    return float(text) if _NUMBER.fullmatch(text) else None


def parse_number(setting, value):
    """A number setting's value as a flag or a file writes it: 0.2, "0.2" or "20%" (``read_number``); anything
    else is left for ``_checked`` to refuse.

    >>> [parse_number(SETTINGS["density"], v) for v in (0.2, "0.2", "20%", "high")]
    [0.2, 0.2, 0.2, 'high']
    """
    if setting.kind not in (int, float) or not isinstance(value, str):
        return value
    number = read_number(value, setting.kind)
    return value if number is None else number


def setting_value(name: str, value):
    """``value`` of setting ``name`` read (``parse_number``) and checked (``_checked``): ValueError saying why."""
    setting = SETTINGS[name]
    return _checked(setting, parse_number(setting, value))


def did_you_mean(word: str, known) -> str:
    """' (did you mean 'ties'?)' for a misspelt name close to one of ``known``, else ''."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _checked(setting, value):
    """``value`` of ``setting`` if valid (a list of regexes becomes a tuple), else ValueError saying why."""
    what = setting.what or setting.name
    if setting.kind is tuple:
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{what} must be a list of regexes, got {value!r}")
        return tuple(value)
    if setting.kind in (int, float) and not _is_number(value, setting.kind):
        if setting.kind is int:  # its range in the words of the table when it has one ('be an integer from 0 to ...')
            shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
            raise ValueError(f"{what} must {setting.must or 'be an integer'}, got {shown!r}")
        raise ValueError(f"{what} must be a number, got {value!r} (write it 0.2, \"0.2\" or \"20%\")")
    choices = setting.options()
    if choices is not None and value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}{did_you_mean(value, choices)}")
    if setting.valid is not None and not setting.valid(value):
        raise ValueError(f"{what} must {setting.must}, got {value}")
    return value


def check_keys(data: dict) -> None:
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = "".join(did_you_mean(key, known) for key in unknown)
        raise ValueError(f"unknown recipe keys {unknown}{hints}; valid keys: {sorted(known)}")


def make_recipe(recipe: Recipe | dict | str | None = None, **fields) -> Recipe:
    """A Recipe from a Recipe, a dict (strict keys), a method name/alias, or keyword fields.

    >>> make_recipe("neu-p-ties", density=0.3).label
    'Neu-P-TIES K=0.3 M=0.3'
    >>> make_recipe("ties", densty=0.3)
    Traceback (most recent call last):
    ...
    ValueError: unknown recipe keys ['densty'] (did you mean 'density'?); valid keys: ['alpha', 'density', 'epsilon', 'gamma', 'keep_base', 'keep_tuned', 'locate', 'method', 'neurons', 'others', 'rescale', 'restore', 'seed', 'suppress']
    """
    if isinstance(recipe, Recipe):
        return Recipe.from_dict({**recipe.to_dict(), **fields}) if fields else recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict({**recipe, **fields})
    method = recipe or fields.pop("method", NEURON_FUSION)
    return Recipe.from_name(method, **fields)


def idle_settings(recipe: Recipe, given) -> tuple[str, ...]:
    """The settings among ``given`` (names a user set) that change nothing in ``recipe``'s merge, table order.

    >>> idle_settings(make_recipe("ties", neurons=0.5), {"density", "neurons"})
    ('neurons',)
    """
    in_effect = settings_in_effect(recipe)
    return tuple(s for s in SETTINGS if s in given and s != "method" and s not in in_effect)


def copies_tuned(recipe: Recipe) -> bool:
    """Whether the merge is the tuned model itself: a Sub keeping every entry (TaskA, alone or as Neuron-Fusion's
    suppressor) at alpha = 1 adds the whole delta back, and no tensor policy takes a base weight."""
    return sub_row(recipe).interpolates and recipe.alpha == 1 and recipe.others != "base" and not recipe.keep_base


def no_ops(recipe: Recipe, given) -> list[str]:
    """What a user asked for that does nothing, one line each (`lfm` warns, or refuses under --strict).

    >>> no_ops(make_recipe("ta"), {"method"})
    ['TaskA a=1 is an exact copy of the tuned model (alpha=1 adds the whole delta back); set alpha below 1, e.g. 0.5']
    """
    lines = []
    idle = idle_settings(recipe, given)
    if idle:
        lines.append(f"{', '.join(idle)} {'does' if len(idle) == 1 else 'do'} nothing for {recipe.label} "
                     f"(not recorded in its recipe); drop {'it' if len(idle) == 1 else 'them'} or pick a method "
                     f"that uses {'it' if len(idle) == 1 else 'them'}")
    if copies_tuned(recipe):
        lines.append(f"{recipe.label} is an exact copy of the tuned model (alpha=1 adds the whole delta back); "
                     f"set alpha below 1, e.g. 0.5")
    return lines


def without(recipe: Recipe, names) -> Recipe:
    """``recipe`` with the settings ``names`` at their defaults: what it records when they did nothing."""
    default = Recipe()
    return replace(recipe, **{name: getattr(default, name) for name in names})


STAGES = ("hard", "suppress", "restore")


def stage_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """The paper's three stages (Section 4.5) at ``recipe``'s settings: hard-merge, suppress (M = 0) and
    restore (M > 0). A suppressor recipe (TIES / Breadcrumbs / TaskA) is the suppress stage itself: restore is
    Neuron-Fusion over it at the default M. DARE, DELLA and hard-merge have no such stages.

    >>> {s: r.label for s, r in stage_recipes(Recipe(density=0.2, neurons=0.3)).items()}
    {'hard': 'hard-merge', 'suppress': 'Neu-S-TIES K=0.2 M=0', 'restore': 'Neu-S-TIES K=0.2 M=0.3'}
    """
    row = METHODS[recipe.method]
    if row.suppressor:
        recipe = Recipe(**{**recipe.to_dict(), "method": NEURON_FUSION, "suppress": recipe.method,
                           "neurons": Recipe.neurons})
    elif not row.restores_neurons:
        raise ValueError(f"{recipe.label} has no suppress/restore stages; pick Neuron-Fusion or one of its "
                         f"suppressors {list(METHODS.suppressors())}")
    if recipe.neurons <= 0:
        raise ValueError("the restore stage needs M > 0 (M = 0 is the suppress stage)")
    return {"hard": Recipe(method="hard"), "suppress": replace(recipe, neurons=0.0), "restore": recipe}
