"""Shared by the explorer tests: an evaluable organism pair (the shipped one, or a few-step one trained
into a temporary folder when lfm/data/organism has no checkpoints yet)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lfm.package_data import ORGANISM_DIR as SHIPPED

ROOT = Path(__file__).resolve().parents[1]


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
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
