"""`lfm eval`, `lfm sweep`, `lfm compare` (registered into the `lfm` command by lfm/cli.py).

    lfm eval [MODEL_DIR] --suite organism|paper|suite.yaml [--out results.json] [--limit N]
    lfm sweep --base B --tuned T --method neu-s-ties,ties --density 0.05:0.9:0.05 --neurons 0:0.5:0.1 \
              --suite organism --out sweeps/run1 [--executor ray] [--resume] [--report]
    lfm sweep --report --out sweeps/run1            # best OA point + (LA, VA) Pareto front of a finished sweep
    lfm compare [--base B --tuned T] --density 0.2 --neurons 0.3 [--items organism|scienceqa|FILE.jsonl] --out DIR

Without a model (eval) or a pair (compare), they run on the embedded organism (shipped in the package).
"""

from __future__ import annotations

import json
from pathlib import Path

from lfm.cli import add_recipe_args, add_strict_arg, check_no_ops, count_option, device_option
from lfm.default_pair import default_pair, opened_line
from lfm.methods.recipe import Recipe, stage_recipes
from lfm.methods.registry import NEURON_FUSION, SETTINGS, settings_in_effect

# the settings of `lfm compare`'s Neuron-Fusion recipe (its stages: lfm.methods.recipe.stage_recipes)
COMPARE_SETTINGS = ("density", "neurons", "suppress", "restore", "alpha")
# the settings a sweep holds fixed (its grid varies method, density and neurons)
SWEEP_FIXED = tuple(name for name in SETTINGS if name not in ("method", "density", "neurons"))

# what --trust-suite-code means (lfm eval, lfm sweep, lfm precompute; never the explorer's page)
TRUST_SUITE_CODE_HELP = ("run the Python code the suite's task files name (lm-eval / lmms-eval '!function' hooks, "
                         "e.g. a utils.py in the task folder) inside this process, as you. Without it such a suite "
                         "is refused: a suite is data. Only for a suite you wrote or trust; the shipped suites "
                         "(organism, the real pair's) need no such code")


def add_trust_suite_code(p) -> None:
    p.add_argument("--trust-suite-code", action="store_true", help=TRUST_SUITE_CODE_HELP)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="LA / VA / OA of a model through lm-eval and lmms-eval")
    p.add_argument("model_dir", nargs="?", help="model directory (an MLLM, or a plain LLM: language tasks only; "
                   "default: the real pair's tuned MLLM once `make realpair` built it, else the embedded organism's; "
                   "$LFM_DEFAULT_PAIR chooses)")
    p.add_argument("--suite", help="paper | organism | a suite YAML file (default: the default pair's suite, "
                   "else organism)")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--limit", type=count_option(1), help="items per task (quick checks)")
    p.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=count_option(1), default=32, help="prompts per forward pass (default 32)")
    p.add_argument("--samples", action="store_true", help="include every generation in the JSON")
    add_trust_suite_code(p)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("sweep", help="evaluate a K/M grid of merges into one results table")
    p.add_argument("--base", help="base LLM directory")
    p.add_argument("--tuned", help="tuned MLLM directory")
    p.add_argument("--method", action="append", metavar="METHOD",
                   help="method or paper alias; repeat or comma-separate (default neu-s-ties)")
    p.add_argument("--density", "-K", help="K values: start:stop:step or a comma list (default 0.2)")
    p.add_argument("--neurons", "-M", help="M values: start:stop:step or a comma list (default 0.3)")
    add_recipe_args(p, SWEEP_FIXED)
    p.add_argument("--suite", default="organism", help="paper | organism | a suite YAML file")
    p.add_argument("--out", required=True, help="results folder (results.csv, results.json, points.jsonl)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one process, point after point; ray: points on Ray actors (default local)")
    p.add_argument("--workers", type=count_option(1), help="Ray CPU actors when no GPU is present (default 1)")
    p.add_argument("--resume", action="store_true", help="continue a sweep in --out; finished points are kept")
    p.add_argument("--limit", type=count_option(1), help="items per task")
    p.add_argument("--no-references", action="store_true", help="skip the base / tuned / hard-merge rows")
    p.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=count_option(1), default=32, help="prompts per forward pass (default 32)")
    p.add_argument("--report", action="store_true", help="print the best-OA point and the (LA, VA) Pareto front "
                   "(alone with --out: report a finished sweep without running anything)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_strict_arg(p)
    add_trust_suite_code(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("compare", help="hard-merge / suppress / restore generations + failure transitions")
    p.add_argument("--base", help="base LLM directory (default, with --tuned: the real pair once `make realpair` "
                   "built it, else the embedded organism; $LFM_DEFAULT_PAIR chooses)")
    p.add_argument("--tuned", help="tuned MLLM directory")
    add_recipe_args(p, COMPARE_SETTINGS)
    p.add_argument("--items", help="the default pair's items (organism, or the real pair's visual items) | organism "
                   "(offline) | scienceqa (ScienceQA-IMG's test split as lmms-eval reads it: from the hub, or its "
                   "cache with HF_HUB_OFFLINE=1) "
                   "| FILE.jsonl: one item a line {id, question, choices, answer, image (relative to the file), "
                   "prompt (optional)}, e.g. the real pair's <root>/suite/items/visual.jsonl")
    p.add_argument("--limit", type=count_option(1), help="visual items (default all)")
    p.add_argument("--max-new-tokens", type=count_option(1), default=16,
                   help="tokens generated per answer (default 16)")
    p.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--out", required=True, help="folder for items.csv and transitions.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_strict_arg(p)
    p.set_defaults(func=cmd_compare)


def cmd_eval(args) -> int:
    from lfm.evaluate.suites import get_suite

    model_dir, suite_name = args.model_dir, args.suite
    if model_dir is None:
        pair = default_pair()
        print(opened_line(pair), flush=True)
        model_dir = pair.tuned
        suite_name = suite_name or (str(pair.suite) if pair.suite else "organism")
    suite = get_suite(suite_name or "organism", trust_code=args.trust_suite_code)  # refused before the harnesses load
    from lfm.evaluate.harness import evaluate, format_table

    res = evaluate(model_dir, suite, limit=args.limit, device=args.device, batch_size=args.batch_size,
                   log_samples=args.samples)
    res["model"] = str(Path(model_dir).resolve())
    if not args.samples:
        for key in ("samples", "answers", "language_answers"):
            res.pop(key, None)
    print(format_table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_sweep(args) -> int:
    from lfm.evaluate.suites import get_suite

    report_only = args.report and not args.base and not args.tuned
    if not report_only and (not args.base or not args.tuned):
        raise ValueError("--base and --tuned are required to run a sweep (or use --report --out DIR alone)")
    suite = None if report_only else get_suite(args.suite, trust_code=args.trust_suite_code)  # before torch loads
    from lfm.evaluate.pareto import report
    from lfm.evaluate.sweep import grid, load_results, parse_values, run_sweep

    if report_only:
        print(report(load_results(args.out)))
        return 0
    methods = [m.strip() for spec in (args.method or ["neu-s-ties"]) for m in spec.split(",") if m.strip()]
    fields = {k: getattr(args, k) for k in SWEEP_FIXED if getattr(args, k) is not None}
    densities, neurons = (parse_values(v if v is not None else getattr(Recipe, name))
                          for name, v in (("density", args.density), ("neurons", args.neurons)))
    recipes = grid(methods, densities, neurons, **fields)
    # a setting is idle when no method of the grid uses it; each method's first point says so (or refuses)
    in_any = {s for r in recipes for s in settings_in_effect(r)}
    given = {*fields, *(name for name in ("density", "neurons") if getattr(args, name) is not None)} - in_any
    firsts = {(r.method, r.suppress, r.restore): r for r in reversed(recipes)}
    for recipe in reversed(list(firsts.values())):
        check_no_ops(args, recipe, given)
    recipes = grid(methods, densities, neurons, **{k: v for k, v in fields.items() if k not in given})
    df = run_sweep(args.base, args.tuned, recipes, suite=suite, out_dir=args.out, executor=args.executor,
                   resume=args.resume, limit=args.limit, references=not args.no_references, device=args.device,
                   workers=args.workers, batch_size=args.batch_size, progress=not args.quiet)
    cols = [c for c in ("label", "LA", "VA", "OA") if c in df.columns]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {Path(args.out) / 'results.csv'} ({len(df)} rows)")
    if args.report:
        print(report(df))
    return 0


def cmd_compare(args) -> int:
    from lfm.evaluate.compare import HUB_ITEMS, compare_stages, format_summary, read_items_file, summary
    from lfm.spreadsheet import csv_text

    if args.items not in (None, "organism", *HUB_ITEMS):
        read_items_file(args.items)  # every line checked before any model is loaded

    if (args.base is None) != (args.tuned is None):
        raise ValueError("--base and --tuned go together (give neither for the default pair)")
    given = {name: getattr(args, name) for name in COMPARE_SETTINGS if getattr(args, name) is not None}
    recipe = check_no_ops(args, Recipe(method=NEURON_FUSION, **given), given)
    stages = stage_recipes(recipe)  # M > 0, checked before any model is loaded
    base, tuned, items = args.base, args.tuned, args.items
    if base is None:
        pair = default_pair()
        print(opened_line(pair), flush=True)
        base, tuned, items = pair.base, pair.tuned, items or pair.items
    table = compare_stages(base, tuned, items=items or "organism", limit=args.limit, device=args.device,
                           max_new_tokens=args.max_new_tokens, progress=not args.quiet, recipes=stages)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.csv").write_text(csv_text(table))  # formula cells neutralised: it is opened in spreadsheets
    s = summary(table)
    s["recipe"] = {**{name: getattr(recipe, name) for name in COMPARE_SETTINGS}, "items": items or "organism"}
    (out / "transitions.json").write_text(json.dumps(s, indent=2) + "\n")
    print(format_summary(s))
    print(f"wrote {out / 'items.csv'} and {out / 'transitions.json'}")
    return 0
