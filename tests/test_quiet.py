"""`lfm eval` and `lfm sweep` as a user runs them: no harness noise meant for other CLIs, no nested-bar debris.

Each run is a real `lfm` subprocess on the shipped organism, in a directory that is not a git repository
(where both harnesses used to print git's "fatal: not a git repository").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lfm.evaluate.quiet import HARMLESS

ROOT = Path(__file__).resolve().parents[1]
ORGANISM = ROOT / "lfm" / "data" / "organism"
LFM = [sys.executable, "-c", "import sys; from lfm.cli import main; sys.exit(main())"]
NOISE = ["fatal: not a git repository", *[m for messages in HARMLESS.values() for m in messages]]


def run_lfm(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GIT_CEILING_DIRECTORIES": str(cwd.parent)}
    return subprocess.run(LFM + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_lfm_eval_prints_results_without_harness_noise(tmp_path):
    out = tmp_path / "res.json"
    proc = run_lfm(["eval", str(ORGANISM / "tuned"), "--suite", "organism", "--limit", "4", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [n for n in NOISE if n in proc.stderr]
    assert not noise, f"lfm eval printed {noise}"
    res = json.loads(out.read_text())
    assert 0 <= res["LA"] <= 1 and 0 <= res["VA"] <= 1 and abs(res["OA"] - (res["LA"] + res["VA"]) / 2) < 1e-9


def test_lfm_sweep_draws_one_bar_and_logs_the_harness_bars(tmp_path):
    out = tmp_path / "sweep"
    proc = run_lfm(["sweep", "--base", str(ORGANISM / "base"), "--tuned", str(ORGANISM / "tuned"), "--method", "ties",
                    "--density", "0.5", "--suite", "organism", "--limit", "2", "--no-references", "--out", str(out)],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b[A" not in proc.stderr, "nested progress bars left cursor-up codes in the output"
    assert [n for n in NOISE if n in proc.stderr] == []
    assert "sweep" in proc.stderr  # lfm's own bar is still there
    assert "Running generate_until requests" in (out / "harness.log").read_text()
