"""The Locate-then-Merge explorer: `panel serve apps/explorer.py` (binds 127.0.0.1; offline).

Opens the embedded organism by default. Options after `--args`:
    --base DIR --tuned DIR     a model pair to explore live (small models)
    --results DIR              a results folder written by `lfm precompute` (big models)
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from lfm.explorer.app import ExplorerApp, TITLE, extension  # noqa: E402
from lfm.explorer.state import ExplorerState  # noqa: E402

parser = argparse.ArgumentParser(prog="panel serve apps/explorer.py --args")
parser.add_argument("--base")
parser.add_argument("--tuned")
parser.add_argument("--results")
args, _ = parser.parse_known_args(sys.argv[1:])

extension()
state = ExplorerState()
if args.results:
    state.param.update(source_kind="results", results_path=args.results)
elif args.base and args.tuned:
    state.param.update(source_kind="pair", base_path=args.base, tuned_path=args.tuned)
ExplorerApp(state).__panel__().servable(title=TITLE)
