"""A recipe as a mergekit 0.1.5 YAML (`lfm merge --export-mergekit m.yaml`, and the explorer's Export tab).

The mapping is each method row's ``mergekit`` field (`lfm.methods.registry.MergekitForm`); this module only
writes it out. mergekit maps an LLM-to-LLM pair only (not a LLaVA-style tuned model, whose layers it cannot
name: tests/test_mergekit_oracle.py), and merges every tensor through the method, so a recipe that sends some
tensors elsewhere (``others``, ``keep_base``, ``keep_tuned``) has no mergekit form either.

TA, TIES and Breadcrumbs give the same tensors as lfm; DARE and DELLA draw their random masks with torch's
generator in mergekit's order, so they agree with lfm in distribution (kept fraction, l1 norm), not entry by
entry, and ``--random-seed`` makes mergekit's draw repeatable, not equal to lfm's.

    >>> from lfm.methods.recipe import Recipe
    >>> print(mergekit_yaml(Recipe(method="ties", density=0.3, alpha=0.8), "/m/base", "/m/tuned"), end="")
    # lfm recipe: TIES K=0.3 a=0.8
    # run: mergekit-yaml THIS.yaml OUT_DIR
    merge_method: ties
    base_model: /m/base
    models:
    - model: /m/tuned
      parameters:
        weight: 1.0
        density: 0.3
    parameters:
      lambda: 0.8
      normalize: true
      rescale: false
    dtype: float32
"""

from __future__ import annotations

from pathlib import Path

from lfm.methods.recipe import Recipe
from lfm.methods.registry import METHODS

MERGED_BY_METHOD = {"others": "method", "keep_base": (), "keep_tuned": ()}  # mergekit sends every tensor through it


def no_mergekit_form(recipe: Recipe) -> str | None:
    """Why ``recipe`` has no mergekit form (one line, saying what to do), or None when it has one."""
    row = METHODS[recipe.method]
    form = row.mergekit
    if form is None:
        exportable = ", ".join(r.title for r in METHODS.values() if r.mergekit is not None)
        return f"{row.title} has no mergekit form (mergekit has no such method); export one of: {exportable}"
    for name, value in {**MERGED_BY_METHOD, **form.requires}.items():
        if getattr(recipe, name) != value:
            return f"{row.title} with {name}={getattr(recipe, name)!r} has no mergekit form; set {name} to {value!r}"
    return None


def _path(where: str | Path) -> str:
    """A local directory as an absolute path (the YAML runs from anywhere); anything else (a hub id) as given."""
    return str(Path(where).resolve()) if Path(where).exists() else str(where)


def mergekit_yaml(recipe: Recipe, base: str | Path, tuned: str | Path, dtype: str | None = None) -> str:
    """The mergekit YAML of ``recipe`` on (base, tuned): computed in float32 as lfm does, written in ``dtype``
    (mergekit's ``out_dtype``; None: the base's). Raises ValueError (``no_mergekit_form``) when it has none."""
    import yaml

    reason = no_mergekit_form(recipe)
    if reason:
        raise ValueError(reason)
    form = METHODS[recipe.method].mergekit
    seed = f" --random-seed {recipe.seed}" if "seed" in METHODS[recipe.method].uses else ""
    data = {
        "merge_method": form.method,
        "base_model": _path(base),
        "models": [{"model": _path(tuned),
                    "parameters": {"weight": 1.0, **{mk: getattr(recipe, ours) for mk, ours in form.model.items()}}}],
        "parameters": {**{mk: getattr(recipe, ours) for mk, ours in form.shared.items()}, **form.constants},
        "dtype": "float32",
        **({"out_dtype": dtype} if dtype else {}),
    }
    return (f"# lfm recipe: {recipe.label}\n# run: mergekit-yaml THIS.yaml OUT_DIR{seed}\n"
            + yaml.safe_dump(data, sort_keys=False))
