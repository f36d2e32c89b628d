"""The explorer against hostile files and clients: strings from files are text (as Panel renders them for
the browser), results-folder images stay inside the folder, hub downloads need the user's tick, a closed
session's worker threads stop, and a served page refuses browsers on other machines (the token gate and the
other server cases: tests/test_hostile_server.py)."""

from __future__ import annotations

import html
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from pathlib import Path

import pandas as pd
import pytest

from fixtures import copy_dir
from lfm.explorer.app import ExplorerApp, extension
from lfm.explorer.state import ExplorerState, SessionClosed

extension()
ROOT = Path(__file__).resolve().parents[1]
XSS = '<img src=x onerror="window.pwned=1">'


def rendered(pane) -> str:
    """The HTML the browser puts into the page for a Markdown / Alert pane (Panel's own renderer)."""
    return html.unescape(pane.get_root().text)


def load(**params) -> ExplorerApp:
    app = ExplorerApp(ExplorerState(background=False, auto_sweep=False, **params))
    app.__panel__()
    return app


def edit_config(d: Path, edit) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_architectures_from_config_show_as_text(zoo, tmp_path):
    tuned = edit_config(copy_dir(zoo.llava, tmp_path / "tuned"),
                        lambda c: c.__setitem__("architectures", ["x\n```\n" + XSS + "ForConditionalGeneration"]))
    app = load(source_kind="pair", base_path=str(zoo.base), tuned_path=str(tuned))
    assert app.state.error == ""
    shown = rendered(app.picker.description)
    assert "<img" not in shown and "&lt;img src" in shown, shown


def test_model_type_in_an_error_shows_as_text(zoo, tmp_path):
    base = edit_config(copy_dir(zoo.base, tmp_path / "base"), lambda c: c.__setitem__("model_type", XSS))
    app = load(source_kind="pair", base_path=str(base), tuned_path=str(zoo.llava))
    assert "architecture mismatch" in app.state.error and XSS in app.state.error
    shown = rendered(app.picker.error)
    assert "<img" not in shown and "&lt;img src" in shown, shown


@pytest.fixture(scope="module")
def results(zoo, tmp_path_factory):
    """A real results folder of the tiny pair (scores only), written by lfm precompute's writer."""
    from lfm.explorer.results import write_scores

    out = tmp_path_factory.mktemp("results") / "r"
    write_scores(zoo.base, zoo.llava, out, (0.2,), progress=False)
    return out


def test_results_description_shows_as_text(results, tmp_path):
    folder = copy_dir(results, tmp_path / "r")
    meta = json.loads((folder / "meta.json").read_text())
    meta["description"] = f"```\n{XSS}\n[link](javascript:alert(1)) **bold**"
    (folder / "meta.json").write_text(json.dumps(meta))
    app = load(source_kind="results", results_path=str(folder))
    assert app.state.error == ""
    shown = rendered(app.picker.description)
    assert "<img" not in shown and "<a " not in shown and "<strong>" not in shown, shown
    assert "&lt;img src" in shown and "**bold**" in shown


@pytest.mark.parametrize("image", ["../secret.png", "/etc/passwd", "images/../../secret.png"])
def test_results_images_must_stay_inside_the_folder(results, tmp_path, image):
    folder = copy_dir(results, tmp_path / "r")
    (tmp_path / "secret.png").write_bytes(b"not for the page")
    pd.DataFrame([{"stage": "hard", "density": None, "neurons": None, "id": "a", "task": "t", "question": "q",
                   "choices": "[]", "answer": "A", "image": image, "generated": "A",
                   "category": "correct"}]).to_csv(folder / "generations.csv", index=False)
    app = load(source_kind="results", results_path=str(folder))
    assert "must name a file inside" in app.state.error and image in app.state.error
    assert app.state.source is None


def test_hub_id_is_downloaded_only_when_asked(zoo):
    app = load(source_kind="pair", base_path="some-org/some-model", tuned_path=str(zoo.llava))
    assert "download from the hub" in app.state.error and app.state.source is None
    app.state.hub_download = True  # now lfm asks the hub (offline here: the download itself fails)
    app.state.load()
    assert "Hugging Face hub failed" in app.state.error


def test_closed_session_stops_its_worker_threads(zoo):
    """Bokeh destroys a session's document, then runs its on_session_destroyed callbacks; a worker that
    hands a result back afterwards must stop (SessionClosed), not call into the dead document."""
    import panel as pn
    from bokeh.document import Document
    from bokeh.server.contexts import BokehSessionContext
    from bokeh.server.session import ServerSession
    from panel.io.state import set_curdoc

    doc = Document()
    session = ServerSession("s1", doc, io_loop=None)
    context = BokehSessionContext("s1", None, doc)
    context._set_session(session)
    doc._session_context = weakref.ref(context)
    with set_curdoc(doc):
        state = ExplorerState(background=True, auto_sweep=False)
    callbacks = set(doc.session_destroyed_callbacks)
    assert callbacks, "the state registers no session-destroyed hook"
    session.destroy()  # what bokeh does first ...
    worker = threading.Thread(target=lambda: results.append(run(state)))
    results = []

    def run(state):
        try:
            state._set(status="late result")
        except BaseException as e:
            return e
    worker.start()
    worker.join(10)
    assert isinstance(results[0], SessionClosed), results
    for callback in callbacks:  # ... then it runs the hooks
        callback(context)
    with pytest.raises(RuntimeError, match="shutdown"):
        state.session.sweeps.submit(print)


def local_non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def serve(port: int, token: str, *flags: str) -> subprocess.Popen:
    """`lfm explore` on every interface of this machine, behind `token`."""
    cmd = [sys.executable, "-m", "lfm.cli", "explore", "--address", "0.0.0.0", "--port", str(port), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "LFM_TOKEN": token})


def page(url: str, token: str, proc: subprocess.Popen) -> str:
    """The text of every model of the session's document, as a Bokeh client (like a browser) receives it."""
    from bokeh.client import pull_session

    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            urllib.request.urlopen(url.rsplit("/", 1)[0] + "/static/js/bokeh.min.js", timeout=60).read()
            break
        except OSError:
            assert time.time() < deadline, f"no answer from {url}"
            time.sleep(0.5)
    with pull_session(url=url, arguments={"token": token}) as session:
        return "\n".join(str(v) for model in session.document.models
                         for v in model.properties_with_values(include_defaults=False).values())


@pytest.mark.parametrize("allow", [False, True])
def test_served_explorer_refuses_other_machines(allow):
    """`lfm explore --address 0.0.0.0` listens everywhere; the app itself refuses a browser that is not on this
    machine (even one holding the token), unless --allow-remote (LFM_ALLOW_REMOTE=1)."""
    address = local_non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "remote-test-token"
    proc = serve(port, token, *(["--allow-remote"] if allow else []))
    try:
        remote = page(f"http://{address}:{port}/explorer", token, proc)
        local = page(f"http://127.0.0.1:{port}/explorer", token, proc)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "base LLM directory" in local
    if allow:
        assert "base LLM directory" in remote
        assert f"serving a session to the remote address {address}" in out
    else:
        assert "serves only the machine it runs on" in remote and "base LLM directory" not in remote
        assert f"refused a session from {address}" in out
