"""JupyterLab as `make lab` serves it (`lfm lab`), driven in a real headless Chromium.

The committed notebook 02, opened, must show its committed figures without running. A copy of it (outputs
cleared, the smaller sweeps of tests/test_notebooks.py injected after its parameters cell, as papermill
would) is opened in JupyterLab, run with "Run All Cells", and must show a rendered plotly figure and a live
ipywidgets slider whose value moves under the keyboard, with no request leaving 127.0.0.1 and no "official
Jupyter news?" prompt (the settings `lfm lab` serves say no to it). The copies live in a temporary folder so
JupyterLab's autosave never touches notebooks/.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import nbformat
import pytest

from app_support import ROOT, free_port, local_server
from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, wait_for
from test_notebooks import PARAMS, nbexec

pytestmark = pytest.mark.browser
NOTEBOOK = "02_merge_tradeoffs.ipynb"
PLOTLY = nbexec.PLOTLY


COMMITTED = "committed-" + NOTEBOOK  # the committed notebook as it is, outputs included


def notebook_copy(folder: Path) -> Path:
    """The committed notebook as COMMITTED, and a copy to run as NOTEBOOK: outputs cleared (so the run test
    sees only what this run draws), the smaller sweeps injected."""
    nb = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    nbformat.write(nb, folder / COMMITTED)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = "\n".join(f"{k} = {v!r}" for k, v in PARAMS[NOTEBOOK].items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]}))
    out = folder / NOTEBOOK
    nbformat.write(nb, out)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    from lfm.lab import lab_command, lab_environment

    folder = tmp_path_factory.mktemp("lab")
    notebook_copy(folder)
    # render every cell (JupyterLab 4 draws only the visible ones by default), so the test can read all prompts
    tracker = folder / ".lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    port, token = free_port(), secrets.token_hex(16)
    ARTIFACTS.mkdir(exist_ok=True)
    env = lab_environment(token, {**os.environ, "HF_HUB_OFFLINE": "1",
                                  "JUPYTER_CONFIG_DIR": str(folder / ".jupyter-config"),
                                  "JUPYTERLAB_SETTINGS_DIR": str(folder / ".lab-settings"),
                                  "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".lab-workspaces")})  # as `lfm lab` runs it
    with local_server(lab_command(folder, port=port), f"http://127.0.0.1:{port}/api/status?token={token}",
                      ARTIFACTS / "jupyter-lab.log", env=env, cwd=folder, timeout=90):
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"


NEWS_PROMPT = "Would you like to get notified about official Jupyter news?"  # JupyterLab 4's startup toast


def test_lfm_lab_serves_settings_without_news_prompt_or_update_check(tmp_path):
    """`lfm lab` (the command itself, a real subprocess) serves the notification plugin's settings with news
    fetching "false" (Never; "none" would ask with a toast) and the update check off."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter-config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / ".lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / ".lab-workspaces")}
    ARTIFACTS.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "lfm.cli", "lab", str(tmp_path), "--port", str(port), "--token", token]
    with local_server(cmd, f"http://127.0.0.1:{port}/api/status?token={token}", ARTIFACTS / "lfm-lab.log",
                      env=env, cwd=tmp_path, timeout=90):
        url = f"http://127.0.0.1:{port}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}"
        with urlopen(url, timeout=30) as r:
            settings = json.load(r)
    defaults = {k: v.get("default") for k, v in settings["schema"]["properties"].items()}
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults


def test_lab_opens_committed_notebook_02_with_its_figures_drawn(lab):
    """The committed notebook, opened and not run: its figures (plotly JSON outputs) are drawn and its printed
    numbers are there (a separate workspace, so the run test's page does not hold this notebook)."""
    from playwright.sync_api import sync_playwright

    committed = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    n_figures = sum(1 for c in committed.cells for o in c.get("outputs", []) if PLOTLY in o.get("data", {}))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(lab.replace(f"/lab/tree/{NOTEBOOK}", f"/lab/workspaces/committed/tree/{COMMITTED}"))
            page.locator(".jp-Notebook").first.wait_for(state="visible")
            plots = page.locator(".js-plotly-plot .main-svg")
            wait_for(lambda: plots.count() >= n_figures, timeout=60, what=f"{n_figures} committed figures drawn")
            assert page.locator(".js-plotly-plot .scatterlayer .point").count() > 0, "plotly drew no points"
            assert page.get_by_text("CHECK passed: hard-merge has the lowest VA").count() == 1
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-02-committed.png"), full_page=False)
        finally:
            browser.close()


def test_lab_runs_notebook_02_with_plotly_and_live_slider(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            hosts = []
            page.on("request", lambda r: hosts.append(urlparse(r.url)))
            page.goto(lab)
            page.locator(".jp-Notebook").first.wait_for(state="visible")
            page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(state="visible")  # kernel up

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                  has_text="Traceback")
            def finished() -> bool:
                if errors.count():
                    raise AssertionError(f"a cell failed: {errors.first.inner_text()[-2000:]}")
                prompts = page.locator(".jp-InputArea-prompt").all_text_contents()
                code = [t.strip() for t in prompts if t.strip()]  # markdown cells have an empty prompt
                return bool(code) and all(t not in ("[*]:", "[ ]:") for t in code)
            wait_for(finished, timeout=600, what="every cell of notebook 02 to run")

            plots = page.locator(".js-plotly-plot .main-svg")
            assert plots.count() >= 3, f"{plots.count()} plotly figures rendered"
            assert page.locator(".js-plotly-plot .scatterlayer .point").count() > 0, "plotly drew no points"

            slider = page.locator(".widget-slider", has_text="K").first
            slider.scroll_into_view_if_needed()
            readout = slider.locator(".widget-readout")
            before = readout.inner_text()
            slider.locator(".noUi-handle").first.focus()
            slider.locator(".noUi-handle").first.press("ArrowRight")
            wait_for(lambda: readout.inner_text() != before, timeout=30, what="the K slider to move")
            assert float(readout.inner_text()) > float(before)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-02.png"), full_page=False)
            # JupyterLab asks at start-up (a toast) unless its settings answer; minutes have passed by now
            assert page.get_by_text(NEWS_PROMPT).count() == 0, "JupyterLab's news prompt is showing"
        finally:
            browser.close()

    outside = {u.netloc for u in hosts if u.scheme in ("http", "https", "ws", "wss") and u.hostname != "127.0.0.1"}
    assert not outside, f"requests left 127.0.0.1: {outside}"


def test_make_lab_runs_lfm_lab_on_notebooks():
    """`make lab` is `lfm lab notebooks` on 127.0.0.1 (what the test above serves)."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed-cpu", "lab"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "lfm lab notebooks --port" in out, out
