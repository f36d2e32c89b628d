"""Shared by the explorer tests: an evaluable organism pair (the shipped one, or a few-step one trained
into a temporary folder when lfm/data/organism has no checkpoints yet), and the served explorer behind its token.

A test opens a page with the URL `explorer_server` yields (`http://127.0.0.1:PORT/explorer?token=T`): the server
answers with its cookie (`lfm-explorer-PORT`) and a redirect to the URL without the token, so `page.url` has
none; to open such a URL in a fresh browser context, `with_token(page.url, token_of(url))`."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lfm.package_data import ORGANISM_DIR as SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` and wait for it (killed when it does not end within 15 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def organism_pair(tmp_root: Path) -> tuple[Path, Path]:
    """(base, tuned) of an organism that `lfm.organism.evaluate` can score."""
    if (SHIPPED / "base" / "config.json").exists() and (SHIPPED / "tuned" / "config.json").exists():
        return SHIPPED / "base", SHIPPED / "tuned"
    out = tmp_root / "organism"
    if not (out / "tuned" / "config.json").exists():
        subprocess.run([sys.executable, "-m", "lfm.cli", "organism", "train", "--out", str(out), "--steps", "3",
                        "--tune-steps", "3"], check=True, capture_output=True, timeout=300)
    return out / "base", out / "tuned"


@contextlib.contextmanager
def local_server(cmd: list[str], probe_url: str, log_path: Path, *, env: dict, cwd: Path, timeout: float = 60):
    """Run a server command (output to `log_path`) until `probe_url` answers; yield; always stop it
    (terminate, then kill), so pytest never hangs on it."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    name = " ".join(Path(c).name for c in cmd[:3])  # "panel serve explorer.py", "python -m jupyterlab"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
            try:
                urllib.request.urlopen(probe_url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{name} did not answer {probe_url} within {timeout:.0f} s; see {log_path}")
                time.sleep(0.3)
        yield proc
    finally:
        stop(proc)
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_token(url: str, token: str) -> str:
    """`url` with ?token=TOKEN (replacing any token it has, keeping its other settings)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "token"] + [("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["token"]


@contextlib.contextmanager
def explorer_server(*app_args: str, log_dir: Path, timeout: float = 60):
    """`python apps/explorer.py APP_ARGS` on a free 127.0.0.1 port, behind a fresh token (given in $LFM_TOKEN, as a
    user may); yields the page URL with the token. Probes a static file: a probe of the page would need the token,
    and each session it made would load a pair and evaluate beside the test's page."""
    port, token = free_port(), secrets.token_urlsafe(16)
    cmd = [sys.executable, str(ROOT / "apps" / "explorer.py"), "--port", str(port), *app_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LFM_TOKEN": token}
    with local_server(cmd, f"http://127.0.0.1:{port}/static/js/bokeh.min.js", log_dir / f"explorer-{port}.log",
                      env=env, cwd=ROOT, timeout=timeout):
        yield with_token(f"http://127.0.0.1:{port}/explorer", token)


def wait_settled(state, label: str, timeout: float = 180) -> None:
    """Wait until a served-like ExplorerState (worker threads) shows `label`'s numbers on all its items, with
    nothing pending (numbers or stage answers)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        c = state.current
        if c is not None and c["label"] == label and "first_of" not in c and not state.pending \
                and not state.answers_pending:
            return
        time.sleep(0.05)
    raise AssertionError(f"{label} never settled: {state.error or state.eval_status}")
