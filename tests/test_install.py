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
CUDA_LOCK = ROOT / "requirements" / "lock-cuda.txt"  # `make install TORCH=cuda`
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
    lock = LOCK if installed["torch"].endswith("+cpu") else CUDA_LOCK
    wanted = {**pins(lock), **pins(NODEPS)}
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


def test_cuda_lock_is_the_cpu_lock_with_pypis_torch():
    """`make lock` writes both locks: the CUDA one has the CPU one's pins, PyPI's torch of the same version, and
    only what that torch pulls in (CUDA libraries) beside them."""
    cpu, cuda = pins(LOCK), pins(CUDA_LOCK)
    assert cuda["torch"] == cpu["torch"].removesuffix("+cpu"), (cpu["torch"], cuda["torch"])
    differ = {n: (cpu[n], cuda[n]) for n in set(cpu) & set(cuda) - {"torch"} if cpu[n] != cuda[n]}
    assert not differ, f"the locks pin these differently (cpu, cuda): {differ}; run `make lock`"
    assert not set(cpu) - set(cuda), f"missing from the CUDA lock: {sorted(set(cpu) - set(cuda))}; run `make lock`"
    cuda_only = sorted(set(cuda) - set(cpu))
    assert cuda_only and all(n.startswith(("nvidia-", "cuda-", "triton")) for n in cuda_only), cuda_only
    assert "make lock TORCH=cuda" in CUDA_LOCK.read_text().split("\n", 3)[1]


def make_install_commands(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """What `make install` would run for a fresh venv in tmp_path (make -n: nothing runs)."""
    return subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}", *args], cwd=ROOT,
                          capture_output=True, text=True)


def lock_install_line(out: str) -> str:
    return next(line for line in out.splitlines() if "--require-hashes" in line and "no-deps.txt" not in line)


def test_make_install_finds_torch_in_the_wheel_dir_else_on_the_cpu_index_or_pypi_for_cuda(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()  # what `make` looks for
    local = lock_install_line(make_install_commands(tmp_path, f"TORCH_WHEEL_DIR={wheels}").stdout)
    assert f"--find-links {wheels} -r requirements/lock.txt" in local, local
    index = lock_install_line(make_install_commands(tmp_path, f"TORCH_WHEEL_DIR={tmp_path / 'none'}").stdout)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu -r requirements/lock.txt" in index, index
    cuda = lock_install_line(make_install_commands(tmp_path, "TORCH=cuda", f"TORCH_WHEEL_DIR={wheels}").stdout)
    assert "-r requirements/lock-cuda.txt" in cuda and "--find-links" not in cuda and "--extra-index-url" not in cuda, cuda
    wrong = make_install_commands(tmp_path, "TORCH=rocm")
    assert wrong.returncode == 2 and "TORCH=rocm: choose TORCH=cpu or TORCH=cuda" in wrong.stderr, wrong.stderr


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
