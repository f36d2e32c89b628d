"""The explorer in a real headless Chromium (Debian `chromium` + Playwright), served by `python apps/explorer.py`.

The server fixture starts it on a free 127.0.0.1 port behind a token (app_support.explorer_server: pages open
the URL with the token) and always stops it (terminate, then kill, in `finally`), so pytest never hangs on it.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from playwright.sync_api import Error as PlaywrightError

from app_support import ROOT, explorer_server, organism_pair, token_of, with_token

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    return organism_pair(tmp_path_factory.mktemp("org"))


@contextlib.contextmanager
def serve_explorer(*app_args: str):
    """The explorer (`python apps/explorer.py APP_ARGS`, behind its token) on a free 127.0.0.1 port; yields the
    page URL with the token, always stops."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with explorer_server(*app_args, log_dir=ARTIFACTS) as url:
        yield url


@pytest.fixture(scope="module")
def server(organism):
    with serve_explorer("--base", str(organism[0]), "--tuned", str(organism[1]), "--per-task", "2",
                        "--no-sweep") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the explorer, recording console errors and every request's host."""
    context = browser.new_context(viewport={"width": 1500, "height": 1900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.errors, page.hosts = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.hosts.append(urlparse(r.url)))
    page.goto(server)
    curve_title(page, "K=0.2")  # the organism is loaded and drawn
    try:
        yield page
    finally:
        context.close()


def curve_title(page, contains: str) -> str:
    title = page.locator(".gtitle", has_text="sorted C(i)").filter(has_text=contains)
    title.first.wait_for(state="visible", timeout=60_000)
    return title.first.text_content()


def cells(page, field: str) -> list[str]:
    return page.locator(f'.tabulator-cell[tabulator-field="{field}"]').all_text_contents()


def stage_answers(page, stage: str) -> list[str]:
    """The generated answers of one stage, read from the table's stacked 'answers' column."""
    texts = page.locator(f'.tabulator-cell[tabulator-field="answers"] .lfm-{stage}').all_text_contents()
    return [t.split(": ", 1)[1].rsplit(" (", 1)[0] for t in texts]


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_loads_offline_slider_updates_plots_and_table(page, organism):
    # the module's first page also waits for the server's first imports and evaluations: on a shared
    # 2-core machine (another test run beside it) that took over 60 s once; latency lives in benchmarks/
    wait_for(lambda: len(stage_answers(page, "suppress")) > 0, timeout=180.0, what="the generations table")
    suppress_before = stage_answers(page, "suppress")
    stages_before = page.locator("text=suppress:").first.text_content()
    trade_title = page.locator(".gtitle", has_text="Trade-off").first.text_content()
    page.screenshot(path=str(ARTIFACTS / "explorer-initial.png"), full_page=True)

    handle = page.locator(".bk-input-group", has_text="K (density").locator(".noUi-handle").first
    handle.focus()
    handle.press("End")  # K -> 1.0
    title = curve_title(page, "K=1 ")
    assert "Neu-S-TIES K=1 M=0.3" in title
    wait_for(lambda: page.locator(".gtitle", has_text="Trade-off").first.text_content() != trade_title,
             what="the trade-off title")
    wait_for(lambda: page.locator("text=suppress:").first.text_content() != stages_before, what="stage labels")

    # the suppress column shows what the organism answers at K=1 (the tuned model's LM, all of Δ kept)
    from lfm.explorer.compute import organism_items
    from lfm.explorer.live import LivePair
    from lfm.methods import Recipe
    live = LivePair(*organism)
    expected = [a["generated"] for a in live.evaluate(Recipe(density=1.0, neurons=0.0), organism_items(2))["answers"]]
    try:
        wait_for(lambda: stage_answers(page, "suppress") == expected, what="the suppress answers at K=1")
    except AssertionError:
        raise AssertionError(f"{stage_answers(page, 'suppress')} != {expected}")
    if expected != suppress_before:
        assert stage_answers(page, "suppress") != suppress_before
    page.screenshot(path=str(ARTIFACTS / "explorer-after-slider.png"), full_page=True)

    assert page.errors == [], page.errors
    outside = {u.netloc for u in page.hosts if u.scheme in ("http", "https", "ws", "wss")
               and u.hostname != "127.0.0.1"}
    assert not outside, f"requests left 127.0.0.1: {outside}"


def test_bad_path_shows_error_and_app_stays_usable(page):
    page.get_by_role("button", name="pair", exact=True).click()
    page.get_by_placeholder("/path/to/base").fill("/definitely/not/a/checkpoint")
    page.get_by_placeholder("/path/to/base").press("Enter")
    page.get_by_placeholder("/path/to/tuned").fill(str(ROOT))
    page.get_by_placeholder("/path/to/tuned").press("Enter")
    page.get_by_role("button", name="Load", exact=True).click()
    alert = page.locator(".alert-danger").get_by_text("could not load")
    alert.first.wait_for(state="visible", timeout=30_000)
    assert "not a directory" in alert.first.text_content()
    handle = page.locator(".bk-input-group", has_text="M (neurons").locator(".noUi-handle").first
    handle.focus()
    handle.press("Home")  # M -> 0: the suppress-only stage, the page still responds
    assert "M=0" in curve_title(page, "M=0")
    page.screenshot(path=str(ARTIFACTS / "explorer-error.png"), full_page=True)
    assert [e for e in page.errors if "could not load" not in e] == []


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    """A random bf16 Llama base and a LLaVA tuned from it: 103M language-model parameters (no processor, so
    the page explores it without evaluation)."""
    from fixtures import build_base, build_tuned

    root = tmp_path_factory.mktemp("big")
    size = dict(hidden_size=1024, num_hidden_layers=8, intermediate_size=2816, vocab=8000, dtype=torch.bfloat16)
    base = build_base(root / "base", **size)
    return base, build_tuned(root / "tuned", base)


def test_a_100m_parameter_pair_opens_live_and_a_slider_moves(browser, big_pair):
    """No results folder and no parameter cap: the pair is held in memory and the K slider redraws its plots."""
    from lfm.pair import open_pair

    pair = open_pair(*big_pair)
    n_params = sum(torch.Size(pair.tuned.meta(e.tuned_key)[0]).numel() for e in pair.entries)
    assert n_params >= 100_000_000, n_params
    with serve_explorer("--base", str(big_pair[0]), "--tuned", str(big_pair[1]), "--no-sweep") as url:
        context = browser.new_context(viewport={"width": 1500, "height": 1900})
        page = context.new_page()
        page.set_default_timeout(120_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url)
            assert "Neu-S-TIES K=0.2 M=0.3" in curve_title(page, "K=0.2")
            page.locator("text=evaluation off").first.wait_for(state="visible")
            handle = page.locator(".bk-input-group", has_text="K (density").locator(".noUi-handle").first
            handle.focus()
            handle.press("End")  # K -> 1.0
            assert "Neu-S-TIES K=1 M=0.3" in curve_title(page, "K=1 ")
            merge_title = page.locator(".gtitle", has_text="Merge outcome").first
            wait_for(lambda: "K=1 " in (merge_title.text_content() or ""), what="the merge outcome at K=1")
            page.screenshot(path=str(ARTIFACTS / "explorer-100m-live.png"), full_page=True)
        finally:
            context.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------- readable, truthful

def page_script(name: str) -> str:
    """tests/browser/<name> without its leading comment lines: the function `page.evaluate` runs."""
    lines = (ROOT / "tests" / "browser" / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("//"))


OVERFLOW_JS = page_script("overflow.js")
TABLES_JS = page_script("tables.js")
TITLE_NUMBERS = re.compile(r"current (.+?): LA ([0-9.]+) VA ([0-9.]+)")


def open_page(browser, url, width, height=1000):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    curve_title(page, "sorted C(i)")
    # the first page of a module opens and evaluates the organism cold: minutes on a loaded 2-core machine
    try:
        wait_for(lambda: len(stage_answers(page, "restore")) > 0, timeout=180, what="the generations table")
    except AssertionError as e:
        page.screenshot(path=str(ARTIFACTS / "open-page-timeout.png"), full_page=True)
        raise AssertionError(f"{e}; the page shows {page_summary(page)}") from None
    return context, page


def page_summary(page) -> dict:
    """What a failing wait saw: the figure titles, alerts, the lines about pins, the tables (`TABLES_JS`) and
    the console errors."""
    return {"titles": page.locator(".gtitle").all_text_contents(),
            "alerts": [a for a in page.locator(".alert").all_text_contents() if a.strip()],
            "pins": page.locator("p", has_text="pin").all_text_contents(),
            "tables": page.evaluate(TABLES_JS), "errors": getattr(page, "errors", [])}


def shown_label(page) -> str | None:
    """The label whose numbers the trade-off title shows now (None while it shows none); one read of the title."""
    numbers = TITLE_NUMBERS.search(page.locator(".gtitle", has_text="Trade-off").first.text_content() or "")
    return numbers.group(1) if numbers else None


def layout_problems(page) -> list:
    result = page.evaluate(OVERFLOW_JS)
    problems = list(result["bad"])
    if result["scrollWidth"] > result["W"]:
        problems.append(["page scrolls sideways", result["scrollWidth"], result["W"]])
    return problems


@pytest.mark.parametrize("width", [1024, 1400, 1920])
def test_nothing_overflows_at_width(browser, server, width):
    """Bounding boxes: no title, label or button outside its container or clipped, no sideways scroll (the
    generations table included), the merge-outcome subplot titles apart and all 7 module names shown."""
    context, page = open_page(browser, server, width)
    try:
        problems = layout_problems(page)
        page.screenshot(path=str(ARTIFACTS / f"explorer-{width}.png"), full_page=True)
        assert problems == [], problems
        merge = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text="Merge outcome")).first
        ticks = merge.locator(".xtick text, .x2tick text").all_text_contents()
        assert ticks.count("down_proj") == 2 and ticks.count("q_proj") == 2, ticks  # both subplots, all modules
        assert page.errors == [], page.errors
    finally:
        context.close()


def select(page, label: str, value: str):
    group = page.locator(".bk-input-group").filter(has=page.get_by_text(label, exact=True)).first
    group.locator("select").select_option(value)


def slider(page, label: str, key: str):
    handle = page.locator(".bk-input-group", has_text=label).locator(".noUi-handle").first
    handle.focus()
    handle.press(key)


def test_scripted_session_every_control(browser, server, organism):
    """Every control once, pins compared, a row drilled into, the pair re-loaded three times, the URL shared:
    no console error, and no trade-off title ever shows numbers that are not its recipe's."""
    context, page = open_page(browser, server, 1400, 1200)
    titles = []
    try:
        def sample():
            titles.extend(page.locator(".gtitle", has_text="Trade-off").all_text_contents())

        slider(page, "K (density", "ArrowRight")  # K 0.2 -> 0.21: a fresh evaluation
        for _ in range(20):
            sample()
            time.sleep(0.1)
        wait_for(lambda: "K=0.21 M=0.3: LA" in page.locator(".gtitle", has_text="Trade-off").first.text_content(),
                 what="the K=0.21 numbers")
        sample()
        slider(page, "M (neurons", "ArrowRight")
        curve_title(page, "M=0.31")
        select(page, "method", "Neu-P-TIES")
        curve_title(page, "Neu-P-TIES")
        # the server switches the restore buttons to 'replace' in a later message than the curve's title: a
        # click on 'rescale' while it still shows active would change nothing (as for a user clicking that fast)
        wait_for(lambda: "bk-active" in (page.get_by_role("button", name="replace", exact=True)
                                         .get_attribute("class") or ""), what="'replace' shown as the restore mode")
        page.get_by_role("button", name="rescale", exact=True).click()
        curve_title(page, "Neu-S-TIES")
        select(page, "locate neurons", "random")
        curve_title(page, "locate=random")
        legend = page.locator(".legendtext", has_text="located random-M").first
        legend.wait_for(state="visible")
        select(page, "norms / embeddings / lm_head", "tuned")
        slider(page, "α", "ArrowLeft")
        curve_title(page, "sorted C(i)")
        select(page, "heatmap statistic", "max_over_median")
        page.locator(".gtitle", has_text="max_over_median").first.wait_for(state="visible")
        page.get_by_text("largest C(i) over the median C(i)").first.wait_for(state="visible")
        select(page, "module", "k_proj")
        curve_title(page, "k_proj")
        # compare: pin locate=random, switch to top, pin, see both
        wait_for(lambda: shown_label(page) == "Neu-S-TIES K=0.21 M=0.31 locate=random a=0.95 others=tuned",
                 what="the locate=random numbers")
        page.get_by_role("button", name="pin current recipe").click()
        select(page, "locate neurons", "top")
        wait_for(lambda: shown_label(page) == "Neu-S-TIES K=0.21 M=0.31 a=0.95 others=tuned", what="the top-M numbers")
        page.get_by_role("button", name="pin current recipe").click()
        page.get_by_text("change restore-stage category between").first.wait_for(state="visible")
        assert page.locator(".legendtext", has_text="pinned:").count() >= 2
        time.sleep(1.0)
        assert layout_problems(page) == []  # the comparison tables fit too
        page.screenshot(path=str(ARTIFACTS / "explorer-compare.png"), full_page=True)
        page.get_by_role("button", name="clear pins").click()
        # generations: filters and a drill-down
        select(page, "stage", "suppress")
        select(page, "category", "all")
        page.get_by_text("only items whose category changes between stages").click()
        page.get_by_text("only items whose category changes between stages").click()
        page.locator('.tabulator-cell[tabulator-field="item"]').first.click()
        page.locator('img[width="192"]').first.wait_for(state="visible")
        select(page, "figure to export", "trade-off")
        # re-load the pair three times: the table comes back each time (no 'Table Not Initialized')
        for _ in range(3):
            page.get_by_role("button", name="Load", exact=True).click()
            time.sleep(1.0)
            wait_for(lambda: len(stage_answers(page, "restore")) > 0, what="the generations table after a re-load")
        assert layout_problems(page) == []
        # shareable: the URL holds the settings; opening it gives the same recipe
        wait_for(lambda: "module=k_proj" in page.url and "others=tuned" in page.url, what="the settings in the URL")
        label = curve_title(page, "sorted C(i)").split("neurons", 1)[1]
        shared, page2 = open_page(browser, with_token(page.url, token_of(server)), 1400)  # a fresh context: no cookie
        try:
            assert label in curve_title(page2, "k_proj")
            assert page2.errors == [], page2.errors
        finally:
            shared.close()
        assert page.errors == [], page.errors
    except (AssertionError, PlaywrightError) as e:
        raise AssertionError(f"{e}\nthe page shows {page_summary(page)}") from e
    finally:
        context.close()
    # every title with numbers shows its own recipe's numbers (checked against a fresh evaluation)
    from lfm.explorer.compute import organism_items
    from lfm.explorer.live import LivePair
    from lfm.methods import Recipe

    shown = {m.groups() for m in map(TITLE_NUMBERS.search, titles) if m}
    assert any(label == "Neu-S-TIES K=0.21 M=0.3" for label, _, _ in shown), shown
    live = LivePair(*organism)
    recipes = {"Neu-S-TIES K=0.2 M=0.3": Recipe(), "Neu-S-TIES K=0.21 M=0.3": Recipe(density=0.21)}
    for label, la, va in shown:
        truth = live.evaluate(recipes[label], organism_items(2))
        assert (float(la), float(va)) == (round(truth["LA"], 3), round(truth["VA"], 3)), label


# ---------------------------------------------------------------------------------------------- the real pair

def test_real_pair_with_its_suite_evaluates_live(browser, smoke_pair, tmp_path):
    """`--base --tuned --suite` of the real pair (smoke build): the page evaluates the default recipe on the
    pair's suite, a slider triggers a fresh evaluation, and the LA / VA shown for it are lm-eval + lmms-eval's
    on the same merge written by `lfm merge` (to the 3 decimals shown)."""
    from lfm.cli import main
    from lfm.evaluate.harness import evaluate

    _, res = smoke_pair
    base, tuned, suite = str(res["base"]), str(res["tuned"]), str(res["suite"])
    with serve_explorer("--base", base, "--tuned", tuned, "--suite", suite, "--per-task", "1", "--no-sweep") as url:
        context, page = open_page(browser, url, 1400, 1400)
        try:
            trade = page.locator(".gtitle", has_text="Trade-off").first
            wait_for(lambda: "K=0.2 M=0.3: LA" in (trade.text_content() or ""), timeout=180,
                     what="the first live evaluation")
            page.get_by_text("suite 'realpair'").first.wait_for(state="visible")  # the pair says what scores it
            slider(page, "M (neurons", "Home")  # M -> 0: the suppress-only merge, evaluated now
            wait_for(lambda: "K=0.2 M=0: LA" in (trade.text_content() or ""), timeout=180,
                     what="the live evaluation at M=0")
            label, la, va = TITLE_NUMBERS.search(trade.text_content()).groups()
            page.get_by_text("items, 95% Wilson").first.wait_for(state="visible")  # the numbers line, with n
            page.screenshot(path=str(ARTIFACTS / "explorer-realpair.png"), full_page=True)
            assert page.errors == [], page.errors
        finally:
            context.close()
    assert label == "Neu-S-TIES K=0.2 M=0"
    out = tmp_path / "m0"
    assert main(["merge", "--base", base, "--tuned", tuned, "--method", "neu-s-ties", "-K", "0.2", "-M", "0",
                 "--out", str(out), "--quiet"]) == 0
    truth = evaluate(out, suite, limit=1)
    assert (float(la), float(va)) == (round(truth["LA"], 3), round(truth["VA"], 3))
