"""The Locate-then-Merge explorer: `panel serve apps/explorer.py` (serves browsers on this machine only; offline).

Opens the embedded organism by default. Options after `--args`:
    --base DIR --tuned DIR     a model pair to explore live (any size that fits in memory)
    --suite S.yaml             the pair's evaluation suite (live LA / VA / answers; the organism needs none)
    --results DIR              a results folder written by `lfm precompute` (big models)
    --per-task N               items per task in live evaluations (default 8; 0 = all)
    --no-sweep                 do not evaluate the trade-off curves in the background

`panel serve` binds every interface unless told otherwise: pass `--address 127.0.0.1` (as `make demo`
does), or run `lfm explore`, which binds 127.0.0.1 by default. Whatever the bind address, the app
serves browsers on this machine only: another address gets a refusal, unless LFM_ALLOW_REMOTE=1 is
set in the server's environment (lfm.explorer.app.page).
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from lfm.cli import let_idle_threads_sleep  # noqa: E402

let_idle_threads_sleep()  # before torch is imported: merges in a shared server must not spin

from lfm.explorer.app import TITLE, extension, page, serve  # noqa: E402

parser = argparse.ArgumentParser(prog="panel serve apps/explorer.py --args")
parser.add_argument("--base")
parser.add_argument("--tuned")
parser.add_argument("--suite")
parser.add_argument("--results")
parser.add_argument("--per-task", type=int, default=8, help="items per task in live evaluations (0 = all)")
parser.add_argument("--no-sweep", action="store_true", help="skip the background trade-off sweep")
args, _ = parser.parse_known_args(sys.argv[1:])
source = dict(results=args.results, base=args.base, tuned=args.tuned, suite=args.suite, per_task=args.per_task,
              auto_sweep=not args.no_sweep)

extension()
if __name__ == "__main__":  # `python apps/explorer.py`: serve on 127.0.0.1 without the panel CLI
    serve(**source)
else:  # `panel serve apps/explorer.py`
    page(**source).servable(title=TITLE)
