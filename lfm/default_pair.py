"""The pair a command opens when the user names none: the real pair in the paper's regime once `make realpair`
has built it, else the embedded organism (always there). One home for that rule: `lfm eval`, `lfm compare`,
`lfm explore` and `python apps/explorer.py` ask here, and each says which pair it opened.

    default_pair() -> DefaultPair(name, base, tuned, suite, items)

$LFM_DEFAULT_PAIR chooses by hand: 'organism', 'realpair' (refused in one line when it is not built) or 'auto'
(the default: the real pair when its build is complete). The test suite pins 'organism' (tests/conftest.py), so
a machine that has built the real pair runs the same tests as one that has not.

    >>> import os; os.environ["LFM_DEFAULT_PAIR"] = "organism"
    >>> default_pair().name
    'the embedded organism'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHOICE_ENV = "LFM_DEFAULT_PAIR"
CHOICES = ("auto", "organism", "realpair")


@dataclass(frozen=True)
class DefaultPair:
    name: str                 # what the command prints: which pair it opened
    base: Path
    tuned: Path
    suite: Path | None        # the pair's evaluation suite YAML (None: the organism's own items)
    items: str                # `lfm compare --items`: 'organism' or the pair's visual items file

    @property
    def is_organism(self) -> bool:
        return self.suite is None


def realpair_default() -> DefaultPair:
    """The default preset's seed-0 pair under $LFM_REALPAIR_HOME (~/.cache/lfm/realpair), built or not."""
    from lfm.realpair.build import DEFAULT_ROOT, run_dir
    from lfm.realpair.config import DEFAULT_PRESET

    suite = DEFAULT_ROOT / "suite" / "suite.yaml"
    return DefaultPair(name=f"the real pair ({DEFAULT_PRESET} preset, seed 0)", base=DEFAULT_ROOT / "base",
                       tuned=run_dir(DEFAULT_ROOT, DEFAULT_PRESET, 0) / "tuned", suite=suite,
                       items=str(suite.parent / "items" / "visual.jsonl"))


def organism_default() -> DefaultPair:
    from lfm.organism import base_dir, tuned_dir

    return DefaultPair(name="the embedded organism", base=Path(base_dir()), tuned=Path(tuned_dir()), suite=None,
                       items="organism")


def is_built(pair: DefaultPair) -> bool:
    """Both models finished (their build stamps written) and the suite and items in place."""
    from lfm.realpair.build import STAMP

    return all((d / STAMP).exists() for d in (pair.base, pair.tuned)) and pair.suite.exists() and \
        Path(pair.items).exists()


def default_pair() -> DefaultPair:
    choice = os.environ.get(CHOICE_ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"${CHOICE_ENV}={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "organism":
        return organism_default()
    real = realpair_default()
    if is_built(real):
        return real
    if choice == "realpair":
        raise FileNotFoundError(f"${CHOICE_ENV}=realpair but {real.tuned} is not a finished build: run "
                                f"`make realpair` first (or unset ${CHOICE_ENV})")
    return organism_default()


def opened_line(pair: DefaultPair) -> str:
    """The line a command prints when it opens the default pair (never silently)."""
    how = "" if pair.is_organism else f" (suite {pair.suite})"
    return f"no pair named: opening {pair.name}: {pair.tuned}{how}; set ${CHOICE_ENV}=organism|realpair to choose"
