"""Assemble the explorer page from an ExplorerState and its views.

    >>> page = build_app(ExplorerState(background=False))   # doctest: +SKIP
    >>> page.servable()                                      # doctest: +SKIP
"""

from __future__ import annotations

import panel as pn

from .state import ExplorerState
from .views import (Controls, ExportView, GenerationsView, MergeView, NeuronView, PairPicker, TradeoffView)

TITLE = "Locate-then-Merge explorer"
INTRO = ("Merge a visually tuned MLLM back toward its base LLM, neuron by neuron "
         "([Locate-then-Merge, arXiv 2505.16703](https://arxiv.org/abs/2505.16703)). "
         "Move K and M and watch which neurons are kept, located and restored, and what the merged model answers.")


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
        self.export = ExportView(s, {
            "heatmap": lambda: self.neurons.heatmap.object, "rank-curve": lambda: self.neurons.curve.object,
            "merge-outcome": lambda: self.merge.plot.object, "trade-off": lambda: self.tradeoff.plot.object},
            self.generations)
        if load and s.source is None:
            s.load()

    def __panel__(self):
        sidebar = pn.Column(self.picker, self.controls, self.export, width=330, styles={"padding-right": "12px"})
        main = pn.Column(self.neurons, pn.Row(self.merge, self.tradeoff, sizing_mode="stretch_width"),
                         self.generations, sizing_mode="stretch_width")
        return pn.Column(pn.pane.Markdown(f"## {TITLE}\n{INTRO}"), pn.Row(sidebar, main, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")


def build_app(state: ExplorerState | None = None, *, load: bool = True) -> pn.viewable.Viewable:
    return pn.panel(ExplorerApp(state, load=load))
