"""Paired statistics for two models scored on the same items: is one really better, and by how much?

    mcnemar(a, b)                         exact McNemar test on per-item outcomes (True = correct)
    bootstrap_oa(a, b, language, visual)  a seeded paired bootstrap interval for OA(a) - OA(b)

Both read per-item outcomes as a sweep logs them (``lfm.evaluate.sweep``, ``log_items``): per task label a
string of '0'/'1', one character per item in the suite's order, the same items for every model.

McNemar counts the discordant items (a right and b wrong: ``a_only``; the reverse: ``b_only``); under "no
difference" each discordant item goes either way with probability 1/2, so the two-sided p-value is the exact
binomial tail, doubled (capped at 1). It pools every item given to it, weighting items equally.

The bootstrap resamples items within each task (the same resampled items for both models: paired), with
numpy's generator seeded by ``seed``, recomputes OA = (mean LA task + mean VA task) / 2 (``lfm.taxonomy.
abilities``, the paper's OA) for both, and reports the percentile interval of the difference.
"""

from __future__ import annotations

import math

import numpy as np

from lfm.taxonomy import abilities


def outcomes(bits: str) -> np.ndarray:
    """'0110' -> array([False, True, True, False]) (per-item outcomes as a sweep logs them).

    >>> outcomes("0110").tolist()
    [False, True, True, False]
    """
    if set(bits) - {"0", "1"}:
        raise ValueError(f"per-item outcomes must be a string of 0 and 1, got {bits[:20]!r}")
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    >>> mcnemar_p(0, 6)      # six discordant items, all one way: 2 / 2**6
    0.03125
    >>> mcnemar_p(3, 3), mcnemar_p(0, 0)
    (1.0, 1.0)
    """
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(a, b) -> dict:
    """McNemar on paired outcomes (sequences of bool, or '0'/'1' strings) of the same items.

    >>> mcnemar("1110", "0100")
    {'items': 4, 'a_only': 2, 'b_only': 0, 'p': 0.5}
    """
    a, b = (outcomes(x) if isinstance(x, str) else np.asarray(x, dtype=bool) for x in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same items: {a.size} vs {b.size}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    return {"items": int(a.size), "a_only": a_only, "b_only": b_only, "p": mcnemar_p(a_only, b_only)}


def bootstrap_oa(a: dict[str, str], b: dict[str, str], language: list[str], visual: list[str], *,
                 iters: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """OA(a) - OA(b) and its paired percentile bootstrap interval.

    Args:
        a, b: {task label: per-item outcomes} of the two models (the same items per task).
        language, visual: the task labels of LA and VA (OA = their means' mean, as ``abilities``).
    Returns:
        {"diff", "low", "high", "level", "iters", "seed"} (fractions, not points).

    >>> r = bootstrap_oa({"l": "1111", "v": "1100"}, {"l": "1111", "v": "0000"}, ["l"], ["v"], iters=200)
    >>> r["diff"], 0.0 <= r["low"] <= r["diff"] <= r["high"] <= 0.5
    (0.25, True)
    """
    rng = np.random.default_rng(seed)
    acc = {}
    for task in list(language) + list(visual):
        x, y = outcomes(a[task]), outcomes(b[task])
        if x.size != y.size or x.size == 0:
            raise ValueError(f"task {task!r}: paired outcomes need the same, non-empty items ({x.size} vs {y.size})")
        idx = rng.integers(0, x.size, size=(iters, x.size))
        acc[task] = (x.mean(), y.mean(), x[idx].mean(1), y[idx].mean(1))
    oa_a = abilities([acc[t][0] for t in language], [acc[t][0] for t in visual])[2]
    oa_b = abilities([acc[t][1] for t in language], [acc[t][1] for t in visual])[2]
    boot_a = abilities([acc[t][2] for t in language], [acc[t][2] for t in visual])[2]
    boot_b = abilities([acc[t][3] for t in language], [acc[t][3] for t in visual])[2]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot_a - boot_b, [tail, 100 - tail])
    return {"diff": float(oa_a - oa_b), "low": float(low), "high": float(high), "level": level, "iters": iters,
            "seed": seed}


def format_interval(r: dict) -> str:
    """'+1.2 [-0.4, +2.9]' in points.

    >>> format_interval({"diff": 0.012, "low": -0.004, "high": 0.029})
    '+1.2 [-0.4, +2.9]'
    """
    return f"{100 * r['diff']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"


def side(cmp: dict | None) -> int | None:
    """Where a paired comparison puts the first model: +1 above the second (its 95 % interval of the OA
    difference lies above zero), -1 below (the interval below zero), 0 not separable; None without per-item
    outcomes (no verdict).

    >>> side({"OA": {"low": -0.009, "high": 0.009}}), side({"OA": {"low": 0.01, "high": 0.03}}), side(None)
    (0, 1, None)
    """
    if not (isinstance(cmp, dict) and isinstance(cmp.get("OA"), dict)):
        return None
    return 1 if cmp["OA"]["low"] > 0 else -1 if cmp["OA"]["high"] < 0 else 0


def above(cmp: dict | None) -> bool | None:
    """Whether a paired comparison separates the first model above the second (``side`` is +1); None: no verdict.

    >>> above({"OA": {"low": -0.009, "high": 0.009}}), above({"OA": {"low": 0.01, "high": 0.03}}), above(None)
    (False, True, None)
    """
    where = side(cmp)
    return None if where is None else where == 1


def above_all(cmps: list[dict | None]) -> bool | None:
    """``above`` for every comparison: None when any has no per-item outcomes.

    >>> above_all([{"OA": {"low": 0.01, "high": 0.02}}, {"OA": {"low": 0.2, "high": 0.3}}]), above_all([None])
    (True, None)
    """
    verdicts = [above(c) for c in cmps]
    return None if None in verdicts else all(verdicts)



def across_runs(cmps: list[dict | None], runs: list[str]) -> str:
    """The same paired comparison made on several runs (tuning seeds), each judged by its own interval (``side``).

    >>> across_runs([{"OA": {"diff": -0.005, "low": -0.015, "high": 0.005}},
    ...              {"OA": {"diff": 0.012, "low": 0.001, "high": 0.024}}], ["seed 0", "seed 1"])
    '-0.5 [-1.5, +0.5] (seed 0), +1.2 [+0.1, +2.4] (seed 1): above on 1 of 2, below on 0, not separable on 1'
    """
    sides = [side(c) for c in cmps]
    each = ", ".join(("no per-item outcomes" if c is None else format_interval(c["OA"])) + f" ({run})"
                     for c, run in zip(cmps, runs))
    verdict = f"above on {sides.count(1)} of {len(sides)}, below on {sides.count(-1)}, not separable on {sides.count(0)}"
    return each + ": " + verdict + (f", no verdict on {sides.count(None)}" if None in sides else "")
