"""Assemble the explorer page from an ExplorerState and its views; `page` is what every entry point serves
(`lfm explore`, `panel serve apps/explorer.py`, `python apps/explorer.py`).

    >>> app = ExplorerApp(ExplorerState(background=False, auto_sweep=False), load=False)
    >>> type(app.__panel__()).__name__
    'Row'

The page lets its user open any directory and run any evaluation suite as the user who serves it, so
`serve` puts a token gate in front of it (`gate.TokenGate`: no token, no session), and `page` builds a
refusal instead of the explorer in a server without that gate (a plain `panel serve apps/explorer.py`) or
for a browser on another machine (unless LFM_ALLOW_REMOTE=1 is set; then every remote session is logged
with a warning).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

import panel as pn
from panel.io.resources import LOCAL_DIST

from lfm.access import no_token_warning

from .gate import TokenGate, page_url, serving
from .state import URL_PARAMS, ExplorerState
from .views import (CompareView, Controls, ExportView, FindingsView, GenerationsView, MergeView, MethodLine,
                    NeuronView, PairPicker, TourView, TradeoffView, as_text)

ALLOW_REMOTE_ENV = "LFM_ALLOW_REMOTE"  # =1: serve browsers on other machines too (they can open any server path)
log = logging.getLogger("lfm.explorer")

TITLE = "Locate-then-Merge explorer"
INTRO = ("Merge a visually tuned MLLM back toward its base LLM, neuron by neuron "
         "([arXiv 2505.16703](https://arxiv.org/abs/2505.16703)). Move K and M: the trade-off and the answers follow.")
# the sidebar stays in view at any scroll position (its own scroll bar when taller than the window); the method
# line stays at the top of the main column
PINNED = {"position": "sticky", "top": "0", "align-self": "flex-start", "max-height": "100vh", "overflow-y": "auto",
          "z-index": "10", "background": "white"}


def extension() -> None:
    """Load Panel's plotly and tabulator bundles (served by `panel serve` itself: no CDN). Sliders are
    throttled: a drag updates the page once, on release."""
    pn.extension("plotly", "tabulator", throttled=True, notifications=False)


class ExplorerApp:
    """The whole page: the state plus one instance of every view."""

    def __init__(self, state: ExplorerState | None = None, *, load: bool = True):
        self.state = state or ExplorerState()
        s = self.state
        self.picker = PairPicker(s)
        self.controls = Controls(s)
        self.neurons = NeuronView(s)
        self.merge = MergeView(s)
        self.tradeoff = TradeoffView(s)
        self.generations = GenerationsView(s)
        self.compare = CompareView(s)
        self.method_line = MethodLine(s)
        self.tour = TourView(s)
        self.findings = FindingsView(s)
        self.export = ExportView(s, {
            "heatmap": lambda: self.neurons.heatmap.object, "rank-curve": lambda: self.neurons.curve.object,
            "merge-outcome": lambda: self.merge.plot.object, "trade-off": lambda: self.tradeoff.plot.object},
            self.generations)
        if load and s.source is None:
            s.load()

    def __panel__(self):
        # the controls first: K and M are in view from the top of the sidebar, whatever the main column shows
        sidebar = pn.Column(pn.pane.Markdown(f"### {TITLE}\n{INTRO}", styles={"font-size": "12px"}),
                            self.controls, self.picker, self.export, width=330,
                            styles={**PINNED, "padding-right": "12px"}, css_classes=["lfm-sidebar"])
        # the story first: the trade-off and the three stages' answers side by side in the first screen, then
        # the tour and the report's findings; the per-neuron views below
        # side by side from ~1200 px; on a narrower window the answers wrap below the plot (nothing squeezed)
        first = pn.Row(self.tradeoff.top(), self.generations.top(), sizing_mode="stretch_width",
                       styles={"flex-wrap": "wrap"})
        main = pn.Column(pn.Column(self.method_line, styles={**PINNED, "max-height": "none"},
                                   sizing_mode="stretch_width"),
                         first, self.findings, self.tour, self.tradeoff.rest(), self.generations.rest(), self.compare,
                         self.neurons, self.merge, sizing_mode="stretch_width", styles={"min-width": "0"})
        return pn.Row(sidebar, main, sizing_mode="stretch_width")


def remote_allowed() -> bool:
    return os.environ.get(ALLOW_REMOTE_ENV, "") == "1"


def is_loopback(address: str) -> bool:
    """'127.0.0.1', '::1', '::ffff:127.0.0.1' -> True; any other address (or a malformed one) -> False."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def client_address() -> str | None:
    """The address of the browser this session serves; None outside a server (a notebook, a test)."""
    doc = pn.state.curdoc
    context = doc.session_context if doc is not None else None
    request = getattr(context, "request", None) if context is not None else None
    return getattr(request, "remote_ip", None) if request is not None else None


def serve_resources_from_here() -> None:
    """Make this session's stylesheets (and the fonts they load) come from this server, never from Panel's CDN.

    Panel points a model's stylesheets at the document's 'dist_url', which its page handler sets when it
    renders the HTML; a document without one gets cdn.holoviz.org URLs. Bokeh discards a session whose browser
    has not opened its websocket within 15 s and makes a new one when the websocket comes, without the page
    handler: under load (9 pages at once on 2 cores) every page then loaded Panel's CSS and fonts from the
    CDN. Called first thing in every session, before any model exists.
    """
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        rel = pn.state.rel_path
        doc.template_variables.setdefault("dist_url", f"{rel}/{LOCAL_DIST}" if rel else LOCAL_DIST)


def page(*, results: str | None = None, base: str | None = None, tuned: str | None = None,
         suite: str | None = None, per_task: int = 8, auto_sweep: bool = True,
         device: str = "cpu") -> pn.viewable.Viewable:
    """The page of one browser session: a results folder, a live (base, tuned) pair (evaluated on `suite`,
    ``lfm.explorer.live``), or the embedded organism.

    A session of a server without lfm's token gate (`panel serve apps/explorer.py`), or of a browser on another
    machine unless remote access was opted into, gets a refusal instead, built before any state exists (no path
    box, no loading).
    """
    serve_resources_from_here()
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None and not serving():  # a served session, no gate
        log.warning("refused a session: this server has no token gate (plain `panel serve`); start the explorer "
                    "with `lfm explore`")
        return pn.pane.Alert("This explorer was started without its token (a plain `panel serve "
                             "apps/explorer.py`), so any user of this machine could open it and run code as its "
                             "owner. Start it with `lfm explore` (or `make demo`, `python apps/explorer.py`): it "
                             "prints the URL to open, with its token.", alert_type="danger")
    address = client_address()
    if address is not None and not is_loopback(address):
        if not remote_allowed():
            log.warning("refused a session from %s: the explorer serves this machine only (set %s=1 to allow "
                        "remote browsers)", address, ALLOW_REMOTE_ENV)
            return pn.pane.Alert(as_text(f"This explorer serves only the machine it runs on; your address is "
                                         f"{address}. Its owner can allow remote browsers with "
                                         f"{ALLOW_REMOTE_ENV}=1 (they can then open any directory of that "
                                         f"machine)."), alert_type="danger")
        log.warning("serving a session to the remote address %s (%s=1): it can open any directory of this "
                    "machine", address, ALLOW_REMOTE_ENV)
    state = ExplorerState(per_task=per_task, auto_sweep=auto_sweep, device=str(device))
    if results:
        state.param.update(source_kind="results", results_path=str(results))
    elif base and tuned:
        state.param.update(source_kind="pair", base_path=str(base), tuned_path=str(tuned), suite_path=str(suite or ""))
    app = ExplorerApp(state)
    if pn.state.location is not None:  # a served session: the settings live in the URL (open the link, same view)
        pn.state.location.sync(state, URL_PARAMS)
    return app.__panel__()


def serve(*, token: str | None, address: str = "127.0.0.1", port: int = 5006, allow_remote: bool = False,
          **source) -> None:
    """Serve `page(**source)` (a fresh state per session) behind a gate holding `token` (None: no token, said on
    stderr) until interrupted; prints the URL to open, with the token, once the server listens."""
    origins = [f"127.0.0.1:{port}", f"localhost:{port}"]
    if allow_remote:
        os.environ[ALLOW_REMOTE_ENV] = "1"
        origins = ["*"]
        print(f"warning: --allow-remote: any browser that reaches {address}:{port} (and holds the token) can open "
              f"any directory of this machine", flush=True)
    gate = TokenGate(token, port=port)
    # the cookie (and the header holding it) stay out of the session token Bokeh embeds in the page
    server = pn.serve({"explorer": lambda: page(**source)}, address=address, port=port, show=False, title=TITLE,
                      websocket_origin=origins, auth_provider=gate, exclude_cookies=[gate.cookie],
                      exclude_headers=["Cookie"], start=False, verbose=False)
    if token is None:
        print(no_token_warning(f"{address}:{port}"), file=sys.stderr, flush=True)
    print(f"lfm explorer: open {page_url(address, server.port, token)}", flush=True)
    server.start()
    server.io_loop.start()
