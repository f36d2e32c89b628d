"""The install holds: .venv is exactly the lock, `pip check` is clean but for lmms-eval's documented
--no-deps exclusions, and every optional path lfm offers imports (and works) here.

These fail with a named test when a dependency changes under us, instead of in a user's sweep.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
NODEPS = ROOT / "requirements" / "no-deps.txt"
# installed by the Makefile's own steps, not from the lock: the installer, lfm itself
INSTALLER = {"pip", "lfm"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {normalize(n): v for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==([^\s\\;]+)", path.read_text(), re.M)}


def not_installed_on_purpose() -> set[str]:
    lines = [line.split(":", 1)[1] for line in NODEPS.read_text().splitlines() if line.startswith("# not-installed:")]
    return {normalize(n) for line in lines for n in line.split()}


def test_venv_is_exactly_the_lock():
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not running in the project's .venv ({sys.prefix}); `make test` runs there")
    installed = {normalize(d.metadata["Name"]): d.version for d in distributions()}
    wanted = {**pins(LOCK), **pins(NODEPS)}
    extra = sorted(set(installed) - set(wanted) - INSTALLER)
    missing = sorted(set(wanted) - set(installed))
    differ = {n: (wanted[n], installed[n]) for n in set(wanted) & set(installed) if wanted[n] != installed[n]}
    assert not extra, f"installed but not in the lock: {extra}; add them to pyproject/requirements/extra.in and run `make lock`"
    assert not missing, f"in the lock but not installed: {missing}; run `make install`"
    assert not differ, f"installed versions differ from the lock (lock, installed): {differ}; run `make install`"


def test_pip_check_reports_only_lmms_evals_documented_exclusions():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    expected = not_installed_on_purpose()
    reported, other = set(), []
    for line in out.splitlines():
        m = re.fullmatch(r"lmms-eval [\d.]+ requires ([A-Za-z0-9_.\-]+), which is not installed\.", line.strip())
        if m:
            reported.add(normalize(m.group(1)))
        elif line.strip() and line.strip() != "No broken requirements found.":
            other.append(line)
    assert not other, f"pip check found problems beyond lmms-eval's --no-deps exclusions: {other}"
    assert reported == expected, (f"lmms-eval's missing requirements changed: newly missing {sorted(reported - expected)}, "
                                  f"no longer missing {sorted(expected - reported)}; update requirements/no-deps.txt")


def test_lock_pins_cpu_torch_and_filelock_3():
    lock = pins(LOCK)
    assert lock["torch"].endswith("+cpu"), lock["torch"]
    assert int(lock["filelock"].split(".")[0]) < 4, "lmms-eval imports filelock._api, removed in filelock 4"
    assert not [n for n in lock if n.startswith(("nvidia-", "triton"))], "a CUDA build slipped into the lock"
    assert "lmms-eval" not in lock, "lmms-eval belongs in requirements/no-deps.txt (installed --no-deps)"


def test_lmms_eval_evaluator_imports():
    from lmms_eval import evaluator
    from lmms_eval.api.model import lmms  # noqa: F401  (the base class of lfm's LLaVA adapter)
    from lmms_eval.tasks import TaskManager  # noqa: F401

    assert callable(evaluator.simple_evaluate)


def test_lm_eval_imports():
    import lm_eval
    from lm_eval.models.huggingface import HFLM  # noqa: F401
    from lm_eval.tasks import TaskManager  # noqa: F401

    assert callable(lm_eval.simple_evaluate)


def test_ray_imports():
    import ray
    from ray.util import ActorPool  # noqa: F401

    assert callable(ray.init)


def test_panel_and_plotly_import():
    import panel as pn
    import plotly.graph_objects as go

    assert pn.__version__.startswith("1.9"), "Panel 1.10 needs Python 3.12; the lock holds 1.9.x"
    assert go.Figure().to_dict()["data"] == []


def test_kaleido_exports_a_png_with_the_system_chromium(monkeypatch):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    import plotly.graph_objects as go

    monkeypatch.setenv("BROWSER_PATH", str(chromium))
    png = go.Figure(go.Scatter(x=[0, 1], y=[1, 0])).to_image(format="png", width=200, height=120)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_jupyterlab_and_widgets_import():
    import anywidget  # noqa: F401  (plotly 7's FigureWidget)
    import ipywidgets
    import jupyterlab

    assert int(jupyterlab.__version__.split(".")[0]) >= 4
    assert ipywidgets.FloatSlider(value=0.2).value == 0.2
    labext = Path(sys.prefix) / "share" / "jupyter" / "labextensions"
    for ext in ("jupyterlab-plotly", "@jupyter-widgets", "anywidget", "@pyviz"):
        assert (labext / ext).is_dir(), f"JupyterLab extension {ext} missing from {labext}"


def test_environment_yml_installs_the_lock_with_the_makefiles_pip():
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_version = re.search(r"^PIP_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"pip={pip_version}" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == ["-r requirements/lock.txt"]
