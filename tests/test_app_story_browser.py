"""The explorer's first screen in a real headless Chromium: the LA/VA trade-off and the three stages' answers in
the first viewport (1280×800 and 1920×1080), the K slider still in view at the bottom of the page, and the guided
tour stepping through on the organism. Waits on page state, never on time."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from app_support import ROOT, organism_pair
from test_app_browser import browser, serve_explorer, wait_for  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, tuned = organism_pair(tmp_path_factory.mktemp("org"))
    with serve_explorer("--base", str(base), "--tuned", str(tuned), "--per-task", "2", "--no-sweep") as url:
        yield url


@pytest.fixture(scope="module")
def results_server(tmp_path_factory):
    """A results folder of the organism written by `lfm precompute` (one K, M 0 and 0.3, 2 items per task)."""
    base, tuned = organism_pair(tmp_path_factory.mktemp("org"))
    out = tmp_path_factory.mktemp("results") / "r"
    subprocess.run([sys.executable, "-m", "lfm.cli", "precompute", "--base", str(base), "--tuned", str(tuned),
                    "--out", str(out), "--densities", "0.2", "--neurons", "0,0.3", "--per-task", "2", "--quiet"],
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    with serve_explorer("--results", str(out), "--no-sweep") as url:
        yield url


def open_page(browser, url, width, height):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(url)
    page.locator(".lfm-tradeoff .gtitle", has_text="Trade-off").filter(has_text="current").first.wait_for()
    page.locator('.lfm-generations .tabulator-cell[tabulator-field="answers"]').first.wait_for()
    return context, page


def box(page, selector: str) -> dict:
    """The bounding box of the first visible element matching `selector` (a table replaced meanwhile: the next)."""
    found = []
    wait_for(lambda: found.append(page.locator(selector + ":visible").first.bounding_box()) or found[-1] is not None,
             what=selector)
    return found[-1]


def inside(box, height) -> bool:
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


@pytest.mark.parametrize("width,height", [(1280, 800), (1920, 1080)])
def test_trade_off_and_answers_in_the_first_viewport_controls_pinned(browser, server, width, height):
    context, page = open_page(browser, server, width, height)
    try:
        # the first evaluation's answers are in (the stages line says what they are): the layout is final
        page.locator(".lfm-generations p", has_text="restore: Neu-S-TIES K=0.2 M=0.3").first.wait_for()
        plot = box(page, ".lfm-tradeoff .js-plotly-plot")
        assert inside(plot, height), plot
        header = box(page, '.lfm-generations .tabulator-col[tabulator-field="answers"]')
        first_row = box(page, '.lfm-generations .tabulator-cell[tabulator-field="answers"]')
        assert inside(header, height) and first_row["y"] < height - 40, (header, first_row)
        line = page.locator(".lfm-method-line p").first
        assert "keeps its 20 % largest Δ entries" in line.text_content()
        page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        wait_for(lambda: page.evaluate("window.scrollY") > height, what="the page scrolled down")
        k = box(page, '.lfm-sidebar .bk-input-group:has-text("K (density")')
        assert inside(k, height), k
        assert inside(line.bounding_box(), height)  # the method line stays in view too
    except AssertionError:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"first-screen-{width}-failed.png"))
        raise
    finally:
        context.close()


def test_tour_steps_through_on_the_organism(browser, server):
    from lfm.explorer.story import TOUR_STEPS

    context, page = open_page(browser, server, 1280, 800)
    try:
        step = page.locator(".lfm-tour-step p")
        title = page.locator(".lfm-tour .gtitle")
        for i, name in enumerate(TOUR_STEPS):
            if i:
                page.locator(".lfm-tour button", has_text="next").first.click()
            step.filter(has_text=f"step {i + 1} of {len(TOUR_STEPS)}: {name}").wait_for()
            expected = "Correct answers per stage" if name == "answers" else f"{name}: layer 0"
            title.filter(has_text=expected).first.wait_for()
        page.locator(".lfm-tour button", has_text="back").first.click()
        step.filter(has_text=f"step {len(TOUR_STEPS) - 1} of").wait_for()
    finally:
        context.close()


@pytest.mark.parametrize("source", ["server", "results_server"], ids=["live-organism", "results-folder"])
def test_every_answer_row_is_drawn_and_visible_in_the_first_viewport(browser, source, request):
    """Before: a results folder's generations table was not seen in the story-first page (the hostile 100k-row
    test had been weakened to its note). Every item the summary counts is a drawn row, and the first one is
    visible (not hidden, not zero-sized) inside the first viewport at 1280x800."""
    context, page = open_page(browser, request.getfixturevalue(source), 1280, 800)
    try:
        page.locator(".lfm-generations p", has_text="restore: Neu-S-TIES K=0.2 M=0.3").first.wait_for()
        summary = page.locator(".lfm-generations p", has_text=re.compile(r"^\d+ items")).first
        cells = page.locator('.lfm-generations .tabulator-cell[tabulator-field="answers"]')
        seen = {}

        def drawn() -> bool:  # read together: under load the live page may redraw the area between two reads
            found = re.match(r"(\d+) items", summary.text_content() or "")
            seen.update(n=int(found.group(1)) if found else None, rows=cells.count(),
                        box=cells.first.bounding_box() if cells.count() else None)
            return seen["n"] is not None and seen["rows"] == seen["n"] and seen["box"] is not None

        wait_for(drawn, what="every counted item drawn as a row")
        n, first_row = seen["n"], seen["box"]
        assert n > 0 and cells.first.is_visible()
        assert first_row["height"] > 0 and first_row["y"] + 20 < 800, first_row
        assert "restore:" in cells.first.text_content()
    except AssertionError:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"answers-{source}-failed.png"))
        raise
    finally:
        context.close()
