"""The explorer's views: each reads and sets an ExplorerState and implements __panel__.

    PairPicker       organism / any base+tuned pair / a results folder, progress, errors
    Controls         method, K, M, alpha, gamma/epsilon, restore mode, locate, others
    NeuronView       layer x module heatmap of C(i) tail statistics + the sorted C(i) curve of a selection
    MergeView        per-module kept / restored fractions and C'(i)/C(i) of located neurons
    TradeoffView     LA vs VA of the current setting among sweep curves and reference points
    GenerationsView  hard / suppress / restore answers per item, filters, transition summary
    ExportView       recipe YAML, figures (HTML, PNG), generations CSV
"""

from __future__ import annotations

import io
import os
import re
import shutil

import pandas as pd
import panel as pn
import param

from lfm.methods import METHODS, STAGES, stage_recipes

from . import compute, figures
from .state import ExplorerState

PLOT_HEIGHT = 380
_MARKUP = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark: CommonMark lets each be escaped


def as_text(text: str) -> str:
    r"""`text` as Markdown that shows exactly its characters: nothing in it becomes markup.

    Every string that comes from a file, a path box or an error message (tensor names, config fields,
    a results folder's description) goes through here before a Markdown pane shows it: each ASCII
    punctuation mark is backslash-escaped, so `<img ...>`, links and emphasis stay literal text, and
    each line break is kept.

        >>> as_text("<img src=x onerror=alert(1)>")
        '\\<img src\\=x onerror\\=alert\\(1\\)\\>'
    """
    return "  \n".join(_MARKUP.sub(r"\\\1", line) for line in str(text).splitlines())


def _italic(text: str) -> str:
    return f"*{as_text(text)}*" if text else ""


def _empty_figure(message: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14))
    fig.update_layout(template="plotly_white", xaxis=dict(visible=False), yaxis=dict(visible=False),
                      title=message if len(message) < 80 else "", margin=dict(l=20, r=20, t=40, b=20))
    return fig


class View(param.Parameterized):
    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)


class PairPicker(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.kind = pn.widgets.RadioButtonGroup.from_param(s.param.source_kind, label="source", color="light")
        self.base = pn.widgets.TextInput.from_param(s.param.base_path, label="base LLM directory",
                                                    placeholder="/path/to/base")
        self.tuned = pn.widgets.TextInput.from_param(s.param.tuned_path, label="tuned MLLM directory",
                                                     placeholder="/path/to/tuned")
        self.hub = pn.widgets.Checkbox.from_param(s.param.hub_download,
                                                  label="download from the hub (org/name paths)")
        self.results = pn.widgets.TextInput.from_param(s.param.results_path, label="results folder",
                                                       placeholder="written by `lfm precompute`")
        self.load_button = pn.widgets.Button(label="Load", color="primary")
        self.load_button.on_click(lambda event: s.load())
        self.bar = pn.indicators.Progress(value=s.param.progress, max=100, sizing_mode="stretch_width",
                                          visible=s.param.loading, height=16)
        self.status = pn.pane.Markdown(pn.bind(_italic, s.param.status))
        self.error = pn.pane.Alert(pn.bind(as_text, s.param.error), alert_type="danger",
                                   visible=pn.bind(bool, s.param.error))
        self.description = pn.pane.Markdown(pn.bind(self._describe, s.param.source),
                                            styles={"font-size": "11px", "font-family": "monospace"})
        for w, kind in ((self.base, "pair"), (self.tuned, "pair"), (self.hub, "pair"), (self.results, "results")):
            w.visible = s.source_kind == kind
        s.param.watch(self._kind_changed, "source_kind")

    def _kind_changed(self, event):
        self.base.visible = self.tuned.visible = self.hub.visible = event.new == "pair"
        self.results.visible = event.new == "results"

    @staticmethod
    def _describe(source):
        if source is None:
            return "*no pair loaded*"
        return as_text(source.description)

    def __panel__(self):
        return pn.Column("### Model pair", self.kind, self.base, self.tuned, self.hub, self.results, self.load_button,
                         self.bar, self.status, self.error, self.description, sizing_mode="stretch_width")


class Controls(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.method = pn.widgets.Select.from_param(s.param.method, label="method")
        self.density = pn.widgets.FloatSlider.from_param(s.param.density, label="K (density: Δ entries kept)")
        self.neurons = pn.widgets.FloatSlider.from_param(s.param.neurons, label="M (neurons restored)")
        self.alpha = pn.widgets.FloatSlider.from_param(s.param.alpha, label="α")
        self.gamma = pn.widgets.FloatSlider.from_param(s.param.gamma, label="γ (breadcrumbs outliers)")
        self.epsilon = pn.widgets.FloatSlider.from_param(s.param.epsilon, label="ε (DELLA spread)")
        self.restore = pn.widgets.RadioButtonGroup.from_param(s.param.restore, label="restore")
        self.locate = pn.widgets.Select.from_param(s.param.locate, label="locate neurons")
        self.others = pn.widgets.Select.from_param(s.param.others, label="norms / embeddings / lm_head")
        self.per_task = pn.widgets.IntInput.from_param(s.param.per_task, label="eval items per task (0 = all)")
        self.reference = pn.pane.Markdown(pn.bind(self._reference, s.param.recipe), styles={"font-size": "11px"})
        s.param.watch(self._visibility, "recipe")
        self._visibility()

    def _visibility(self, *events):
        r = self.state.recipe
        uses = set(METHODS[r.method].uses)
        nf = r.method == "neuron_fusion"
        self.density.visible = "density" in uses and not (nf and r.suppress == "task_arithmetic")
        self.neurons.visible = self.restore.visible = self.locate.visible = nf
        self.gamma.visible = "gamma" in uses and (not nf or r.suppress == "breadcrumbs")
        self.epsilon.visible = "epsilon" in uses
        self.alpha.visible = r.method != "hard"

    @staticmethod
    def _reference(recipe):
        return f"**{recipe.label}** · [{METHODS[recipe.method].title}]({METHODS[recipe.method].reference})"

    def __panel__(self):
        return pn.Column("### Merge", self.method, self.density, self.neurons, self.restore, self.locate, self.alpha,
                         self.gamma, self.epsilon, self.others, self.per_task, self.reference,
                         sizing_mode="stretch_width")


class NeuronView(View):
    """Heatmap of a tail statistic per layer x module; click a cell (or pick layer/module) for its curve."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.metric = pn.widgets.Select.from_param(s.param.metric, label="heatmap statistic", width=200)
        self.layer = pn.widgets.IntInput.from_param(s.param.layer, label="layer", width=90)
        self.module = pn.widgets.Select.from_param(s.param.module, label="module", width=120)
        self.heatmap = pn.pane.Plotly(pn.bind(self.heatmap_figure, s.param.source, s.param.metric, s.param.layer,
                                              s.param.module), height=PLOT_HEIGHT, sizing_mode="stretch_width")
        self.curve = pn.pane.Plotly(pn.bind(self.curve_figure, s.param.source, s.param.layer, s.param.module,
                                            s.param.recipe), height=PLOT_HEIGHT, sizing_mode="stretch_width")
        self.heatmap.param.watch(self._clicked, "click_data")

    def _clicked(self, event):
        point = (event.new or {}).get("points", [{}])[0]
        if "x" in point and "y" in point and point["x"] in self.state.param.module.objects:
            self.state.param.update(module=point["x"], layer=int(point["y"]))

    @staticmethod
    def heatmap_figure(source, metric, layer, module):
        if source is None:
            return _empty_figure("load a pair to see its neuron change scores")
        return figures.heatmap(compute.neuron_summary(source), metric, (layer, module))

    def curve_figure(self, source, layer, module, recipe):
        if source is None:
            return _empty_figure("load a pair")
        name = compute.tensor_name(source, layer, module)
        if name is None:
            return _empty_figure(f"no {module} in layer {layer}")
        try:
            view = compute.module_view(source, name, recipe)
        except ValueError as e:
            return _empty_figure(str(e))
        return figures.rank_curve(view, module, layer, recipe.label, head_dim=source.head_dim,
                                  n_heads=source.n_heads, n_kv_heads=source.n_kv_heads)

    def __panel__(self):
        return pn.Column("### Neuron change scores C(i) = Σⱼ|Δᵢⱼ|", pn.Row(self.metric, self.layer, self.module),
                         pn.Row(self.heatmap, self.curve, sizing_mode="stretch_width"), sizing_mode="stretch_width")


class MergeView(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.plot = pn.pane.Plotly(pn.bind(self.figure, state.param.source, state.param.recipe),
                                   height=PLOT_HEIGHT, sizing_mode="stretch_width")

    @staticmethod
    def figure(source, recipe):
        if source is None:
            return _empty_figure("load a pair")
        try:
            outcome, ratios = compute.merge_outcome(source, recipe)
        except ValueError as e:
            return _empty_figure(str(e))
        return figures.outcome_figure(outcome, ratios, recipe.label)

    def __panel__(self):
        return pn.Column("### Merge outcome per module", self.plot, sizing_mode="stretch_width")


class TradeoffView(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.plot = pn.pane.Plotly(pn.bind(self.figure, s.param.sweep, s.param.references, s.param.current,
                                           s.param.recipe), height=PLOT_HEIGHT + 40, sizing_mode="stretch_width")
        self.status = pn.pane.Markdown(pn.bind(_italic, s.param.eval_status))

    @staticmethod
    def figure(sweep, references, current, recipe):
        if current is None and (references is None or references.empty):
            return _empty_figure("LA / VA: evaluated live on the organism, or read from a results folder's sweep.csv")
        return figures.tradeoff(sweep, references, current, current.get("label", recipe.label) if current else recipe.label)

    def __panel__(self):
        return pn.Column("### Language vs visual ability", self.status, self.plot, sizing_mode="stretch_width")


class GenerationsView(View):
    """Answers of hard-merge, suppress (M=0) and restore (M) on the multiple-choice items."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.task = pn.widgets.Select(label="task", options=["all"], width=140)
        self.stage = pn.widgets.Select(label="stage", options=list(STAGES), value="restore", width=110)
        self.category = pn.widgets.Select(label="category", options=["all", "correct", "wrong_choice", "not_known",
                                                                   "context_hallucination"], width=180)
        self.changed = pn.widgets.Checkbox(label="only items whose category changes between stages")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(), show_index=False, disabled=True, height=360, sizing_mode="stretch_width",
            formatters={"image": {"type": "html"}}, pagination=None, layout="fit_data_stretch")
        self.summary = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.stages = pn.pane.Markdown(pn.bind(self._stages, s.param.recipe), sizing_mode="stretch_width")
        self.transitions = pn.widgets.Tabulator(pd.DataFrame(), show_index=False, disabled=True, height=200,
                                                width=520)
        s.param.watch(self._refresh, "generations")
        for w in (self.task, self.stage, self.category, self.changed):
            w.param.watch(self._refresh, "value")
        self._refresh()

    @staticmethod
    def _stages(recipe):
        try:
            stages = stage_recipes(recipe)
        except ValueError as e:  # DARE, DELLA, hard-merge: no suppress/restore stages
            return str(e)
        return " · ".join(f"**{name}**: {r.label}" for name, r in stages.items())

    def filtered(self) -> pd.DataFrame:
        table = self.state.generations
        if table is None or table.empty:
            return pd.DataFrame()
        t = table
        if self.task.value != "all":
            t = t[t["task"] == self.task.value]
        if self.category.value != "all":
            t = t[t[f"{self.stage.value}_category"] == self.category.value]
        if self.changed.value:
            cats = t[[f"{x}_category" for x in STAGES]]
            t = t[cats.nunique(axis=1) > 1]
        return t

    def _refresh(self, *events):
        table = self.state.generations
        if table is None or table.empty:
            self.table.value = pd.DataFrame({"answers": ["evaluated live on the organism, or read from a results "
                                                         "folder's generations.csv"]})
            self.summary.object = ""
            self.transitions.value = pd.DataFrame()
            return
        tasks = ["all"] + sorted(table["task"].unique())
        if self.task.options != tasks:
            self.task.options = tasks
        self.table.value = self.filtered().reset_index(drop=True)
        n = len(table)
        counts = {s: int((table[f"{s}_category"] == "correct").sum()) for s in STAGES}
        self.summary.object = (f"**{n} items** · correct: hard {counts['hard']}, suppress {counts['suppress']}, "
                               f"restore {counts['restore']}  \n{as_text(compute.fixed_summary(table))}")
        self.transitions.value = compute.transition_counts(table, "suppress", "restore")

    def __panel__(self):
        return pn.Column("### Generations: hard-merge → suppress (M=0) → restore (M)",
                         self.stages,
                         pn.Row(self.task, self.stage, self.category, self.changed), self.summary, self.table,
                         "**suppress → restore transitions**", self.transitions, sizing_mode="stretch_width")


class ExportView(View):
    """Downloads: the recipe (YAML for `lfm merge --config`), a figure (HTML or PNG), the generations (CSV)."""

    def __init__(self, state, figure_sources: dict, generations: GenerationsView, **params):
        super().__init__(state, **params)
        self.figure_sources = figure_sources  # name -> callable returning the current plotly figure
        self.generations_view = generations
        self.which = pn.widgets.Select(label="figure", options=list(figure_sources), width=160)
        self.recipe_button = pn.widgets.FileDownload(callback=self.recipe_file, filename="recipe.yaml",
                                                     label="recipe.yaml", color="success")
        self.html_button = pn.widgets.FileDownload(callback=self.figure_html, filename="figure.html",
                                                   label="figure HTML")
        self.png_button = pn.widgets.FileDownload(callback=self.figure_png, filename="figure.png", label="figure PNG")
        self.csv_button = pn.widgets.FileDownload(callback=self.generations_csv, filename="generations.csv",
                                                  label="generations CSV")
        self.which.param.watch(self._names, "value")
        self._names()

    def _names(self, *events):
        self.html_button.filename = f"{self.which.value}.html"
        self.png_button.filename = f"{self.which.value}.png"

    def recipe_file(self):
        return io.StringIO(self.state.recipe_yaml())

    def current_figure(self):
        return self.figure_sources[self.which.value]()

    def figure_html(self):
        # plotly.js inlined: the file opens offline
        return io.StringIO(self.current_figure().to_html(include_plotlyjs=True, full_html=True))

    def figure_png(self):
        if "BROWSER_PATH" not in os.environ:  # kaleido drives a local Chromium; use the system one
            for candidate in ("chromium", "chromium-browser", "google-chrome"):
                if shutil.which(candidate):
                    os.environ["BROWSER_PATH"] = shutil.which(candidate)
                    break
        try:
            return io.BytesIO(self.current_figure().to_image(format="png", width=1100, height=500, scale=1))
        except Exception as e:
            self.state.error = f"PNG export needs kaleido and a local Chromium: {e}"
            return io.BytesIO(b"")

    def generations_csv(self):
        table = self.generations_view.filtered().drop(columns=["image"], errors="ignore")
        return io.StringIO(table.to_csv(index=False))

    def __panel__(self):
        return pn.Column("### Export", self.recipe_button, pn.Row(self.which, self.html_button, self.png_button),
                         self.csv_button, sizing_mode="stretch_width")
