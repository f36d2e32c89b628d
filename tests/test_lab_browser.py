"""JupyterLab as `make lab` serves it (`lfm lab`), driven in a real headless Chromium.

A copy of notebook 02 (with the smaller sweeps of tests/test_notebooks.py injected after its parameters
cell, as papermill would) is opened in JupyterLab, run with "Run All Cells", and must show a rendered
plotly figure and a live ipywidgets slider whose value moves under the keyboard, with no request leaving
127.0.0.1 and no "official Jupyter news?" prompt (the settings `lfm lab` serves say no to it). The copy lives in a temporary folder so JupyterLab's autosave never touches notebooks/.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import nbformat
import pytest

from app_support import ROOT, local_server
from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, free_port, wait_for
from test_notebooks import PARAMS

pytestmark = pytest.mark.browser
NOTEBOOK = "02_merge_tradeoffs.ipynb"


def notebook_copy(folder: Path) -> Path:
    nb = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
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
    from lfm.lab import lab_command, lab_env

    folder = tmp_path_factory.mktemp("lab")
    notebook_copy(folder)
    # render every cell (JupyterLab 4 draws only the visible ones by default), so the test can read all prompts
    tracker = folder / ".lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    port, token = free_port(), secrets.token_hex(16)
    ARTIFACTS.mkdir(exist_ok=True)
    env = lab_env({**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(folder / ".jupyter-config"),
                   "JUPYTERLAB_SETTINGS_DIR": str(folder / ".lab-settings"),
                   "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".lab-workspaces")})  # as `lfm lab` runs it
    with local_server(lab_command(folder, port=port, token=token), f"http://127.0.0.1:{port}/api/status?token={token}",
                      ARTIFACTS / "jupyter-lab.log", env=env, cwd=folder, timeout=90):
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"


NEWS_PROMPT = "Would you like to get notified about official Jupyter news?"  # JupyterLab 4's startup toast


def test_lab_serves_settings_without_news_prompt_or_update_check(lab):
    """The notification plugin's settings, as the server hands them to the page: news fetching is "false"
    (Never; "none" would ask with a toast) and the update check is off."""
    root, query = lab.split("/lab/tree/")[0], lab.split("?")[1]
    with urlopen(f"{root}/lab/api/settings/@jupyterlab/apputils-extension:notification?{query}", timeout=30) as r:
        settings = json.load(r)
    defaults = {k: v.get("default") for k, v in settings["schema"]["properties"].items()}
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults


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
