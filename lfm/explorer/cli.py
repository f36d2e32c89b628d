"""`lfm precompute` (the results folder for big models) and `lfm explore` (serve the explorer on 127.0.0.1).

    lfm precompute --base B --tuned T --out RESULTS [--suite S.yaml] [--densities 0.05,0.1,0.2,0.3,0.5]
                   [--neurons 0,0.1,0.3] [--device cuda] [--no-eval] [--per-task N] [--sweep-table SWEEP.csv]
    lfm explore [--results RESULTS | --base B --tuned T [--suite S.yaml]] [--per-task N] [--device cuda] [--port 5006]
                [--token TOKEN | --no-token]

`lfm explore` prints the URL to open, with a fresh token (or --token / $LFM_TOKEN): without it the server
answers 403 and makes no session (lfm.explorer.gate).

A pair is evaluated on its suite (lfm.explorer.live): the organism needs none (its own held-out items),
any other pair needs --suite (e.g. the real pair's <root>/suite/suite.yaml).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lfm.access import add_token_args, choose_token
from lfm.cli import count_option, device_option, number_option, port_option
from lfm.evaluate.cli import add_trust_suite_code

from . import DEFAULT_DENSITIES, DEFAULT_NEURONS


def _values_of(setting: str):
    """The argparse ``type`` of a comma list of one recipe setting's values, each read and checked as its flag."""
    def read(text: str) -> tuple[float, ...]:
        values = tuple(number_option(setting)(v) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError("expected at least one number")
        return values
    read.__name__ = f"{setting} list"
    return read


def register(subparsers) -> None:
    p = subparsers.add_parser("precompute", help="write the explorer's results folder for a (big) pair",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base LLM directory")
    p.add_argument("--tuned", required=True, help="tuned MLLM directory")
    p.add_argument("--out", required=True, help="results folder to write")
    p.add_argument("--densities", type=_values_of("density"), default=DEFAULT_DENSITIES,
                   help="K grid for C'(i) and the sweep (default %(default)s)")
    p.add_argument("--neurons", type=_values_of("neurons"), default=DEFAULT_NEURONS,
                   help="M grid for the sweep and the generations (default %(default)s)")
    p.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or auto: where the scores are computed and the "
                                                                       "pair is held and evaluated (default cpu)")
    p.add_argument("--no-eval", action="store_true", help="scores only: no sweep, no generations")
    p.add_argument("--suite", help="the pair's evaluation suite: a suite YAML, 'organism' or 'paper' (the organism "
                                   "needs none)")
    p.add_argument("--per-task", type=count_option(0), default=0, help="items per task for evaluations (0 = all)")
    p.add_argument("--sweep-table", help="a sweep table (CSV with density, neurons, method, LA, VA, OA), e.g. "
                                         "from `lfm sweep`, copied into the folder as sweep.csv")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out (the new folder is built beside "
                                                        "it and swapped in when complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_trust_suite_code(p)
    p.set_defaults(func=cmd_precompute)

    e = subparsers.add_parser("explore", help="serve the explorer dashboard on 127.0.0.1")
    e.add_argument("--results", help="a results folder (default: the real pair, live, once `make realpair` built "
                   "it, else the embedded organism; $LFM_DEFAULT_PAIR chooses)")
    e.add_argument("--base", help="base LLM directory (with --tuned: evaluate this pair live)")
    e.add_argument("--tuned", help="tuned MLLM directory (with --base)")
    e.add_argument("--suite", help="the pair's evaluation suite (a suite YAML, 'organism' or 'paper'); the organism "
                                   "needs none")
    e.add_argument("--per-task", type=count_option(0), default=8,
                   help="items per task in live evaluations (default 8; 0 = all)")
    e.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or auto: where a live pair is "
                                                                       "held, merged and evaluated (default cpu)")
    e.add_argument("--port", type=port_option, default=5006, help="port to serve on (default 5006)")
    e.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    e.add_argument("--allow-remote", action="store_true",
                   help="also serve browsers on other machines (sets LFM_ALLOW_REMOTE=1): they can open any "
                        "directory of this machine")
    add_token_args(e)
    e.set_defaults(func=cmd_explore)


def cmd_precompute(args) -> int:
    """Write the results folder into a temporary sibling and rename it into place at the end (as `lfm merge`
    does): an error or an interrupt leaves no half-written folder, and a --force run replaces the old one."""
    args.suite = _check_suite(args.suite, trust_code=args.trust_suite_code)  # before torch loads
    from lfm.checkpoint import atomic_output_dir

    from .results import write_scores

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} is not empty; pass --force to replace it")
    done = []
    with atomic_output_dir(out, force=args.force, log=print) as tmp:
        meta = write_scores(args.base, args.tuned, tmp, args.densities, device=args.device, progress=not args.quiet)
        done.append(f"scores, C'(i) at K={list(args.densities)} and summary.csv")
        if args.sweep_table:
            shutil.copyfile(args.sweep_table, tmp / "sweep.csv")
            done.append(f"sweep.csv (from {args.sweep_table})")
        if not args.no_eval:
            done.append(_evaluations(args, tmp, meta))
    print(f"wrote {out}: " + "; ".join(d for d in done if d))
    return 0


def _evaluations(args, tmp: Path, meta: dict) -> str:
    """The sweep and the generations into ``tmp``; what was written, or why nothing (said, not raised)."""
    from .live import LivePair
    from .results import write_evaluations

    try:
        live = LivePair(args.base, args.tuned, suite=args.suite, device=args.device)
    except MemoryError as e:  # a pair too big to hold for evaluation: scores only
        print(f"no live evaluation: {e}")
        return ""
    if not live.can_evaluate:
        print(f"no evaluation: {live.eval_error}\n(or run `lfm sweep` and pass its table with --sweep-table)")
        return ""
    write_evaluations(live, tmp, args.densities, args.neurons, items=live.eval_items(args.per_task),
                      progress=not args.quiet)
    return f"sweep.csv and generations.csv ({meta['n_layers']} layers)"


def cmd_explore(args) -> int:
    _check_suite(args.suite)  # the page checks it again: it never runs a suite's code
    token = choose_token(args.token, args.no_token)
    from lfm.device import resolve_device

    from .app import extension, serve

    device = str(resolve_device(args.device))  # an unavailable device: one line here, before the server starts
    if args.suite and not (args.base and args.tuned):
        raise ValueError("--suite evaluates a pair: pass it with --base and --tuned")
    source = dict(results=args.results, base=args.base, tuned=args.tuned, suite=args.suite)
    if not (args.results or args.base or args.tuned):
        source.update(default_source())
    extension()
    serve(token=token, address=args.address, port=args.port, allow_remote=args.allow_remote, per_task=args.per_task,
          device=device, **source)


def default_source() -> dict:
    """What the explorer opens when no pair is named (lfm.default_pair): the real pair, live on its suite, once
    built; else {} (the embedded organism's results). Said in one line, never silently."""
    from lfm.default_pair import default_pair, opened_line

    pair = default_pair()
    print(opened_line(pair), flush=True)
    return {} if pair.is_organism else dict(base=str(pair.base), tuned=str(pair.tuned), suite=str(pair.suite))
    return 0


def _check_suite(suite: str | None, trust_code: bool = False):
    """A --suite that cannot be read, or whose task files name code (without --trust-suite-code), fails here, in
    one line, before any model is read or server started. Returns the Suite (None without --suite)."""
    if suite:
        from lfm.evaluate.suites import get_suite

        return get_suite(suite, trust_code=trust_code)
    return None
