"""benchmarks/explorer_latency.py runs on the real pair (the 'smoke' build, tests/conftest.py `smoke_pair`, found
by `--realpair ROOT --preset smoke` as `lfm realpair build` laid it out) at a tiny size: a real server, a real
headless Chromium, the pair's suite. The timings themselves are the benchmark's (benchmarks/), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app_support import ROOT

pytestmark = pytest.mark.browser
BENCH = ROOT / "benchmarks" / "explorer_latency.py"


def test_latency_benchmark_runs_on_the_smoke_real_pair(smoke_pair, tmp_path):
    from lfm.realpair.study import pair_paths
    from test_app_browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    root, _ = smoke_pair
    out = tmp_path / "latency.json"
    # 3 items per task: a move's numbers arrive from the first 2, then from all 3
    run = subprocess.run([sys.executable, str(BENCH), "--realpair", str(root), "--preset", "smoke", "--moves", "1",
                          "--burst", "2", "--per-task", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    paths = pair_paths(root, 0, "smoke")
    assert (result["base"], result["tuned"], result["suite"]) == tuple(str(paths[k]) for k in ("base", "tuned",
                                                                                                 "suite"))
    assert len(result["one_evaluation_s"]) == 3 and result["one_evaluation_median_s"] > 0
    assert len(result["first_la_va_s"]) == len(result["la_va_s"]) == 1 and result["burst_s"] > 0
    assert 0 < result["first_la_va_s"][0] <= result["la_va_s"][0]
    assert result["la_va_over_one_evaluation"] == pytest.approx(result["la_va_median_s"]
                                                                / result["one_evaluation_median_s"])


@pytest.mark.parametrize("args, says", [
    (["--realpair", "/nonexistent/realpair"], "is not a finished build"),
    (["--base", "/tmp"], "go together"),
    (["--moves", "0"], "at least 1"),
])
def test_latency_benchmark_refuses_bad_input_in_one_line(args, says):
    run = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and says in lines[0], (run.returncode, run.stderr)
