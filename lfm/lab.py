"""`lfm lab`: JupyterLab on the notebooks, bound to 127.0.0.1 and offline (what `make lab` runs).

    lfm lab [DIR] [--port 8888] [--token TOKEN | --no-token] [--open]

JupyterLab ships its JavaScript and the lab extensions lfm's notebooks use (ipywidgets, plotly,
anywidget, Panel's comms) inside their wheels, so nothing is fetched when the page loads. The news feed
the update check and the extension manager's PyPI search, the things JupyterLab itself would ask the internet
for, are switched off, and so is the "get notified about official Jupyter news?" prompt: lfm's default
settings (lfm/data/lab/labconfig/default_setting_overrides.json, through `lab_environment`) answer it with "no" and
turn the update check off. They are defaults: a user's own JupyterLab settings still win.

The token (lfm.access: --token, else $LFM_TOKEN, else a fresh random one) reaches JupyterLab through its
environment (JUPYTER_TOKEN), never its command line, which every user of the machine can read (`ps`);
`lfm lab` prints the URL to open, with it. `--token ''` (Jupyter's "no authentication") is refused: that takes
`--no-token`, which prints who can then run code as you.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlencode

from lfm.access import add_token_args, choose_token, no_token_warning
from lfm.package_data import LAB_CONFIG_DIR


def lab_command(notebook_dir: str | os.PathLike, *, port: int = 8888, no_token: bool = False,
                open_browser: bool = False) -> list[str]:
    """The JupyterLab command line for `notebook_dir` (a list for subprocess / exec). The token goes in the
    environment (`lab_environment`); `no_token` switches authentication off.

    Example:
        >>> cmd = lab_command("notebooks", port=8899)
        >>> cmd[1:3], "--ServerApp.ip=127.0.0.1" in cmd, any("token" in c.lower() for c in cmd)
        (['-m', 'jupyterlab'], True, False)
    """
    root = Path(notebook_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory; pass the folder that holds the notebooks")
    cmd = [sys.executable, "-m", "jupyterlab",
           f"--ServerApp.root_dir={root}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]  # the extension manager would search PyPI
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")  # containers and CI run as root; the server binds 127.0.0.1 only
    if no_token:
        cmd.append("--IdentityProvider.token=")  # an empty JUPYTER_TOKEN would make Jupyter pick a random one
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def lab_environment(token: str | None, environ: dict | None = None) -> dict[str, str]:
    """The environment JupyterLab runs in: `environ` (default os.environ) with JUPYTER_TOKEN set to `token`
    (None: `--no-token`, none set), and lfm's Jupyter config directory first on JUPYTER_CONFIG_PATH, where
    JupyterLab reads default settings (labconfig/default_setting_overrides.json: no news prompt, no update check).

    Example:
        >>> env = lab_environment("t", {"JUPYTER_CONFIG_PATH": "/etc/mine"})
        >>> env["JUPYTER_TOKEN"], env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[1]
        ('t', '/etc/mine')
    """
    env = dict(os.environ if environ is None else environ)
    env.pop("JUPYTER_TOKEN", None)
    if token is not None:
        env["JUPYTER_TOKEN"] = token
    paths = [str(LAB_CONFIG_DIR)] + [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    return {**env, "JUPYTER_CONFIG_PATH": os.pathsep.join(paths)}


def cmd_lab(args) -> int:
    token = choose_token(args.token, args.no_token)
    cmd = lab_command(args.dir, port=args.port, no_token=token is None, open_browser=args.open)
    if token is None:
        print(no_token_warning(f"127.0.0.1:{args.port}"), file=sys.stderr, flush=True)
    else:  # JupyterLab prints '?token=...' for a token from its environment: the URL to open is printed here
        print(f"lfm lab: open http://127.0.0.1:{args.port}/lab?{urlencode({'token': token})}", flush=True)
    os.execve(cmd[0], cmd, lab_environment(token))  # JupyterLab takes over the process: Ctrl-C stops it as usual


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="JupyterLab on the notebooks, on 127.0.0.1 (offline)")
    p.add_argument("dir", nargs="?", default="notebooks", help="folder to open (default: notebooks)")
    p.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (default 8888)")
    add_token_args(p)
    p.add_argument("--open", action="store_true", help="open a browser tab")
    p.set_defaults(func=cmd_lab)
