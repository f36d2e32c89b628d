"""What the page says in words: the current settings read as the method, the glossary its help texts come from,
the guided tour's steps, and the findings of the loaded pair's report (read from its report file).

The method sentence is built from the recipe's registry rows (`lfm.methods.registry`): a row's Sub and F are
looked up by the function they name in the tables below, never by the method's name, so a new row with a known
Sub reads right, and one with an unknown Sub reads as its title and paper.

    >>> from lfm.methods.recipe import Recipe
    >>> method_sentence(Recipe(density=0.2, neurons=0.3))
    'K=0.2: each tensor keeps its 20 % largest Δ entries (TIES); M=0.3: the 30 % most-changed neurons (top C(i)) are restored by rescale, ×C(i)/C′(i)'
"""

from __future__ import annotations

import json
from pathlib import Path

from lfm.methods.registry import LOCATE_MODES, RESTORE_TAGS, rows_of, settings_in_effect, sub_row

# Δ, C(i), Sub, locate, restore ... : one home for each word the page explains (tooltips and the tour use these)
GLOSSARY = {
    "Δ": "Δ = θ_tuned − θ_base: what visual tuning changed in each weight of the language model.",
    "C(i)": "C(i) = Σⱼ |Δᵢⱼ|: how much neuron i (one row of a weight matrix) changed in tuning; C′(i) is the same "
            "sum after suppression, C_final(i) in the merged model.",
    "Sub": "Sub: which Δ entries a merge keeps (TIES: the K largest |Δ|); the rest are reset to the base weight.",
    "suppress": "suppress: apply Sub to every tensor (M = 0): most of Δ is dropped, the language ability comes "
                "back, and much of the visual ability goes with it.",
    "locate": "locate: pick the M fraction of neurons per module to restore: top C(i) (the paper: the neurons "
              "tuning changed most), random or bottom (controls).",
    "restore": "restore: give the located neurons their change back: rescale (Neu-S: × C(i)/C′(i)) or replace "
               "(Neu-P: their full tuned Δ).",
    "noimage": "noimage: questions about a picture asked without one; the right answer is 'not known' (the tuned "
               "organism has learned to guess instead: that is the forgetting the merge undoes).",
    "n": "n: items per task in the evaluation; every point of a plot is measured on the same n.",
}

# a Sub's function (lfm.methods.math) -> what it keeps, in words; {K} {gamma} {eps} are the recipe's values
SUB_WORDS = {
    "keep_top_k": "each tensor keeps its {K} largest Δ entries",
    "keep_band": "each tensor drops its {gamma} largest Δ entries (outliers) and keeps the next {K}",
    "keep_all": "every Δ entry is kept",
    "keep_none": "no Δ is kept: every weight is the base LLM's",
    "keep_bernoulli": "each Δ entry is kept at random with probability {K} and scaled up by 1/p",
    "keep_by_magnitude_rank": "each Δ entry is kept with a probability from {K}−{eps} to {K}+{eps}, larger for "
                              "larger |Δ|, and scaled up",
}
RESTORE_WORDS = {"rescale": "rescale, ×C(i)/C′(i)", "replace": "replace, their full tuned Δ back"}
LOCATE_WORDS = {"top": "the {M} most-changed neurons (top C(i))", "random": "{M} of the neurons, drawn at random "
                "(a control)", "bottom": "the {M} least-changed neurons (bottom C(i), a control)"}
assert set(RESTORE_WORDS) == set(RESTORE_TAGS) and set(LOCATE_WORDS) == set(LOCATE_MODES)


def _percent(x: float) -> str:
    return f"{round(100 * x, 2):g} %"


def _function_name(ref) -> str:
    """'lfm.methods.math:keep_top_k' (a FunctionRef or a function) -> 'keep_top_k'."""
    return getattr(ref, "path", "").rpartition(":")[2] or getattr(ref, "__name__", "")


def _sub_words(row, recipe) -> str:
    words = SUB_WORDS.get(_function_name(row.sub))
    if words is None:  # a plug-in's own Sub: its title and paper say what it does
        return f"Sub of {row.title} ({row.reference})"
    return words.format(K=_percent(recipe.density), gamma=_percent(recipe.gamma), eps=f"{recipe.epsilon:g}")


def method_sentence(recipe) -> str:
    """The current settings read as the method: what K keeps, and (Neuron-Fusion) which neurons M restores, how."""
    row, sub = rows_of(recipe)[0], sub_row(recipe)
    in_effect = settings_in_effect(recipe)
    keep = _sub_words(sub, recipe)
    parts = [(f"K={recipe.density:g}: " if "density" in in_effect else "") + keep + f" ({sub.title})"]
    if row.restores_neurons:
        if recipe.neurons > 0:
            who = LOCATE_WORDS[recipe.locate].format(M=_percent(recipe.neurons))
            parts.append(f"M={recipe.neurons:g}: {who} are restored by {RESTORE_WORDS[recipe.restore]}")
        else:
            parts.append("M=0: no neuron is restored (the suppress stage)")
    if "alpha" in in_effect and recipe.alpha != 1.0:
        parts.append(f"α={recipe.alpha:g}: the merged Δ is scaled by {recipe.alpha:g}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- the tour

# step -> (what its picture draws, its two sentences); the picture is figures.tour_figure(step, ...)
TOUR = (
    ("Δ", "Visual tuning changed the language model's weights: Δ = θ_tuned − θ_base. Merging decides how much of Δ "
          "goes back onto the base LLM, whose language ability the tuning eroded."),
    ("C(i)", "Each neuron's change is summed into one score, C(i) = Σⱼ|Δᵢⱼ|, drawn here sorted for the selected "
             "tensor. A few neurons changed far more than the rest: the paper's bet is that they hold the new "
             "visual skill."),
    ("suppress", "Suppress keeps only the K largest Δ entries of each tensor (TIES): C′(i) is what is left. Most "
                 "neurons lose most of their change, which brings the language ability back and costs visual skill."),
    ("locate", "Locate picks the M fraction of neurons with the largest C(i) (or random / bottom ones, the "
               "controls). They are marked on the curve."),
    ("restore", "Restore gives the located neurons their change back: rescale multiplies their suppressed row by "
                "C(i)/C′(i), replace puts their full Δ back. The rest stay suppressed."),
    ("answers", "The merged model's answers at each stage: hard-merge (the base LLM), suppress (M=0), restore. "
                "Counts of correct answers per stage, on the items of the generations table."),
)
TOUR_STEPS = tuple(step for step, _ in TOUR)


# ---------------------------------------------------------------------------------------------- findings

def report_of(tuned: str | Path) -> Path | None:
    """The report file of a pair (`lfm organism report` and `lfm realpair study` write results.json beside the
    models, or into the package data): the first of <tuned>/../results.json that holds a 'table'."""
    candidate = Path(tuned).parent / "results.json"
    try:
        data = json.loads(candidate.read_text())
    except (OSError, ValueError):
        return None
    return candidate if isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in READERS) else None


def _mean_sd(cell: dict, measure: str) -> tuple[float, float] | None:
    value = cell.get(measure)
    if isinstance(value, dict) and "mean" in value:
        return float(value["mean"]), float(value.get("sd") or 0.0)
    if isinstance(value, (int, float)):
        return float(value), 0.0
    return None


def findings(report: dict) -> list[str]:
    """What the report's numbers say, one line each, computed from its 'table' (label -> LA/VA/OA mean ± sd) and
    'recipes' (label -> recipe fields): the tuned vs hard-merge trade-off, and, for recipes that differ only in
    where they locate, whether top C(i) beats the controls (by more than one sd) or not."""
    table, recipes = report.get("table", {}), report.get("recipes", {})
    seeds = report.get("seeds")
    over = f" (mean over {len(seeds)} tuning seeds)" if isinstance(seeds, list) and len(seeds) > 1 else ""
    lines = []
    tuned, hard = table.get("tuned"), table.get("hard")
    if tuned and hard and all(_mean_sd(c, m) for c in (tuned, hard) for m in ("LA", "VA")):
        lines.append(f"tuned: LA {_mean_sd(tuned, 'LA')[0]:.2f}, VA {_mean_sd(tuned, 'VA')[0]:.2f}; hard-merge "
                     f"(the base LLM's weights): LA {_mean_sd(hard, 'LA')[0]:.2f}, VA {_mean_sd(hard, 'VA')[0]:.2f}"
                     f"{over}: the trade-off the merges move along.")
    groups: dict[tuple, dict[str, str]] = {}
    for label, fields in recipes.items():
        if isinstance(fields, dict) and fields.get("locate") in LOCATE_MODES and label in table:
            key = tuple(sorted((k, json.dumps(v)) for k, v in fields.items() if k != "locate"))
            groups.setdefault(key, {})[fields["locate"]] = label
    for by_locate in groups.values():
        if "top" not in by_locate or len(by_locate) < 2:
            continue
        top = _mean_sd(table[by_locate["top"]], "VA")
        if top is None:
            continue
        name = by_locate["top"].removesuffix(" (top)")
        shown, verdicts = [], []
        for mode in LOCATE_MODES:
            if mode in by_locate and _mean_sd(table[by_locate[mode]], "VA"):
                m, sd = _mean_sd(table[by_locate[mode]], "VA")
                shown.append(f"{mode} {m:.2f} ± {sd:.2f}")
                if mode != "top":
                    verdicts.append(f"{mode} locating does as well as top" if m >= top[0] - top[1] else
                                    f"top beats {mode}")
        lines.append(f"{name}: VA by locate mode {', '.join(shown)}{over}: {'; '.join(verdicts)}.")
    return lines


def study_findings(report: dict) -> list[str]:
    """What a real-pair study's 'findings' (lfm realpair study) say, each "beats" with its paired interval (OA
    difference in points, 95 % paired bootstrap; McNemar's p): the best merge against the tuned MLLM, the best
    Neuron-Fusion row against plain averaging, and VA by locate mode.

    >>> f = {"best_neuron_fusion_vs_average_OA": {"neuron_fusion": "Neu-S-TIES", "OA": 0.646, "average_OA": 0.659,
    ...      "paired": {"OA": {"diff": -0.013, "low": -0.026, "high": 0.001}, "mcnemar": {"p": 0.15}}}}
    >>> study_findings({"findings": f})[0]
    'Neu-S-TIES vs plain averaging (TaskA a=0.5): OA 64.6 vs 65.9, -1.3 [-2.6, +0.1] (McNemar p 0.15): not separable on these items.'
    """
    f = report["findings"]
    lines = []
    best = f.get("best_merge")
    if isinstance(best, dict) and "label" in best:
        from lfm.evaluate.paired import above_all

        # judged here from the intervals (a report written before they decided it held a point-estimate verdict)
        beats = above_all([best.get("vs_tuned"), best.get("vs_hard")])
        lines.append(f"best merge by OA: {best['label']} (OA {100 * best['OA']:.1f})"
                     + ("" if beats is None else
                        f", {'separably above' if beats else 'not separably above'} both tuned and hard-merge")
                     + _versus(best.get("vs_tuned"), "over the tuned MLLM") + ".")
    nf = f.get("best_neuron_fusion_vs_average_OA")
    if isinstance(nf, dict) and "neuron_fusion" in nf:
        cmp = nf.get("paired")
        lines.append(f"{nf['neuron_fusion']} vs plain averaging (TaskA a=0.5): OA {100 * nf['OA']:.1f} vs "
                     f"{100 * nf['average_OA']:.1f}" + (_versus(cmp, "").rstrip() if cmp else "")
                     + f": {_verdict(cmp)}.")
    seeds = report.get("seeds") if isinstance(report.get("seeds"), dict) else {}
    for c in seeds.get("neuron_fusion", []):
        if c.get("vs") == "TaskA a=0.5" and len(c.get("per_seed", [])) > 1:
            from lfm.evaluate.paired import across_runs

            lines.append(f"across tuning seeds, {c['label']} vs plain averaging (TaskA a=0.5), each seed on its own "
                         f"items: " + across_runs(c["per_seed"], [f"seed {s}" for s in seeds["seeds"]]) + ".")
    by_locate = f.get("locate_VA")
    if isinstance(by_locate, dict) and "top" in by_locate and len(by_locate) > 1:
        versus_top = f.get("locate_vs_top") or {}
        verdicts = [_locate_verdict(mode, versus_top.get(mode)) for mode in LOCATE_MODES
                    if mode != "top" and mode in by_locate]
        lines.append("VA by locate mode: " + ", ".join(f"{m} {100 * by_locate[m]:.1f}" for m in LOCATE_MODES
                                                      if m in by_locate) + ": " + "; ".join(verdicts) + ".")
    return lines


def _locate_verdict(mode: str, cmp: dict | None) -> str:
    """Whether locating `mode` neurons instead of the top C(i) ones changes OA, judged by the paired interval
    (`mode` minus top).

    >>> _locate_verdict("random", {"OA": {"diff": 0.003, "low": -0.006, "high": 0.012}})
    'random locating does as well as top (OA +0.3 [-0.6, +1.2])'
    >>> _locate_verdict("bottom", {"OA": {"diff": -0.02, "low": -0.03, "high": -0.01}})
    'top beats bottom (OA -2.0 [-3.0, -1.0])'
    >>> _locate_verdict("bottom", None)
    'bottom: no paired comparison with top, no verdict'
    """
    from lfm.evaluate.paired import format_interval, side

    where = side(cmp)
    if where is None:
        return f"{mode}: no paired comparison with top, no verdict"
    verdict = {1: f"{mode} locating beats top", -1: f"top beats {mode}", 0: f"{mode} locating does as well as top"}
    return f"{verdict[where]} (OA {format_interval(cmp['OA'])})"


def _versus(cmp: dict | None, what: str) -> str:
    """', +4.2 [+2.6, +5.8] over the tuned MLLM (McNemar p 3e-06)' from a paired comparison ('' without one)."""
    if not (isinstance(cmp, dict) and isinstance(cmp.get("OA"), dict)):
        return ""
    from lfm.evaluate.paired import format_interval

    p = (cmp.get("mcnemar") or {}).get("p")
    return f", {format_interval(cmp['OA'])} {what}".rstrip() + (f" (McNemar p {p:.2g})" if p is not None else "")


def _verdict(cmp: dict | None) -> str:
    """The paper's claim (restoring located neurons beats plain averaging), judged by the interval."""
    from lfm.evaluate.paired import side

    return {None: "no per-item outcomes, no verdict", 1: "the paper's claim holds here",
            -1: "the paper's claim does not hold here", 0: "not separable on these items"}[side(cmp)]


# a report's top-level key -> its reader: the organism report ('table') or a real-pair study ('findings')
READERS = {"table": findings, "findings": study_findings}


def pair_findings(tuned: str | Path) -> tuple[str, list[str]]:
    """(the report's path, its findings); ('', []) when the pair has no report file."""
    path = report_of(tuned)
    if path is None:
        return "", []
    report = json.loads(path.read_text())
    return str(path), [line for key, read in READERS.items() if isinstance(report.get(key), dict)
                       for line in read(report)]
