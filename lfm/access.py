"""Who may use a server lfm starts (`lfm explore`, `python apps/explorer.py`, `make demo`, `lfm lab`): whoever
holds its token.

On a shared machine every user's processes reach 127.0.0.1, and both servers run code as the user who started
them (the explorer opens any directory and evaluation suite, JupyterLab runs any cell). So each start picks a
secret and prints the URL that carries it, as JupyterLab does:

    lfm explore                   a fresh random token (secrets.token_urlsafe), printed in the URL
    lfm explore --token SECRET    the user's own (or LFM_TOKEN=SECRET in the environment)
    lfm explore --no-token        none: a one-line warning says every local user can then run code as you

An empty token (`--token ''`, Jupyter's way to switch authentication off, or an empty LFM_TOKEN) is refused:
switching the secret off takes `--no-token`, said in so many words.

    >>> choose_token(None, False, {"LFM_TOKEN": "from-env"})
    'from-env'
    >>> choose_token("", False, {})
    Traceback (most recent call last):
    ...
    ValueError: --token '' would let every user of this machine in; pass --no-token to do that on purpose (then every local user can run code as you), or a non-empty --token
    >>> choose_token(None, True, {}) is None
    True
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
from collections.abc import Mapping

TOKEN_ENV = "LFM_TOKEN"  # the user's own token for any server lfm starts (a --token flag wins over it)


def add_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help=f"the secret the URL must carry (default: ${TOKEN_ENV}, else a random one, printed "
                                   f"in the URL at start); other users see a command line (ps): prefer ${TOKEN_ENV}")
    p.add_argument("--no-token", action="store_true",
                   help="no secret: every user of this machine can open the server and run code as you")


def choose_token(token: str | None, no_token: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """The server's token: `token` (from --token), else $LFM_TOKEN, else a fresh random one; None when the user
    passed `no_token`. An empty one is refused (ValueError): switching authentication off takes --no-token."""
    if no_token:
        if token:
            raise ValueError("--token and --no-token contradict each other; pass one")
        return None
    if token is None:
        token = environ.get(TOKEN_ENV)
        if token is not None and not token:
            raise ValueError(f"{TOKEN_ENV} is set but empty, which would let every user of this machine in; unset it "
                             f"(a random token is made), set a secret, or pass --no-token on purpose")
    if token is None:
        return secrets.token_urlsafe(32)
    if not token:
        raise ValueError("--token '' would let every user of this machine in; pass --no-token to do that on purpose "
                         "(then every local user can run code as you), or a non-empty --token")
    return token


def no_token_warning(where: str) -> str:
    """The one line `--no-token` prints: who can then do what."""
    return (f"warning: --no-token: every user of this machine who can reach {where} can open this server and run "
            f"code as {getpass.getuser()} (read and write your files); keep the token unless you are alone here")
