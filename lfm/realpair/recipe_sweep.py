"""The sweep that chooses the tuning recipe: lr x steps x text share (x text kinds x task weights), each point
built and checked.

    lfm realpair sweep                      # = --lr 1.5e-4,2e-4,3e-4 --steps 160 --text-share 0.15,0.25
                                            #   --check-limit 50: 6 points around the paper preset

The two known points bracket it: lr 5e-4 x 120 steps, visual only (the overshoot preset) forgot 32 LA points
(perplexity x5.6); lr 1e-4 x 200 steps, visual only, forgot too little (perplexity +6.5 %, capitals -3).
Text-only data in the batch lowers forgetting at a given lr, so the grid spans lr between them at the paper
preset's 160 steps, with two text shares. Time (measured pieces on 2 shared cores, load 4-7): the shared
vision tower and alignment once (~3 + ~3 min), then per point the tuning (160 steps x ~2.3 s = ~6 min) and
its checks at 50 items per task (~3-4 min): about an hour for the 6 points on a quiet machine, 2-3 h loaded.

Every point is the preset (default ``paper``) with three knobs replaced, built as its own run
(OUT/sweep-lr<lr>-steps<n>-text<share>/seed<N>/: the vision tower and the alignment are shared by all points,
build.py) and checked (checks.py) on the first ``check_limit`` items per task. The table (markdown, and its
JSON alongside) has one row per point: the knobs, the checks' numbers, which checks failed, the seconds.

Resumable at the stage: a point whose run already holds checks.json for the same limit costs nothing; an
interrupted point redoes its unfinished stage (build.py caches each stage, the checks' sweeps resume per
model). The table is rewritten from the runs' files after every point, so it never disagrees with them.

Choosing: a point that passes every check (tower-limited counts as passing) at the least tuning; the chosen
knobs become the ``paper`` preset (config.py), whose full build then checks them on every item. Its check
numbers are on ``check_limit`` items per task (s.e. up to 7 points at 50): a tie-breaker, not a result.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .build import DEFAULT_ROOT, build, run_dir
from .checks import run_checks
from .config import BuildConfig, preset


def point_name(lr: float, steps: int, text_share: float, text_kinds: str, task_weights: str = "") -> str:
    """The run folder name of one point (task weights, when any, last).

    >>> point_name(2e-4, 240, 0.25, "definitions")
    'sweep-lr0.0002-steps240-text0.25-definitions'
    >>> point_name(2e-4, 160, 0.25, "definitions,replay")
    'sweep-lr0.0002-steps160-text0.25-definitions+replay'
    >>> point_name(2e-4, 300, 0.25, "definitions", "digits:2")
    'sweep-lr0.0002-steps300-text0.25-definitions-digits2'
    """
    weights = "".join(f"-{w.replace(':', '').strip()}" for w in task_weights.split(",") if w.strip())
    return f"sweep-lr{lr:g}-steps{steps}-text{text_share:g}-{text_kinds.replace(',', '+')}{weights}"


def sweep_points(base_preset: str, *, lrs: list[float], steps: list[int], text_shares: list[float],
                 text_kinds: list[str] | None = None, task_weights: list[str] | None = None,
                 seed: int = 0) -> list[BuildConfig]:
    """Every (lr, steps, text share, text kinds, task weights) point as a BuildConfig of its own run, checks
    enforced (``text_kinds``: comma lists of kinds, ``task_weights``: "task:n" comma lists; None = the
    preset's)."""
    base = preset(base_preset, seed=seed)
    return [replace(base, name=point_name(lr, n, share, kinds, weights), tune_lr=lr, tune_steps=n,
                    text_share=share, text_kinds=kinds, task_weights=weights, checks="enforce")
            for lr in lrs for n in steps for share in text_shares for kinds in (text_kinds or [base.text_kinds])
            for weights in (task_weights or [base.task_weights])]


def _finished(run: Path, limit: int | None) -> dict | None:
    """The point's checks.json when its checks ran at this limit (a rebuilt tuned model deletes it), else None."""
    checks = run / "checks.json"
    if not checks.exists():
        return None
    out = json.loads(checks.read_text())
    return out if out.get("limit") == limit and "seconds" in out else None


def run_recipe_sweep(out: str | Path | None, points: list[BuildConfig], *, check_limit: int | None = 50,
                     table: str | Path | None = None, gguf: str | Path | None = None, dry_run: bool = False,
                     log=print) -> dict:
    """Build and check every point not already done; returns {"rows", "table", "check_limit"} and writes the
    table (markdown + JSON) after each point."""
    root = Path(out) if out else DEFAULT_ROOT
    seed = points[0].seed if points else 0
    table = Path(table) if table else root / f"recipe-sweep-seed{seed}.md"
    rows = []
    for i, cfg in enumerate(points):
        run = run_dir(root, cfg.name, cfg.seed)
        done = _finished(run, check_limit)
        if done is None and not dry_run:
            log(f"sweep point {i + 1}/{len(points)}: {cfg.name}")
            t0 = time.time()
            res = build(root, cfg, gguf=gguf, log=log)
            built = time.time() - t0
            done = run_checks(res, cfg.checks, limit=check_limit)
            done["seconds"] = {"build": round(built, 1), "checks": round(time.time() - t0 - built, 1)}
            (run / "checks.json").write_text(json.dumps(done, indent=1) + "\n")
        rows.append(_row(cfg, run, done))
        if not dry_run:
            _write(table, rows, check_limit)
    return {"rows": rows, "table": table, "check_limit": check_limit}


def _row(cfg: BuildConfig, run: Path, done: dict | None) -> dict:
    row = {"name": cfg.name, "lr": cfg.tune_lr, "steps": cfg.tune_steps, "text_share": cfg.text_share,
           "text_kinds": cfg.text_kinds, "task_weights": cfg.task_weights, "done": done is not None}
    if done:
        n = done["numbers"]
        stages = json.loads((run / "build.json").read_text())["stages"]
        row.update(numbers=n, statuses={c["check"]: c["status"] for c in done["checks"]}, failed=done["failed"],
                   seconds=done.get("seconds", {}), tune_seconds=stages["tuned"].get("seconds"))
    return row


def _write(table: Path, rows: list[dict], check_limit) -> None:
    table.parent.mkdir(parents=True, exist_ok=True)
    res = {"rows": rows, "check_limit": check_limit}
    table.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    table.write_text(format_table(res) + "\n")


def format_table(res: dict) -> str:
    """The sweep as markdown: one row per point (numbers in % / points; 'todo' for a point not yet run)."""
    lines = [f"Recipe sweep ({res['check_limit'] or 'all'} items per task per check; bars: tuned VA >= 80% per "
             "task, hard-merge VA <= 30%, LA drop 5-15 points, held-out perplexity +15..+60%)", "",
             "| lr | steps | text share | text kinds | task weights | digits | colour | shape | count | hard VA | LA drop | ppl rise "
             "| failed | tune s |", "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in res["rows"]:
        head = (f"| {r['lr']:g} | {r['steps']} | {r['text_share']:g} | {r['text_kinds']} | "
                f"{r.get('task_weights') or 'uniform'} |")
        if not r["done"]:
            lines.append(head + " todo |" + " |" * 8)
            continue
        n = r["numbers"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
        drop = None if n["base_LA"] is None or n["tuned_LA"] is None else 100 * (n["base_LA"] - n["tuned_LA"])
        rise = None if not n["base_ppl"] or n["tuned_ppl"] is None else 100 * (n["tuned_ppl"] / n["base_ppl"] - 1)
        visual = (pct(n["tuned_tasks"].get(t)) for t in ("digits", "colour", "shape", "count"))
        lines.append(head + " " + " | ".join(visual)
                     + f" | {pct(n['hard_VA'])} | {'n/a' if drop is None else f'{drop:.1f}'} | "
                     f"{'n/a' if rise is None else f'{rise:+.1f}%'} | {', '.join(r['failed']) or 'none'} | "
                     f"{r['tune_seconds']} |")
    return "\n".join(lines)
