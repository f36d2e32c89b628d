"""`lfm organism train | eval | report`: regenerate, score and report the embedded model organism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from lfm.cli import number_option

from . import ORGANISM_DIR, export_items, tuned_dir


def register(subparsers) -> None:
    """Add the ``organism`` command (with ``train``, ``eval``, ``report``) to an argparse subparsers object."""
    p = subparsers.add_parser("organism", help="the embedded tiny MLLM: train, eval, report")
    sub = p.add_subparsers(dest="organism_cmd", required=True)

    t = sub.add_parser("train", help="regenerate base/ and tuned/ (and the held-out items) deterministically")
    t.add_argument("--seed", type=number_option("seed"), default=0, help="training seed (default 0: the shipped organism)")
    t.add_argument("--out", default=str(ORGANISM_DIR), help="output folder (gets base/, tuned/, items/)")
    t.add_argument("--steps", type=int, default=None, help="base pretraining steps (default: the recipe's)")
    t.add_argument("--tune-steps", type=int, default=None, help="visual tuning steps (default: the recipe's)")
    t.add_argument("--tune-lr", type=float, default=None, help="LLM learning rate during visual tuning")
    t.add_argument("--tune-only", action="store_true", help="reuse OUT/base (or --base) and only tune")
    t.add_argument("--base", default=None, help="base directory for --tune-only (default OUT/base)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="LA/VA/OA and the failure taxonomy of a model directory")
    e.add_argument("model_dir", nargs="?", help="model directory (default: the organism's tuned MLLM)")
    e.add_argument("--json", action="store_true", help="print one JSON object (LA, VA, OA, tasks, failures)")
    e.add_argument("--answers", action="store_true", help="with --json, include every generated answer")
    e.set_defaults(func=_eval)

    r = sub.add_parser("report", help="measure every number of docs/organism.md into results.json / results.md")
    r.add_argument("--out", default=str(ORGANISM_DIR), help="where results.json / results.md go")
    r.add_argument("--work", default=None, help="folder for the extra tuning seeds (default $TMPDIR/lfm-organism-seeds)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="tuning seeds whose spread the report measures (default 0 1 2)")
    r.set_defaults(func=_report)


def _train(args) -> int:
    from .train import TrainConfig, pretrain_base, tune_llava

    cfg = TrainConfig(seed=args.seed)
    for field, value in (("base_steps", args.steps), ("tune_steps", args.tune_steps), ("tune_lr", args.tune_lr)):
        if value is not None:
            cfg = replace(cfg, **{field: value})
    out = Path(args.out)
    base = Path(args.base) if args.base else out / "base"
    if args.tune_only:
        if not (base / "config.json").exists():
            print(f"error: --tune-only needs a trained base at {base}; run without --tune-only first")
            return 2
    else:
        print(json.dumps({"base": pretrain_base(base, cfg)}))
    print(json.dumps({"tuned": tune_llava(base, out / "tuned", cfg)}))
    print(json.dumps({"items": export_items(out / "items")}))
    return 0


def _eval(args) -> int:
    from .evaluate import evaluate

    res = evaluate(args.model_dir or tuned_dir())
    if args.json:
        keys = ["LA", "VA", "OA", "tasks", "failures"] + (["answers", "language_answers"] if args.answers else [])
        print(json.dumps({k: res[k] for k in keys}))
        return 0
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"LA {fmt(res['LA'])}  VA {fmt(res['VA'])}  OA {fmt(res['OA'])}")
    for task, acc in res["tasks"].items():
        print(f"  {task:<11} {acc:.3f}")
    if res["failures"]:
        print("  failures: " + ", ".join(f"{k} {v}" for k, v in res["failures"].items()))
    return 0


def _report(args) -> int:
    from .report import report

    res = report(out_dir=args.out, work_dir=args.work, seeds=tuple(args.seeds))
    print(res["markdown"])
    return 0
