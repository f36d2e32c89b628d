"""Log axes carry decade labels only (1, 10, 10², ...; never plotly's "2, 5" between decades), as plotly.js
draws them in a real headless Chromium: every log-axis figure of the committed notebooks (01's rank plots,
02's rank curve) and the explorer's rank curve built now (lfm.explorer.figures.rank_curve, which 02 shows).

A control figure, the same rank curve with plotly's default log ticks, must show a label between decades,
so the check can tell the two apart.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
import torch

from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from test_notebooks import NB_DIR, NOTEBOOKS, nbexec

pytestmark = pytest.mark.browser
AXES = ("xaxis", "yaxis")
DECADE = re.compile(r"^(?:1|10|10-?\d+|0\.0*1|10+)$")  # "10\u200b−2\u200b" once cleaned: "10-2"


def is_log_figure(fig: dict) -> bool:
    """Every x/y axis of `fig` is a log axis (the figures this test reads all ticks of)."""
    axes = [v for k, v in fig["layout"].items() if k.startswith(AXES)]
    return bool(axes) and all(a.get("type") == "log" for a in axes)


def committed_log_figures() -> dict[str, dict]:
    found = {}
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                fig = output.get("data", {}).get(nbexec.PLOTLY)
                if fig and any(v.get("type") == "log" for k, v in fig["layout"].items() if k.startswith(AXES)):
                    assert is_log_figure(fig), f"{name} cell {i}: a figure mixing log and linear axes"
                    found[f"{name} cell {i}"] = fig
    return found


def rank_curve_now() -> dict:
    from lfm.explorer.analysis import tensor_view
    from lfm.explorer.figures import rank_curve
    from lfm.methods import Recipe

    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(256, 64, generator=gen) * torch.rand(256, 1, generator=gen) ** 4  # a heavy tail of rows
    recipe = Recipe.from_name("neu-s-ties", density=0.2, neurons=0.3)
    return rank_curve(tensor_view("model.layers.0.mlp.up_proj.weight", delta, recipe), "up_proj", 0,
                      recipe.label).to_plotly_json()


def plotly_default_ticks(fig: dict) -> dict:
    control = copy.deepcopy(fig)
    for axis in AXES:
        control["layout"][axis] = {"type": "log"}
    return control


def tick_labels(figures: dict[str, dict], page_file: Path) -> dict[str, dict[str, list[str]]]:
    """{figure: {"x": its x tick labels, "y": its y tick labels}} as Chromium renders the figures with plotly.js (plotly's bundled copy)."""
    import plotly.io as pio
    from playwright.sync_api import sync_playwright

    parts = [f"<div id='fig-{i}'>{pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), validate=False)}</div>"
             for i, fig in enumerate(figures.values())]
    page_file.write_text("<html><body>" + "".join(parts) + "</body></html>")
    labels = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_file.as_uri())
            for i, key in enumerate(figures):
                labels[key] = {}
                for axis in "xy":
                    ticks = page.locator(f"#fig-{i} g.{axis}tick text")
                    ticks.first.wait_for(state="attached", timeout=30_000)
                    labels[key][axis] = [t.replace("\u200b", "").replace("\u2212", "-")
                                         for t in ticks.all_text_contents()]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "log-axes.png"), full_page=True)
        finally:
            browser.close()
    return labels


def test_log_axes_show_decade_labels_only(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    figures = committed_log_figures()
    assert any(k.startswith("01_") for k in figures) and any(k.startswith("02_") for k in figures), list(figures)
    figures["explorer rank_curve"] = rank_curve_now()
    figures["control: plotly's default log ticks"] = plotly_default_ticks(figures["explorer rank_curve"])
    labels = tick_labels(figures, tmp_path / "log-axes.html")

    control = labels.pop("control: plotly's default log ticks")
    assert any(not DECADE.match(t) for texts in control.values() for t in texts), f"control shows decades only: {control}"
    for key, axes in labels.items():
        for axis, texts in axes.items():
            assert len(set(texts)) >= 2, f"{key}: {axis} axis labels {texts}: fewer than two decades"
            between = [t for t in texts if not DECADE.match(t)]
            assert not between, f"{key}: {axis} axis labels between decades {between} (all: {texts})"
