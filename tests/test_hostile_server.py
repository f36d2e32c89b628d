"""The servers lfm starts, tried as another local user and as a web page would: real server processes, real
sockets (and a real browser where it is a page). The token gate (lfm.explorer.gate, lfm.access), links that
gave HTTP 500, seeds, a plain `panel serve`, `lfm lab`, stylesheets from the CDN, and a 100k-row results table.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pandas as pd
import pytest

from app_support import ROOT, explorer_server, free_port, local_server, organism_pair, stop, token_of, with_token

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ENV.pop("LFM_TOKEN", None)
LFM = [sys.executable, "-m", "lfm.cli"]
# links that gave HTTP 500 (or would have failed late), and the clean form the gate redirects them to
CRAFTED_LINKS = {
    "superscript-two": ("/explorer?foo=%C2%B2", {}),
    "4301-digits": ("/explorer?K=" + "1" * 4301, {}),
    "5000-digit-int": ("/explorer?layer=" + "9" * 5000 + "&module=%C2%B2", {}),
    "seed-beyond-int64": ("/explorer?seed=99999999999999999999999&K=7&M=-1", {"K": "1.0", "M": "0.0"}),
    "nan-inf": ("/explorer?M=nan&alpha=1e999&K=%C2%B2&seed=9223372036854775808&method=Neu-P-TIES",
                {"seed": "9223372036854775807", "method": "Neu-P-TIES"}),
}


def get(port: int, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    """One HTTP GET (no redirect followed), its body read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def printed_line(log: Path, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{log} never printed {pattern!r}:\n{log.read_text(errors='replace')[-2000:]}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture(scope="module")
def explore(tmp_path_factory):
    """`lfm explore` as a user starts it (a fresh random token): (process, port, the URL it printed)."""
    port = free_port()
    log = tmp_path_factory.mktemp("explore") / "explore.log"
    with local_server([*LFM, "explore", "--port", str(port), "--per-task", "1"],
                      f"http://127.0.0.1:{port}/static/js/bokeh.min.js", log, env=ENV, cwd=ROOT) as proc:
        url = printed_line(log, r"lfm explorer: open (\S+)").group(1)
        yield proc, port, url


def test_requests_without_the_token_get_403_and_burn_no_cpu(explore):
    """An <img> tag on any web page, or another local user: 20 GETs of a link that evaluates, the websocket,
    autoload.js, a wrong token or cookie. Before: each GET made a session that loaded the pair and evaluated
    (20 GETs, ~59 s of server CPU in 60 s). Now each is a 403 before Panel makes anything."""
    proc, port, url = explore
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/explorer\?token=[A-Za-z0-9_-]{{43}}", url), url
    cross_site = {"Referer": "https://evil.example/", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"}
    before = cpu_seconds(proc.pid)
    statuses = [get(port, "/explorer?K=0.31&per_task=0", cross_site).status for _ in range(20)]
    statuses += [get(port, path).status for path in ("/", "/explorer/metadata", "/explorer?token=wrong",
                                                     "/explorer/autoload.js?bokeh-autoload-element=x")]
    statuses.append(get(port, "/explorer", {"Cookie": f"lfm-explorer-{port}=" + "0" * 64}).status)
    statuses.append(get(port, "/explorer/ws", {"Connection": "Upgrade", "Upgrade": "websocket",
                                                "Sec-WebSocket-Version": "13",
                                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}).status)
    time.sleep(3)  # a session would be evaluating in the background by now
    burned = cpu_seconds(proc.pid) - before
    assert statuses == [403] * 26, statuses
    assert burned < 1.5, f"{burned:.1f} s of server CPU for 26 refused requests"


def test_the_token_url_sets_a_strict_cookie_and_leaves_the_address_bar(explore):
    """The printed URL answers with an HttpOnly, SameSite=Strict cookie and a redirect to the same settings
    without the token; the cookie alone then opens the page, and neither the token nor the cookie reaches the
    session token that Bokeh embeds in the page (JavaScript can read that one)."""
    from bokeh.util.token import get_token_payload

    _, port, url = explore
    token = token_of(url)
    first = get(port, f"/explorer?K=0.31&token={token}")
    assert first.status == 302 and first.getheader("Location") == "/explorer?K=0.31"
    cookie = first.getheader("Set-Cookie")
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == f"lfm-explorer-{port}" and value != token
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {part.strip() for part in cookie.split(";")[1:]}, cookie
    page = get(port, "/explorer?K=0.31", {"Cookie": f"{name}={value}; other=1"})
    assert page.status == 200
    html = page.body.decode()
    assert token not in html and value not in html
    for session_token in re.findall(r'"token":\s*"([^"]+)"', html):
        payload = get_token_payload(session_token)
        assert name not in payload.get("cookies", {}) and "Cookie" not in payload.get("headers", {}), payload
        assert "token" not in payload.get("arguments", {}), payload


def cookie_of(port: int, url: str) -> str:
    return get(port, f"/explorer?token={token_of(url)}").getheader("Set-Cookie").split(";")[0]


@pytest.mark.parametrize("link, clean", CRAFTED_LINKS.values(), ids=CRAFTED_LINKS.keys())
def test_a_crafted_link_is_cleaned_never_a_500(explore, link, clean):
    """Before: Panel's query parser answered these with HTTP 500 (int('²'), a 4301-digit int). Now the gate
    redirects to the link's clean form: unknown keys and unparseable values dropped, numbers clamped."""
    _, port, url = explore
    answer = get(port, link, {"Cookie": cookie_of(port, url)})
    assert answer.status == 302, (answer.status, answer.body[:300])
    assert dict(parse_qsl(urlsplit(answer.getheader("Location")).query)) == clean


def test_a_cleaned_link_opens_the_page(explore):
    _, port, url = explore
    cookie = cookie_of(port, url)
    location = get(port, CRAFTED_LINKS["nan-inf"][0], {"Cookie": cookie}).getheader("Location")
    assert get(port, location, {"Cookie": cookie}).status == 200
    assert get(port, location, {"Cookie": cookie}).status == 200  # a clean link is not redirected again


def test_a_session_made_by_its_websocket_takes_every_stylesheet_from_this_server(explore):
    """The cause of the CDN loads under load: Bokeh drops a session whose browser has not opened its websocket
    within 15 s and makes a new one when the websocket comes, without Panel's page handler, which is what set
    the document's resource URL; that document's stylesheets (and fonts) then pointed at cdn.holoviz.org.
    `bokeh.client.pull_session` makes its session exactly that way."""
    from bokeh.client import pull_session
    from bokeh.models import ImportedStyleSheet

    from lfm.explorer.app import extension

    extension()  # the page's Panel models, to read the document
    _, port, url = explore
    with pull_session(url=f"http://127.0.0.1:{port}/explorer", arguments={"token": token_of(url)}) as session:
        urls = {str(m.url) for m in session.document.models if isinstance(m, ImportedStyleSheet)}
    assert urls and any("font-awesome" in u for u in urls), urls
    assert [u for u in urls if re.match(r"(https?:)?//", u)] == [], urls


@pytest.mark.parametrize("command, env", [
    (["explore", "--token", ""], {}),
    (["explore"], {"LFM_TOKEN": ""}),
    (["explore", "--token", "x", "--no-token"], {}),
    (["lab", "--token", ""], {}),
    (["apps/explorer.py", "--token", ""], {}),
], ids=["explore-empty", "explore-empty-env", "explore-both", "lab-empty", "app-empty"])
def test_an_empty_token_is_refused_in_one_line(command, env):
    """`--token ''` is Jupyter's way to switch authentication off; lfm asks for --no-token, in so many words."""
    cmd = [sys.executable, str(ROOT / command[0]), *command[1:]] if command[0].endswith(".py") else [*LFM, *command]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **env}, cwd=ROOT, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, (run.returncode, run.stderr)
    assert "--no-token" in lines[0] and "error" in lines[0], lines


def test_make_demo_serves_behind_the_token():
    """`make demo` is `lfm explore` (whose printed URL and 403s the tests above check), not a plain panel serve."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "demo"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "lfm explore --port 5006" in out and "panel serve" not in out, out


def test_no_token_says_who_can_run_code_and_lets_requests_in(tmp_path):
    port = free_port()
    log = tmp_path / "explore.log"
    with local_server([*LFM, "explore", "--port", str(port), "--no-token"],
                      f"http://127.0.0.1:{port}/static/js/bokeh.min.js", log, env=ENV, cwd=ROOT):
        printed_line(log, r"lfm explorer: open http://127\.0\.0\.1:\d+/explorer\n")
        assert get(port, "/").status == 302  # the index, let in without a token (no session made)
    warning = [line for line in log.read_text().splitlines() if "--no-token" in line]
    assert len(warning) == 1 and "every user of this machine" in warning[0], warning
    assert f"run code as {getpass.getuser()}" in warning[0]


def test_lab_needs_its_token_and_keeps_it_off_the_command_line(tmp_path):
    """`lfm lab` as a user starts it: it prints the URL with a fresh token, JupyterLab answers 403 without it, and
    the token is not in its command line (which every local user can read in `ps`)."""
    port = free_port()
    (tmp_path / "nb").mkdir()
    log = tmp_path / "lab.log"
    env = {**ENV, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    with local_server([*LFM, "lab", str(tmp_path / "nb"), "--port", str(port)], f"http://127.0.0.1:{port}/login",
                      log, env=env, cwd=tmp_path, timeout=90) as proc:
        token = printed_line(log, rf"lfm lab: open http://127\.0\.0\.1:{port}/lab\?token=([A-Za-z0-9_-]+)").group(1)
        assert len(token) >= 32
        assert get(port, "/api/contents").status == 403
        assert get(port, f"/api/contents?token={token}").status == 200
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert "jupyterlab" in cmdline and token not in cmdline


def test_lab_no_token_says_who_can_run_code(tmp_path):
    proc = subprocess.Popen([*LFM, "lab", str(tmp_path), "--port", str(free_port()), "--no-token"], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
    try:
        first = proc.stderr.readline()  # printed before JupyterLab takes over the process
    finally:
        stop(proc)
    assert "--no-token" in first and f"run code as {getpass.getuser()}" in first, first


def test_plain_panel_serve_builds_a_refusal_and_no_state(tmp_path):
    """`panel serve apps/explorer.py` makes a session before any lfm code runs, so no gate can stand in front of
    it: the page is a refusal naming the command to run, built before any state (no path box, no loading);
    a crafted link is no 500 there either."""
    from bokeh.client import pull_session

    from lfm.explorer.app import extension

    extension()
    port = free_port()
    log = tmp_path / "panel.log"
    panel = Path(sys.executable).parent / "panel"
    cmd = [str(panel), "serve", str(ROOT / "apps" / "explorer.py"), "--address", "127.0.0.1", "--port", str(port),
           "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1"]
    with local_server(cmd, f"http://127.0.0.1:{port}/static/js/bokeh.min.js", log, env=ENV, cwd=ROOT):
        assert get(port, CRAFTED_LINKS["superscript-two"][0]).status == 200
        with pull_session(url=f"http://127.0.0.1:{port}/explorer") as session:
            text = "\n".join(str(v) for m in session.document.models
                             for v in m.properties_with_values(include_defaults=False).values())
    assert "started without its token" in text and "lfm explore" in text
    assert "base LLM directory" not in text and "sorted C(i)" not in text
    assert "refused a session: this server has no token gate" in log.read_text()


# ---------------------------------------------------------------------------------------------- seeds

def test_a_seed_is_checked_when_parsed_and_any_allowed_one_merges(tmp_path):
    """Before: `?seed=99999999999999999999999` (or any seed above ~1.8e13 with locate=random) failed late, in
    the evaluation ('Overflow when unpacking long long'). Now a seed is 0 .. 2**63-1 when it is parsed (the
    link, the page's state, a Recipe), and the page evaluates at the largest one."""
    from lfm.explorer.state import ExplorerState, clean_query
    from lfm.methods import Recipe
    from lfm.methods.registry import SEED_MAX

    assert clean_query({"seed": str(SEED_MAX + 1)}) == {"seed": str(SEED_MAX)}
    assert clean_query({"seed": "99999999999999999999999"}) == {} and clean_query({"seed": "-4"}) == {"seed": "0"}
    with pytest.raises(ValueError, match="seed"):
        ExplorerState(background=False, auto_sweep=False, seed=SEED_MAX + 1)
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 9223372036854775807"):
        Recipe(method="dare", seed=2**64)
    base, tuned = organism_pair(tmp_path)
    state = ExplorerState(background=False, auto_sweep=False, per_task=1, source_kind="pair", base_path=str(base),
                          tuned_path=str(tuned), locate="random", seed=SEED_MAX)
    state.load()
    assert state.error == "" and state.current is not None, state.error
    assert f"seed={SEED_MAX}" in state.current["label"]


# ---------------------------------------------------------------------------------------------- big tables

# [columns, rows] of every visible table model in the browser's document (Tabulators hold their rows in `source`)
TABLE_ROW_COUNTS = """() => [...Bokeh.documents[0].all_models]
    .filter(m => m.source !== undefined && m.configuration !== undefined && m.visible)
    .map(m => [m.columns.length, m.source.get_length()])"""


def write_big_generations(folder: Path, n_items: int) -> None:
    """generations.csv with every stage of the default recipe for `n_items` items (3 rows each)."""
    rows = []
    for stage, density, neurons in (("hard", "", ""), ("suppress", 0.2, 0.0), ("restore", 0.2, 0.3)):
        rows.append(pd.DataFrame({"stage": stage, "density": density, "neurons": neurons,
                                  "id": [f"item-{i}" for i in range(n_items)], "task": "big",
                                  "question": "Which of these is the largest number in the row of numbers?",
                                  "choices": json.dumps(["one", "two", "three", "four"]), "answer": "four",
                                  "image": "", "generated": "three", "category": "wrong_choice"}))
    pd.concat(rows).to_csv(folder / "generations.csv", index=False)


@pytest.fixture(scope="module")
def big_results(zoo, tmp_path_factory):
    """A results folder of the tiny pair (scores by lfm precompute's writer) with a 100,002-row generations.csv."""
    from lfm.explorer.results import write_scores

    out = tmp_path_factory.mktemp("big") / "r"
    write_scores(zoo.base, zoo.llava, out, (0.2,), progress=False)
    write_big_generations(out, 33_334)
    return out


def test_a_100k_row_results_table_shows_200_rows_with_a_note_and_exports_all(big_results):
    from lfm.explorer.app import ExplorerApp, extension
    from lfm.explorer.state import ExplorerState
    from lfm.explorer.views import TABLE_ROWS

    extension()
    app = ExplorerApp(ExplorerState(background=False, auto_sweep=False, source_kind="results",
                                    results_path=str(big_results)))
    app.__panel__()
    assert app.state.error == "" and len(app.state.generations) == 33_334
    assert len(app.generations.table.value) == TABLE_ROWS == 200
    assert "showing the first 200 of 33334 rows" in app.generations.more.object
    exported = pd.read_csv(app.export.generations_csv())
    assert len(exported) == 33_334


@pytest.mark.browser
def test_a_100k_row_results_table_sends_kilobytes_not_megabytes(big_results):
    """Before: a 100k-row generations.csv sent 63 MB over the websocket to every page."""
    from playwright.sync_api import sync_playwright

    from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    received = []
    with explorer_server("--results", str(big_results), "--no-sweep", log_dir=ARTIFACTS) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(180_000)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: received.append(len(f))))
            page.goto(url)
            page.get_by_text("showing the first 200 of 33334 rows").first.wait_for(state="visible")
            page.wait_for_function(f"() => ({TABLE_ROW_COUNTS})().some(([c, n]) => n === 200)", timeout=60_000)
            page.wait_for_timeout(2000)  # what the page still receives after the rows
            tables = page.evaluate(TABLE_ROW_COUNTS)
        finally:
            browser.close()
    assert sum(received) < 4_000_000, f"{sum(received) / 1e6:.1f} MB over the websocket"
    assert sorted(n for _, n in tables if n) == [1, 200], tables  # the generations rows and the one transition


@pytest.mark.browser
def test_rows_loaded_before_a_slow_browser_connects_reach_its_tables(zoo, tmp_path):
    """A results folder that finishes loading before the browser has connected (a slow or busy browser:
    Chromium's CPU throttled 12x) shows its generations and transitions rows. Before: Panel 1.9 lost the
    table replacement made while the page was served but not connected; the item counts above arrived, the
    tables stayed empty (browser models holding 0 rows) for good."""
    from playwright.sync_api import sync_playwright

    from lfm.explorer.results import write_scores
    from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    out = tmp_path / "r"
    write_scores(zoo.base, zoo.llava, out, (0.2,), progress=False)
    write_big_generations(out, 240)
    ARTIFACTS.mkdir(exist_ok=True)
    with explorer_server("--results", str(out), "--no-sweep", log_dir=ARTIFACTS) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(180_000)
            page.context.new_cdp_session(page).send("Emulation.setCPUThrottlingRate", {"rate": 12})
            page.goto(url)
            page.get_by_text("showing the first 200 of 240 rows").first.wait_for(state="visible")
            # on a quiet machine the rows are there when the count is (~40 s in); a loaded one took minutes to
            # show the count: the rows get the same 3 minutes (a lost table never fills, however long the wait)
            page.wait_for_function(f"() => ({TABLE_ROW_COUNTS})().some(([c, n]) => n === 200)")
            tables = page.evaluate(TABLE_ROW_COUNTS)
        finally:
            browser.close()
    # the generations table (200 of 240 rows) and the transitions table (one row: wrong_choice -> wrong_choice)
    assert sorted(n for _, n in tables if n) == [1, 200], tables


# ---------------------------------------------------------------------------------------------- offline under load

LATE_S = 35


@pytest.mark.browser
def test_eight_concurrent_pages_load_nothing_from_outside_this_machine(tmp_path_factory):
    """Eight browser sessions at once (each its own context: no shared cache) on the organism: every request
    and websocket of every page goes to 127.0.0.1. Before: with 9, every page loaded Panel's stylesheets and
    fonts from cdn.holoviz.org: a page whose websocket came late had its session dropped by Bokeh and remade
    from the websocket (see the test above). The last page here fetches BokehJS only after LATE_S, so that
    happens to it whatever the machine's load."""
    from playwright.sync_api import sync_playwright

    from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    base, tuned = organism_pair(tmp_path_factory.mktemp("org"))
    ARTIFACTS.mkdir(exist_ok=True)
    requested = []
    with explorer_server("--base", str(base), "--tuned", str(tuned), "--per-task", "1", "--no-sweep",
                         log_dir=ARTIFACTS) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(8):
                page = browser.new_context().new_page()
                page.on("request", lambda r: requested.append(r.url))
                page.on("websocket", lambda ws: requested.append(ws.url))
                pages.append(page)
            # past Bokeh's unused-session lifetime (15 s) and its check interval (17 s): the session is remade
            pages[-1].route("**/static/js/bokeh.min.js*", lambda route: (time.sleep(LATE_S), route.continue_()))
            for page in pages:  # all eight load at once
                page.goto(with_token(url, token_of(url)), wait_until="commit")
            for page in pages:
                page.locator(".gtitle", has_text="sorted C(i)").first.wait_for(state="visible", timeout=300_000)
                page.locator(".tabulator:visible").first.wait_for(state="visible", timeout=300_000)
        finally:
            browser.close()
    outside = sorted({u for u in requested if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                      and urlsplit(u).hostname != "127.0.0.1"})
    assert len(requested) > 8 * 10, len(requested)
    assert outside == [], outside[:10]
