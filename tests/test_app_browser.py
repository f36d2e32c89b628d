"""The explorer in a real headless Chromium (Debian `chromium` + Playwright), served by `panel serve`.

The server fixture starts `panel serve apps/explorer.py` on a free 127.0.0.1 port and always stops it
(terminate, then kill, in `finally`), so pytest never hangs on it. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from app_support import ROOT, organism_pair

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    return organism_pair(tmp_path_factory.mktemp("org"))


@contextlib.contextmanager
def panel_serve(*app_args: str):
    """`panel serve apps/explorer.py --args APP_ARGS` on a free 127.0.0.1 port; yields the page URL, always stops."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    port = free_port()
    panel = Path(sys.executable).parent / "panel"
    cmd = [str(panel), "serve", str(ROOT / "apps" / "explorer.py"), "--address", "127.0.0.1", "--port", str(port),
           "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1", "--args", *app_args]
    log = open(ARTIFACTS.mkdir(exist_ok=True) or ARTIFACTS / f"panel-serve-{port}.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOKEH_LOG_LEVEL": "info"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/explorer"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"panel serve exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"panel serve did not answer on port {port} within 60 s")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def server(organism):
    with panel_serve("--base", str(organism[0]), "--tuned", str(organism[1]), "--per-task", "2", "--no-sweep") as url:
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
    wait_for(lambda: len(stage_answers(page, "suppress")) > 0, what="the generations table")
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
    with panel_serve("--base", str(big_pair[0]), "--tuned", str(big_pair[1]), "--no-sweep") as url:
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
