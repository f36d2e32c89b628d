"""`lfm lab`: JupyterLab on the notebooks, bound to 127.0.0.1 and offline (what `make lab` runs).

    lfm lab [DIR] [--port 8888] [--token TOKEN] [--open]

JupyterLab ships its JavaScript and the lab extensions lfm's notebooks use (ipywidgets, plotly,
anywidget, Panel's comms) inside their wheels, so nothing is fetched when the page loads. The news feed
the update check and the extension manager's PyPI search, the things JupyterLab itself would ask the internet
for, are switched off, and so is the "get notified about official Jupyter news?" prompt: lfm's default
settings (lfm/data/lab/labconfig/default_setting_overrides.json, through `lab_env`) answer it with "no" and
turn the update check off. They are defaults: a user's own JupyterLab settings still win.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lfm.package_data import LAB_CONFIG_DIR


def lab_command(notebook_dir: str | os.PathLike, *, port: int = 8888, token: str | None = None,
                open_browser: bool = False) -> list[str]:
    """The JupyterLab command line for `notebook_dir` (a list for subprocess / exec).

    token: the login token (default: JupyterLab makes one and prints the URL with it).

    Example:
        >>> cmd = lab_command("notebooks", port=8899)
        >>> cmd[1:3], "--ServerApp.ip=127.0.0.1" in cmd
        (['-m', 'jupyterlab'], True)
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
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def lab_env(environ=None) -> dict[str, str]:
    """The environment to run `lab_command` in: `environ` (default: this process's) with lfm's Jupyter config
    directory first on JUPYTER_CONFIG_PATH, where JupyterLab reads default settings
    (labconfig/default_setting_overrides.json: no news prompt, no update check).

    Example:
        >>> lab_env({"JUPYTER_CONFIG_PATH": "/etc/mine"})["JUPYTER_CONFIG_PATH"].split(os.pathsep)[1]
        '/etc/mine'
    """
    environ = dict(os.environ if environ is None else environ)
    paths = [str(LAB_CONFIG_DIR)] + [p for p in environ.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    return {**environ, "JUPYTER_CONFIG_PATH": os.pathsep.join(paths)}


def cmd_lab(args) -> int:
    cmd = lab_command(args.dir, port=args.port, token=args.token, open_browser=args.open)
    os.execve(cmd[0], cmd, lab_env())  # JupyterLab takes over the process: Ctrl-C stops it as usual


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="JupyterLab on the notebooks, on 127.0.0.1 (offline)")
    p.add_argument("dir", nargs="?", default="notebooks", help="folder to open (default: notebooks)")
    p.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (default 8888)")
    p.add_argument("--token", help="login token (default: JupyterLab makes one and prints the URL)")
    p.add_argument("--open", action="store_true", help="open a browser tab")
    p.set_defaults(func=cmd_lab)
