"""Pick-best on a sweep table: the best-OA point and the Pareto front of (LA, VA).

Pure functions on a list of row dicts (or a pandas DataFrame's records); rows whose metrics are missing
(None / NaN) are ignored. A row is on the front when no other row has LA >= and VA >= with one strictly
greater (both higher-is-better).

    >>> rows = [{"label": "a", "LA": .9, "VA": .1}, {"label": "b", "LA": .5, "VA": .5}, {"label": "c", "LA": .4, "VA": .4}]
    >>> [r["label"] for r in pareto_front(rows)]
    ['a', 'b']
"""

from __future__ import annotations

import math


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _records(rows) -> list[dict]:
    return rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)


def best_point(rows, key: str = "OA", *, kinds: tuple[str, ...] = ("point",)) -> dict | None:
    """The row with the highest ``key`` among rows whose ``kind`` is in ``kinds`` (rows without a kind count);
    ties go to the earlier row. None when no row has the metric."""
    cands = [r for r in _records(rows) if _ok(r.get(key)) and r.get("kind", "point") in kinds]
    if not cands:
        return None
    best = cands[0]
    for r in cands[1:]:
        if r[key] > best[key]:
            best = r
    return best


def pareto_front(rows, x: str = "LA", y: str = "VA", *, kinds: tuple[str, ...] | None = None) -> list[dict]:
    """Rows not dominated in (x, y), sorted by x descending (so y ascends along the front).

    O(n log n): sort by x descending (then y descending); a row is on the front iff its y is strictly
    above every y seen before it. Exact duplicates of a front point are all kept.
    """
    recs = [r for r in _records(rows) if _ok(r.get(x)) and _ok(r.get(y))
            and (kinds is None or r.get("kind", "point") in kinds)]
    order = sorted(range(len(recs)), key=lambda i: (-recs[i][x], -recs[i][y], i))
    front, best_y, last = [], -math.inf, None
    for i in order:
        r = recs[i]
        if r[y] > best_y:
            front.append(r)
            best_y, last = r[y], (r[x], r[y])
        elif last == (r[x], r[y]):
            front.append(r)  # an exact duplicate of the point just added
    return front


def report(rows, *, key: str = "OA") -> str:
    """A short text: the best point by ``key`` and the (LA, VA) front."""
    best = best_point(rows, key)
    lines = []
    if best is None:
        lines.append(f"no point has {key}")
    else:
        lines.append(f"best {key}: {best.get('label')}  LA {best['LA']:.3f}  VA {best['VA']:.3f}  OA {best['OA']:.3f}")
    lines.append("Pareto front (LA, VA):")
    for r in pareto_front(rows, kinds=("point", "reference")):
        lines.append(f"  {str(r.get('label')):<28} LA {r['LA']:.3f}  VA {r['VA']:.3f}")
    return "\n".join(lines)
