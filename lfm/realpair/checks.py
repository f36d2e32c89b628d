"""Is the built pair in the paper's regime? The checks `lfm realpair build` runs after the tuning.

    BARS                      the regime, as data (issue 26; the paper's pairs: LA -6 points, VA 49 -> 65)
    regime_checks(numbers)    pure: one verdict per check from measured numbers
    measure(res)              the numbers, through lfm's sweep (base, tuned, hard-merge on the suite, and base /
                              tuned perplexity on the check's held-out text); resumable, cached in the run folder

The checks, one line each (``format_checks``):

    tuned VA <task>     the tuned MLLM's accuracy on each visual task >= 80 %; a task whose ceiling is lower is
                        *tower-limited*, not failed: the vision tower's own heads (pretrained on the training
                        images, vision.py) classify fewer than 80 % of its held-out images, so no tuning of the
                        LLM can reach the bar (the LLaVA sees the task through that tower)
    hard-merge VA       the hard-merged model (the tuned MLLM with its LLM reverted to the base) <= 30 %
    LA drop             base LA - tuned LA within 5-15 points (moderate forgetting)
    held-out perplexity tuned / base token perplexity - 1 within +15 % .. +60 % on a real text outside both
                        suites (``data.check_prose``: the MPL-2.0)

Status words: ``pass``, ``FAIL``, ``tower-limited``. Under ``checks='inform'`` (the smoke preset, whose tiny
model cannot be in any regime) the same lines are printed, marked informational, and never fail the build;
under ``'enforce'`` a FAIL makes `lfm realpair build` exit 1 after printing the pair's paths (exit 0: every
check passed or was tower-limited; exit 2: the build itself could not run).
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import VISUAL_TASKS

BARS = {"tuned_va_min": 0.80, "hard_va_max": 0.30, "la_drop_points": (5.0, 15.0), "ppl_rise": (0.15, 0.60)}


def regime_checks(numbers: dict, bars: dict = BARS) -> list[dict]:
    """One verdict per check: [{"check", "status": "pass" | "FAIL" | "tower-limited", "line"}]. Each verdict
    judges the number as its line prints it (accuracies and rises to 0.1 %, the drop to 0.1 point), so a
    value on a bar's edge passes and the line never contradicts its status.

    numbers: {"tuned_tasks": {visual task: accuracy}, "tower": {task: the tower's held-out accuracy},
              "hard_VA", "base_LA", "tuned_LA", "base_ppl", "tuned_ppl"} (accuracies in [0, 1]; a missing
              number fails its check with "not measured").

    >>> n = {"tuned_tasks": {"digits": 0.9}, "tower": {"digits": 0.95}, "hard_VA": 0.1, "base_LA": 0.6,
    ...      "tuned_LA": 0.5, "base_ppl": 10.0, "tuned_ppl": 13.0}
    >>> [c["status"] for c in regime_checks(n)]
    ['pass', 'pass', 'pass', 'pass']
    """
    out = []
    lo_va = bars["tuned_va_min"]
    for task in [t for t in VISUAL_TASKS if t in numbers.get("tuned_tasks", {})] or list(VISUAL_TASKS):
        acc, ceiling = (_shown(numbers.get(k, {}).get(task)) for k in ("tuned_tasks", "tower"))
        name = f"tuned VA {task}"
        if acc is None:
            out.append(_verdict(name, "FAIL", "not measured"))
        elif acc >= lo_va:
            out.append(_verdict(name, "pass", f"{_pc(acc)} >= {_pc(lo_va, 0)}"))
        elif ceiling is not None and ceiling < lo_va:
            out.append(_verdict(name, "tower-limited", f"{_pc(acc)} < {_pc(lo_va, 0)}, but the vision tower itself "
                                f"classifies only {_pc(ceiling)} of held-out {task} images: not counted"))
        else:
            out.append(_verdict(name, "FAIL", f"{_pc(acc)} < {_pc(lo_va, 0)}"
                                + (f" (the tower sees {_pc(ceiling)})" if ceiling is not None else "")))
    hard, hi = _shown(numbers.get("hard_VA")), bars["hard_va_max"]
    out.append(_verdict("hard-merge VA", "FAIL", "not measured") if hard is None else
               _verdict("hard-merge VA", "pass" if hard <= hi else "FAIL",
                        f"{_pc(hard)} {'<=' if hard <= hi else '>'} {_pc(hi, 0)}"))
    base, tuned = numbers.get("base_LA"), numbers.get("tuned_LA")
    lo, hi = bars["la_drop_points"]
    if base is None or tuned is None:
        out.append(_verdict("LA drop", "FAIL", "not measured"))
    else:
        drop = round(100 * (base - tuned), 1)
        out.append(_verdict("LA drop", "pass" if lo <= drop <= hi else "FAIL",
                            f"{drop:.1f} points ({_pc(base)} -> {_pc(tuned)}), "
                            f"{'within' if lo <= drop <= hi else 'outside'} {lo:g}-{hi:g}"))
    base, tuned = numbers.get("base_ppl"), numbers.get("tuned_ppl")
    lo, hi = bars["ppl_rise"]
    if not base or tuned is None:
        out.append(_verdict("held-out perplexity", "FAIL", "not measured"))
    else:
        rise = _shown(tuned / base - 1)
        out.append(_verdict("held-out perplexity", "pass" if lo <= rise <= hi else "FAIL",
                            f"{100 * rise:+.1f}% ({base:.2f} -> {tuned:.2f}), "
                            f"{'within' if lo <= rise <= hi else 'outside'} {100 * lo:+.0f}%..{100 * hi:+.0f}%"))
    return out


def _shown(v: float | None) -> float | None:
    """A fraction as its line prints it (0.1 %)."""
    return None if v is None else round(v, 3)


def _verdict(check: str, status: str, detail: str) -> dict:
    return {"check": check, "status": status, "line": f"check {check}: {detail}: {status}"}


def _pc(v: float, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%"


def failed(checks: list[dict]) -> list[str]:
    """The names of the checks that failed."""
    return [c["check"] for c in checks if c["status"] == "FAIL"]


def format_checks(checks: list[dict], mode: str) -> list[str]:
    """The check lines, then one summary line (what failed; 'informational' under mode 'inform').

    >>> verdict = {"check": "LA drop", "status": "FAIL", "line": "check LA drop: 40.0 points: FAIL"}
    >>> format_checks([verdict], "inform")[-1]
    'regime checks (informational: this preset is not meant to be in the regime): 0 passed, 1 failed (LA drop)'
    """
    counts = {s: sum(c["status"] == s for c in checks) for s in ("pass", "FAIL", "tower-limited")}
    summary = f"{counts['pass']} passed, {counts['FAIL']} failed"
    if failed(checks):
        summary += f" ({', '.join(failed(checks))})"
    if counts["tower-limited"]:
        summary += f", {counts['tower-limited']} tower-limited"
    head = "regime checks" + (" (informational: this preset is not meant to be in the regime)"
                              if mode == "inform" else "")
    return [c["line"] for c in checks] + [f"{head}: {summary}"]


def numbers_from(suite_df, check_df, tower: dict) -> dict:
    """The checks' numbers from the two sweep tables (reference rows 'base', 'tuned', 'hard')."""
    suite = {r["point"]: r for r in suite_df.to_dict("records")}
    prose = {r["point"]: r for r in check_df.to_dict("records")}
    ppl = "task:ppl_check"
    return {"tuned_tasks": {t: suite["tuned"].get(f"task:{t}") for t in VISUAL_TASKS if f"task:{t}" in suite["tuned"]},
            "tower": tower, "hard_VA": suite["hard"]["VA"], "base_LA": suite["base"]["LA"],
            "tuned_LA": suite["tuned"]["LA"], "base_ppl": prose["base"].get(ppl), "tuned_ppl": prose["tuned"].get(ppl)}


def measure(res: dict, *, limit: int | None = None, progress: bool = False) -> dict:
    """The checks' numbers for a build (``build.build``'s result): base, tuned and hard-merge on the suite
    (the run's study table: the study resumes from it), base and tuned on the check's text."""
    from lfm.evaluate.sweep import run_sweep

    from .build import sweep_dir

    kw = dict(resume=True, progress=progress)
    pair = (res["base"], res["tuned"], [])
    suite_df = run_sweep(*pair, suite=res["suite"], out_dir=sweep_dir(res["run"], "suite", limit), limit=limit,
                         log_items=True, **kw)
    check_df = run_sweep(*pair, suite=res["check"], out_dir=sweep_dir(res["run"], "check"), **kw)
    return numbers_from(suite_df, check_df, res["stages"]["vision"].get("held_out_accuracy") or {})


def run_checks(res: dict, mode: str, *, limit: int | None = None, progress: bool = False) -> dict:
    """Measure, judge, and write the run's checks.json. Returns {"mode", "numbers", "checks", "failed", "lines"}."""
    numbers = measure(res, limit=limit, progress=progress)
    checks = regime_checks(numbers)
    out = {"mode": mode, "limit": limit, "numbers": numbers, "bars": BARS, "checks": checks,
           "failed": failed(checks), "lines": format_checks(checks, mode)}
    Path(res["run"], "checks.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
