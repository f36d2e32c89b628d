"""The Locate-then-Merge explorer: `python apps/explorer.py [options]` (as `lfm explore`; offline).

Opens the real pair once `make realpair` built it, else the embedded organism ($LFM_DEFAULT_PAIR chooses). Options:
    --base DIR --tuned DIR     a model pair to explore live (any size that fits in memory)
    --suite S.yaml             the pair's evaluation suite (live LA / VA / answers; the organism needs none)
    --results DIR              a results folder written by `lfm precompute` (big models)
    --per-task N               items per task in live evaluations (default 8; 0 = all)
    --no-sweep                 do not evaluate the trade-off curves in the background
    --port N                   port on 127.0.0.1 (default 5006)
    --token T | --no-token     the secret the URL carries (default: $LFM_TOKEN, else a random one)

It serves on 127.0.0.1 behind lfm's token gate and prints the URL to open, with the token; --no-token lets
every local user in, and says so. A plain `panel serve apps/explorer.py` cannot put that gate in front of its
sessions (lfm.explorer.gate), so there the page is a refusal that names the command to run. Whatever the
bind address, the app serves browsers on this machine only: another address gets a refusal, unless
LFM_ALLOW_REMOTE=1 is set in the server's environment (lfm.explorer.app.page).
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from lfm.cli import let_idle_threads_sleep  # noqa: E402

let_idle_threads_sleep()  # before torch is imported: merges in a shared server must not spin

from lfm.access import add_token_args, choose_token  # noqa: E402
from lfm.explorer.app import TITLE, extension, page, serve  # noqa: E402

parser = argparse.ArgumentParser(prog="python apps/explorer.py")
parser.add_argument("--base")
parser.add_argument("--tuned")
parser.add_argument("--suite")
parser.add_argument("--results")
parser.add_argument("--per-task", type=int, default=8, help="items per task in live evaluations (0 = all)")
parser.add_argument("--no-sweep", action="store_true", help="skip the background trade-off sweep")
parser.add_argument("--port", type=int, default=5006, help="port on 127.0.0.1 (default 5006)")
add_token_args(parser)
args, _ = parser.parse_known_args(sys.argv[1:])
source = dict(results=args.results, base=args.base, tuned=args.tuned, suite=args.suite, per_task=args.per_task,
              auto_sweep=not args.no_sweep)

extension()
if __name__ == "__main__":  # `python apps/explorer.py`: serve on 127.0.0.1 behind the token gate
    try:
        token = choose_token(args.token, args.no_token)
    except ValueError as e:
        print(f"apps/explorer.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    if not (args.results or args.base or args.tuned):
        from lfm.explorer.cli import default_source

        source.update(default_source())
    serve(token=token, port=args.port, **source)
else:  # `panel serve apps/explorer.py`: no gate runs before its sessions, so `page` refuses. location=False: no
    # Location model, whose parsing of a link answers `?foo=%C2%B2` with HTTP 500
    page(**source).servable(title=TITLE, location=False)
