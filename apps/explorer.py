"""The Locate-then-Merge explorer: `panel serve apps/explorer.py` (serves browsers on this machine only; offline).

Opens the embedded organism by default. Options after `--args`:
    --base DIR --tuned DIR     a model pair to explore live (small models)
    --results DIR              a results folder written by `lfm precompute` (big models)
    --per-task N               organism items per task in live evaluations (default 8; 0 = all)
    --no-sweep                 do not evaluate the trade-off curves in the background

`panel serve` binds every interface unless told otherwise: pass `--address 127.0.0.1` (as `make demo`
does), or run `lfm explore`, which binds 127.0.0.1 by default. Whatever the bind address, the app
serves browsers on this machine only: another address gets a refusal, unless LFM_ALLOW_REMOTE=1 is
set in the server's environment (lfm.explorer.app.session_page).
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from lfm.explorer.app import TITLE, extension, session_page  # noqa: E402
from lfm.explorer.state import ExplorerState  # noqa: E402

parser = argparse.ArgumentParser(prog="panel serve apps/explorer.py --args")
parser.add_argument("--base")
parser.add_argument("--tuned")
parser.add_argument("--results")
parser.add_argument("--per-task", type=int, default=8, help="organism items per task in live evaluations (0 = all)")
parser.add_argument("--no-sweep", action="store_true", help="skip the background trade-off sweep")
args, _ = parser.parse_known_args(sys.argv[1:])



def make_state() -> ExplorerState:
    state = ExplorerState(per_task=args.per_task, auto_sweep=not args.no_sweep)
    if args.results:
        state.param.update(source_kind="results", results_path=args.results)
    elif args.base and args.tuned:
        state.param.update(source_kind="pair", base_path=args.base, tuned_path=args.tuned)
    return state


extension()
if __name__ == "__main__":  # `python apps/explorer.py`: serve on 127.0.0.1 without the panel CLI
    import panel as pn

    pn.serve({"explorer": lambda: session_page(make_state)}, address="127.0.0.1", port=5006, show=False,
             title=TITLE)
else:
    session_page(make_state).servable(title=TITLE)
