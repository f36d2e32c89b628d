"""The explorer's views: each reads and sets an ExplorerState and implements __panel__.

    PairPicker       organism / any base+tuned pair (+ its evaluation suite) / a results folder, progress, errors
    Controls         method, K, M, alpha, gamma/epsilon, restore mode, locate, others
    NeuronView       layer x module heatmap of C(i) tail statistics + the sorted C(i) curve of a selection
    MergeView        per-module kept / restored fractions and C'(i)/C(i) of located neurons
    TradeoffView     LA vs VA of the current setting (pending shown as pending), visited points, pins; n items,
                     Wilson intervals, per-task accuracies
    CompareView      pinned recipes side by side and the items that change category between two of them
    GenerationsView  hard / suppress / restore answers per item (stacked), filters, row detail, transitions
    ExportView       recipe YAML, figures (HTML, PNG), generations CSV
"""

from __future__ import annotations

import html
import io
import os
import re
import shutil

import pandas as pd
import panel as pn
import param
import torch

from lfm.methods.recipe import STAGES, stage_recipes
from lfm.mergekit_export import mergekit_yaml, no_mergekit_form
from lfm.methods.registry import METHODS, SETTINGS, widgets_of
from lfm.spreadsheet import csv_text

from . import analysis, compute, figures, story
from .state import ExplorerState, _rounded

PLOT_HEIGHT = 380
HALF = {"flex": "1 1 430px", "min-width": "430px"}  # one of two panels side by side; below 860 px they stack
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
TASK_COLUMNS = ["kind", "task", "correct", "n", "accuracy", "lo", "hi"]
CHANGED_COLUMNS = ["id", "task", "question", "answer", "pin 1", "pin 2"]
NO_SORT = {"columnDefaults": {"headerSort": False}}  # sort arrows take header room; these tables are short
# the most rows a table sends to the page (a 100k-row generations.csv sent 63 MB over every page's websocket);
# a note under the filters says how many more there are and where they are
TABLE_ROWS = 200


def first_rows(table: pd.DataFrame, rest: str) -> tuple[pd.DataFrame, str]:
    """The first TABLE_ROWS rows of `table`, and the note that says so ('' when it has no more); `rest` says where
    the others are.

        >>> shown, note = first_rows(pd.DataFrame({"a": range(1000)}), "narrow them with the filters")
        >>> len(shown), note
        (200, '*showing the first 200 of 1000 rows: narrow them with the filters*')
    """
    if len(table) <= TABLE_ROWS:
        return table, ""
    return table.head(TABLE_ROWS), f"*showing the first {TABLE_ROWS} of {len(table)} rows: {rest}*"


class RowsTable:
    """A Tabulator whose rows are shown by putting a new table on the page, never by updating the shown one.

    Panel 1.9's Tabulator drops rows that reach the browser while it is still building that table (its
    `setData` returns early then): a page's first evaluation often lands in that window on a loaded machine,
    and the generations table stayed empty under a summary of its items. A table's first rows are part of
    what builds it, so a table whose rows never change cannot lose them. `widget` is the one shown now."""

    def __init__(self, value: pd.DataFrame, *, on_click=None, **options):
        self._options, self._on_click = options, on_click
        self.widget = self._build(value)
        self.panel = pn.Column(self.widget, margin=0, sizing_mode=options.get("sizing_mode"))

    def _build(self, value: pd.DataFrame) -> pn.widgets.Tabulator:
        widget = pn.widgets.Tabulator(value, **self._options)
        if self._on_click is not None:
            widget.on_click(self._on_click)
        return widget

    @property
    def value(self) -> pd.DataFrame:
        return self.widget.value

    @value.setter
    def value(self, value: pd.DataFrame) -> None:
        if value.equals(self.widget.value):  # same columns, in order, and same rows: the shown table stays
            return
        self.widget = self._build(value)
        self.panel.objects = [self.widget]

    def __panel__(self):
        return self.panel


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
        self.suite = pn.widgets.TextInput.from_param(s.param.suite_path, label="evaluation suite (suite YAML)",
                                                     placeholder="<root>/suite/suite.yaml; empty: organism only")
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
        for w, kind in ((self.base, "pair"), (self.tuned, "pair"), (self.suite, "pair"), (self.hub, "pair"),
                        (self.results, "results")):
            w.visible = s.source_kind == kind
        s.param.watch(self._kind_changed, "source_kind")

    def _kind_changed(self, event):
        self.base.visible = self.tuned.visible = self.suite.visible = self.hub.visible = event.new == "pair"
        self.results.visible = event.new == "results"

    @staticmethod
    def _describe(source):
        if source is None:
            return "*no pair loaded*"
        return as_text(source.description)

    def __panel__(self):
        return pn.Column("### Model pair", self.kind, self.base, self.tuned, self.suite, self.hub, self.results,
                         self.load_button,
                         self.bar, self.status, self.error, self.description, sizing_mode="stretch_width")


# a recipe setting -> the glossary word its widget's help explains (the others show the registry's help line)
SETTING_WORD = {"density": "Sub", "neurons": "locate", "restore": "restore", "locate": "locate"}


class MethodLine(View):
    """The current settings read as the method (``story.method_sentence``), always in view above the plots."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.line = pn.pane.Markdown(pn.bind(self._line, state.param.recipe), sizing_mode="stretch_width",
                                     css_classes=["lfm-method-line"], margin=(4, 10),
                                     styles={"font-size": "13px", "border-bottom": "1px solid #ddd"})

    @staticmethod
    def _line(recipe):
        return f"**{as_text(recipe.label)}**: {as_text(story.method_sentence(recipe))}"

    def __panel__(self):
        return pn.Row(self.line, pn.widgets.TooltipIcon(value=" ".join(story.GLOSSARY[w] for w in
                                                                      ("Δ", "C(i)", "Sub", "locate", "restore"))),
                      sizing_mode="stretch_width")


class FindingsView(View):
    """What the loaded pair's report found (``story.pair_findings``: read from its results.json, never written here)."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.text = pn.pane.Markdown(pn.bind(self._text, state.param.source), sizing_mode="stretch_width",
                                     css_classes=["lfm-findings"], styles={"font-size": "12px"})

    @staticmethod
    def _text(source):
        path, lines = story.pair_findings(source.tuned) if source is not None and getattr(source, "tuned", "") \
            else ("", [])
        if not lines:
            return ""
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
        return (f"**This pair's report** ({as_text(shown)}):  \n"
                + "  \n".join(f"• {as_text(line)}" for line in lines))

    def __panel__(self):
        return self.text


class TourView(View):
    """The paper's pipeline step by step on the loaded pair (``story.TOUR``): one picture, two sentences, back /
    next. The pictures are the selected tensor's (layer / module of the neuron views) and the generations'."""

    step = param.Integer(default=0, bounds=(0, len(story.TOUR) - 1))

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.back = pn.widgets.Button(label="◀ back", width=90, disabled=True)
        self.next = pn.widgets.Button(label="next ▶", width=90, color="primary")
        self.back.on_click(lambda e: self._move(-1))
        self.next.on_click(lambda e: self._move(+1))
        self.where = pn.pane.Markdown("", css_classes=["lfm-tour-step"], margin=(0, 10))
        self.words = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "13px"})
        s = state
        self.plot = pn.pane.Plotly(pn.bind(self.figure, self.param.step, s.param.source, s.param.layer,
                                           s.param.module, s.param.drawn_recipe, s.param.generations),
                                   height=PLOT_HEIGHT - 60, sizing_mode="stretch_width")
        self.param.watch(self._words, "step")
        self._words()

    def _move(self, by: int):
        self.step = min(max(self.step + by, 0), len(story.TOUR) - 1)

    def _words(self, *events):
        name, words = story.TOUR[self.step]
        self.where.object = f"**step {self.step + 1} of {len(story.TOUR)}: {name}**"
        self.words.object = words
        self.back.disabled, self.next.disabled = self.step == 0, self.step == len(story.TOUR) - 1

    @staticmethod
    def figure(step, source, layer, module, recipe, generations):
        name = story.TOUR_STEPS[step]
        if name == "answers":
            if generations is None or generations.empty:
                return figures.message_figure("no answers for this recipe: the stages need Neuron-Fusion or one "
                                              "of its suppressors, and an evaluated pair")
            return figures.stage_counts(generations, STAGES)
        if source is None:
            return figures.message_figure("load a pair")
        tensor = compute.tensor_name(source, layer, module)
        if tensor is None:
            return figures.message_figure(f"no {module} in layer {layer}")
        try:
            view = compute.module_view(source, tensor, recipe)
        except ValueError as e:
            return figures.message_figure(str(e))
        return figures.tour_figure(name, view, f"layer {layer} {module}", recipe.label, recipe.locate)

    def __panel__(self):
        return pn.Card(pn.Row(self.back, self.next, self.where), self.words, self.plot, sizing_mode="stretch_width",
                       title="Guided tour: the method step by step on this pair", collapsed=False,
                       css_classes=["lfm-tour"])


class Controls(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.method = pn.widgets.Select.from_param(s.param.method, label="method", description=(
            "the merge: Neu-S / Neu-P are the paper's Neuron-Fusion (suppress with the named method, then restore "
            "located neurons by rescale / replace); the others are the baselines it is compared with"))
        # one widget per recipe setting with a widget in the registry's settings table, in its order
        self.settings = {name: self._widget(name) for name, setting in SETTINGS.items() if setting.widget}
        for name, widget in self.settings.items():
            setattr(self, name, widget[-1])  # controls.density, controls.restore, ...: the input itself
        # what the column shows of each setting (a slider sits inside its row with its help icon)
        self.shown = {name: widget[:-1] if isinstance(widget[-1], pn.widgets.FloatSlider) else widget
                      for name, widget in self.settings.items()}
        self.per_task = pn.widgets.IntInput.from_param(s.param.per_task, label="eval items per task (0 = all)",
                                                       description=story.GLOSSARY["n"])
        self.reference = pn.pane.Markdown(pn.bind(self._reference, s.param.recipe), styles={"font-size": "11px"})
        s.param.watch(self._visibility, "recipe")
        self._visibility()

    def _widget(self, name: str) -> tuple:
        """The elements shown for one setting, its input last: (input,) for a list; (label, input) for buttons,
        which show no label of their own; (slider with its help icon, slider) for a slider (the last is not shown
        again: ``shown``)."""
        spec, parameter = SETTINGS[name].widget, self.state.param[name]
        help_text = story.GLOSSARY[SETTING_WORD[name]] if name in SETTING_WORD else SETTINGS[name].help
        if spec.bounds is not None:  # a slider has no help icon of its own in Panel 1.9: one beside it
            slider = self._slider(name, spec)
            return (pn.Row(slider, pn.widgets.TooltipIcon(value=help_text, margin=(24, 0, 0, 0)),
                           sizing_mode="stretch_width"), slider)
        if spec.buttons:
            return (pn.Row(pn.pane.Markdown(spec.label, margin=(0, 0, -12, 10)),
                           pn.widgets.TooltipIcon(value=help_text, margin=(0, 0, -12, 0))),
                    pn.widgets.RadioButtonGroup.from_param(parameter, label=spec.label))
        return (pn.widgets.Select.from_param(parameter, label=spec.label, description=help_text),)

    def _slider(self, name: str, spec) -> pn.widgets.FloatSlider:
        """A setting's slider, bound both ways by hand: the browser's value (on release, or per key press) sets
        the state, which rounds off its float noise (0.23000000000000004 -> 0.23, ``_round_sliders``); the state
        moves the slider only when it holds another number (a link, the tour), never to write that rounding back:
        a write-back in flight while the user pressed on would step the slider back one, out of step with the
        recipe the page evaluates (a lost key press in a burst)."""
        state = self.state
        slider = pn.widgets.FloatSlider(name=spec.label, start=spec.bounds[0], end=spec.bounds[1], step=spec.step,
                                        value=getattr(state, name), sizing_mode="stretch_width")
        slider.param.watch(lambda event: setattr(state, name, event.new), "value")  # throttled: on release

        def follow(event):
            if _rounded(slider.value) != event.new:
                slider.value = event.new

        state.param.watch(follow, name)
        return slider

    def _visibility(self, *events):
        """The widgets of the settings the current method (and its suppressor) reads (``widgets_of``)."""
        shown = widgets_of(self.state.recipe)
        for name, widgets in self.settings.items():
            for widget in widgets:
                widget.visible = name in shown

    @staticmethod
    def _reference(recipe):
        return f"**{recipe.label}** · [{METHODS[recipe.method].title}]({METHODS[recipe.method].reference})"

    def __panel__(self):
        return pn.Column("### Merge", self.method, *(w for widgets in self.shown.values() for w in widgets),
                         self.per_task, self.reference, sizing_mode="stretch_width")


class NeuronView(View):
    """Heatmap of a tail statistic per layer x module; click a cell (or pick layer/module) for its curve."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.metric = pn.widgets.Select.from_param(s.param.metric, label="heatmap statistic", width=200)
        self.metric_help = pn.pane.Markdown(pn.bind(lambda m: f"*{m}*: {figures.METRICS[m]}", s.param.metric),
                                            styles={"font-size": "12px"}, sizing_mode="stretch_width")
        self.layer = pn.widgets.IntInput.from_param(s.param.layer, label="layer", width=90)
        self.module = pn.widgets.Select.from_param(s.param.module, label="module", width=120)
        self.heatmap = pn.pane.Plotly(pn.bind(self.heatmap_figure, s.param.source, s.param.metric, s.param.layer,
                                              s.param.module), height=PLOT_HEIGHT, sizing_mode="stretch_width")
        self.curve = pn.pane.Plotly(pn.bind(self.curve_figure, s.param.source, s.param.layer, s.param.module,
                                            s.param.drawn_recipe, s.param.pinned), height=PLOT_HEIGHT + 60,
                                    sizing_mode="stretch_width")
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

    def curve_figure(self, source, layer, module, recipe, pinned=()):
        if source is None:
            return _empty_figure("load a pair")
        name = compute.tensor_name(source, layer, module)
        if name is None:
            return _empty_figure(f"no {module} in layer {layer}")
        try:
            view = compute.module_view(source, name, recipe)
        except ValueError as e:
            return _empty_figure(str(e))
        overlays, shared = [], []  # one C'(i) curve each: pins differing only in restore / M / locate share one
        for p in pinned:
            if p["recipe"] != recipe:
                try:
                    other = compute.module_view(source, name, p["recipe"])
                except ValueError:  # a pinned recipe this source cannot view (e.g. a results folder's non-TIES)
                    continue
                if torch.equal(other.suppressed, view.suppressed):
                    shared.append(p["recipe"].label)  # the current recipe's own C'(i) curve
                    continue
                same = [i for i, (_, o) in enumerate(overlays) if torch.equal(o.suppressed, other.suppressed)]
                if same:
                    overlays[same[0]] = (f"{overlays[same[0]][0]} = {p['recipe'].label}", overlays[same[0]][1])
                else:
                    overlays.append((p["recipe"].label, other))
        return figures.rank_curve(view, module, layer, recipe.label, locate=recipe.locate, head_dim=source.head_dim,
                                  n_heads=source.n_heads, n_kv_heads=source.n_kv_heads,
                                  note=compute.view_note(source, recipe), overlays=tuple(overlays),
                                  shared=tuple(shared))

    def __panel__(self):
        return pn.Column("### Neuron change scores C(i) = Σⱼ|Δᵢⱼ|", pn.Row(self.metric, self.layer, self.module),
                         self.metric_help, self.heatmap, self.curve, sizing_mode="stretch_width")


class MergeView(View):
    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.plot = pn.pane.Plotly(pn.bind(self.figure, state.param.source, state.param.drawn_recipe),
                                   height=PLOT_HEIGHT + 200, sizing_mode="stretch_width")

    @staticmethod
    def figure(source, recipe):
        if source is None:
            return _empty_figure("load a pair")
        try:
            outcome, ratios = compute.merge_outcome(source, recipe)
        except ValueError as e:
            return _empty_figure(str(e))
        return figures.outcome_figure(outcome, ratios, recipe.label, recipe.locate, compute.view_note(source, recipe))

    def __panel__(self):
        return pn.Column("### Merge outcome per module", self.plot, sizing_mode="stretch_width")


class TradeoffView(View):
    """LA vs VA of the current setting (a number only under its own recipe's label), the points visited,
    pinned recipes; below, n items and 95% Wilson intervals, and the per-task accuracies."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.plot = pn.pane.Plotly(pn.bind(self.figure, s.param.sweep, s.param.references, s.param.current,
                                           s.param.recipe, s.param.pending, s.param.not_precomputed,
                                           s.param.history, s.param.pinned, s.param.per_task),
                                   height=PLOT_HEIGHT + 120, sizing_mode="stretch_width",
                                   visible=pn.bind(self.has_points, s.param.current, s.param.references,
                                                   s.param.not_precomputed, s.param.pending))
        self.status = pn.pane.Markdown(pn.bind(self._status, s.param.eval_status, s.param.pending))
        # no numbers at all: one line in the plot's place (the status line above says why when it knows)
        self.empty = pn.pane.Markdown(pn.bind(self._empty_line, s.param.current, s.param.references,
                                              s.param.not_precomputed, s.param.pending, s.param.eval_status),
                                      sizing_mode="stretch_width")
        self.numbers = pn.pane.Markdown(pn.bind(self._numbers, s.param.current, s.param.recipe, s.param.pending),
                                        sizing_mode="stretch_width", styles={"font-size": "12px"})
        self.tasks = RowsTable(pd.DataFrame(columns=TASK_COLUMNS), show_index=False, disabled=True,
                               height=300, sizing_mode="stretch_width", layout="fit_columns", configuration=NO_SORT)
        self.tasks_title = pn.pane.Markdown("", sizing_mode="stretch_width")  # only over a table that is shown
        s.param.watch(self._tasks, ["current", "recipe", "pending"])
        self._tasks()

    @staticmethod
    def _status(text, pending):
        if pending:  # a spinner with what is computing; the numbers below stay those of their own label
            return f"⏳ computing **{as_text(pending)}** …"
        return _italic(text)

    @staticmethod
    def has_points(current, references, note="", pending="") -> bool:
        """Whether the trade-off plot has anything to draw (a number, a reference, or a line saying why not)."""
        return current is not None or (references is not None and not references.empty) or bool(note or pending)

    @classmethod
    def _empty_line(cls, current, references, note, pending, status):
        if cls.has_points(current, references, note, pending) or status:
            return ""
        return "*LA / VA appear once a pair with an evaluation is loaded (the organism, a pair with its suite, or a " \
               "results folder's sweep.csv)*"

    @classmethod
    def figure(cls, sweep, references, current, recipe, pending="", note="", history=(), pinned=(), per_task=None):
        if not cls.has_points(current, references, note, pending):
            return _empty_figure("no LA / VA")  # not shown: the one line of `empty` stands in its place
        return figures.tradeoff(sweep, references, current, recipe.label, pending=pending, note=note,
                                history=history, pinned=pinned, per_task=per_task)

    @staticmethod
    def _numbers(current, recipe, pending):
        if not current or current.get("label") != recipe.label or pending:
            return ""
        counts = analysis.item_counts(current)
        if not counts:
            return f"**{recipe.label}**: LA {current['LA']:.3f} · VA {current['VA']:.3f} (n items not in the folder)"
        parts = []
        for side, name in (("language", "LA"), ("visual", "VA")):
            if side in counts:
                k, n = counts[side]
                lo, hi = analysis.wilson_interval(k, n)
                parts.append(f"{name} {current[name]:.3f} ({k}/{n} items, 95% Wilson {lo:.2f}–{hi:.2f})")
        per_task = current.get("per_task", 0)
        if current.get("first_of") is not None:  # the first numbers of a move: all its items are computing
            rest = current["first_of"]
            return (f"**{recipe.label}**: " + " · ".join(parts) + f"  \n*first numbers, from the first {per_task} "
                    f"items per task; {'all items' if rest <= 0 else f'{rest} items per task'} computing: the "
                    f"interval narrows when they arrive.* LA / VA are means of per-task accuracies.")
        why = (f"Evaluated on {per_task} items per task ('eval items per task'); the organism report's numbers "
               "(docs/organism.md) use all held-out items (set it to 0), so they differ." if per_task else
               "Evaluated on all held-out items, as the organism report (docs/organism.md).")
        return f"**{recipe.label}**: " + " · ".join(parts) + f"  \n{why} LA / VA are means of per-task accuracies."

    def _tasks(self, *events):
        s = self.state
        c = s.current
        if not c or c.get("label") != s.recipe.label or s.pending:
            self.tasks.value = pd.DataFrame(columns=TASK_COLUMNS)
            self.tasks.panel.visible = False  # no empty box
            self.tasks_title.object = ""
            return
        self.tasks.value = analysis.per_task_table(c).round(3)
        self.tasks.panel.visible = not self.tasks.value.empty  # a results folder keeps no per-task answers
        self.tasks_title.object = "**per-task accuracy (current)**" if self.tasks.panel.visible else ""

    def top(self):
        """The plot (first screen)."""
        return pn.Column(self.status, self.empty, self.plot, sizing_mode="stretch_width", css_classes=["lfm-tradeoff"],
                         styles=HALF)

    def rest(self):
        """Its numbers and per-task accuracies (below the first screen)."""
        return pn.Column(self.numbers, self.tasks_title, self.tasks, sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Column("### Language vs visual ability", self.top(), self.rest(), sizing_mode="stretch_width")


GENERATION_COLUMNS = ["id", "image", "image_path", "task", "question", "choices", "answer", *[c for st in STAGES for c in (st, f"{st}_category")]]
SHOWN_COLUMNS = ["image", "task", "item", "answer", "answers"]  # the rest are hidden: one table, no sideways scroll


def _item_html(row) -> str:
    """Question and its choices, wrapped (every string from the file escaped)."""
    choices = row["choices"] if isinstance(row["choices"], str) else " / ".join(row["choices"])
    return (f'<div style="white-space:normal">{html.escape(str(row["question"]))}<br>'
            f'<span style="color:#666">{html.escape(choices)}</span></div>')


def _answers_html(row) -> str:
    """The three stages' answers and categories stacked in one cell."""
    lines = [f'<span class="lfm-{st}"><b>{st}</b>: {html.escape(str(row[st]))} '
             f'<i>({html.escape(str(row[f"{st}_category"]))})</i></span>' for st in STAGES]
    return '<div style="white-space:normal">' + "<br>".join(lines) + "</div>"


class GenerationsView(View):
    """Answers of hard-merge, suppress (M=0) and restore (M) on the multiple-choice items; click a row for
    its detail (full prompt, large image, the three answers)."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        # narrow enough for half of the main column at 1280 px (the first screen holds the trade-off beside it)
        self.task = pn.widgets.Select(label="task", options=["all"], width=115)
        self.stage = pn.widgets.Select(label="stage", options=list(STAGES), value="restore", width=95)
        self.category = pn.widgets.Select(label="category", options=["all", "correct", "wrong_choice", "not_known",
                                                                   "context_hallucination"], width=150)
        self.changed = pn.widgets.Checkbox(label="only items whose category changes between stages")
        # constant columns: every table shown here has one schema, the rows are all that change. Every row sent
        # is drawn (Tabulator's basic renderer, not its virtual one, which draws only the rows in view): at most
        # TABLE_ROWS rows reach the page, and the browser's find-in-page then finds any item shown
        self.table = RowsTable(
            self._shown(pd.DataFrame(columns=GENERATION_COLUMNS)), on_click=self._clicked, show_index=False,
            disabled=True, height=330,
            sizing_mode="stretch_width", formatters={"image": {"type": "html"}, "item": {"type": "html"},
                                                     "answers": {"type": "html"}},
            hidden_columns=[c for c in GENERATION_COLUMNS if c not in SHOWN_COLUMNS], pagination=None,
            layout="fit_columns", widths={"image": 56, "task": 70, "answer": 70}, titles={"image": "image"},
            header_filters=False, selectable=1, configuration={**NO_SORT, "renderVertical": "basic"})
        self.placeholder = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.more = pn.pane.Markdown("", sizing_mode="stretch_width")  # rows beyond TABLE_ROWS
        self.summary = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.stages = pn.pane.Markdown(pn.bind(self._stages, s.param.generations_recipe, s.param.answers_pending,
                                               s.param.answers_note, s.param.recipe), sizing_mode="stretch_width")
        self.transitions = RowsTable(pd.DataFrame(columns=["at suppress", "at restore", "items"]), show_index=False,
                                     disabled=True, height=200, width=420)
        self.detail = pn.pane.HTML("<i>click a row for the item's full prompt, large image and answers</i>",
                                   sizing_mode="stretch_width")
        s.param.watch(self._refresh, ["generations", "source"])
        for w in (self.task, self.stage, self.category, self.changed):
            w.param.watch(self._refresh, "value")
        self._refresh()

    @staticmethod
    def _stages(shown_recipe, pending, missing, recipe):
        notice = ""
        if pending:
            notice = f"⏳ computing the answers of **{pending}** …" + (
                f" (the table still shows **{shown_recipe.label}**)" if shown_recipe is not None else "") + "  \n"
        elif missing:
            return f"**{recipe.label}**: {missing}; no answers shown"  # built from numbers, not file text
        if shown_recipe is None:
            return notice
        try:
            stages = stage_recipes(shown_recipe)
        except ValueError as e:  # DARE, DELLA, hard-merge: no suppress/restore stages
            return notice + str(e)
        why = ""
        if not METHODS[shown_recipe.method].restores_neurons:  # a suppressor: its restore stage is the paper's
            why = (f"  \n*{METHODS[shown_recipe.method].title} restores no neurons (M does nothing for it): its "
                   f"restore stage is Neuron-Fusion over it at the default M={stages['restore'].neurons:g}*")
        return notice + " · ".join(f"**{name}**: {r.label}" for name, r in stages.items()) + why

    @staticmethod
    def _shown(t: pd.DataFrame) -> pd.DataFrame:
        t = t.reindex(columns=GENERATION_COLUMNS).reset_index(drop=True)
        t["item"] = [_item_html(r) for r in t.to_dict("records")]
        t["answers"] = [_answers_html(r) for r in t.to_dict("records")]
        return t

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
            # one line, and only where the stages line above says nothing (no pair, or a pair without evaluation)
            source = self.state.source
            self.placeholder.object = ("*no answers: this pair has no evaluation (load it with its suite)*"
                                       if source is not None and source.evaluation_off else
                                       "" if source is not None else "*answers appear once a pair is loaded*")
            self.table.value = self._shown(pd.DataFrame(columns=GENERATION_COLUMNS))
            self.table.panel.visible = False  # no empty box where there is nothing to show
            self.summary.object = self.more.object = ""
            self.transitions.value = pd.DataFrame(columns=["at suppress", "at restore", "items"])
            return
        self.placeholder.object = ""
        tasks = ["all"] + sorted(table["task"].unique())
        if self.task.options != tasks:
            self.task.options = tasks
        filtered = self.filtered()
        shown, self.more.object = first_rows(filtered, "narrow them with the filters above; the generations "
                                                       "CSV export holds them all")
        self.table.value = self._shown(shown)
        self.table.panel.visible = True
        self.summary.object = self.summary_text(table, filtered)
        self.transitions.value = compute.transition_counts(table, "suppress", "restore")

    @staticmethod
    def summary_text(table: pd.DataFrame, filtered: pd.DataFrame) -> str:
        """'**12 of 48 items** (filtered) · correct: hard 0, suppress 3, restore 7' over the rows the filters
        keep, then what changed between the stages over all of them."""
        n, k = len(table), len(filtered)
        counts = {s: int((filtered[f"{s}_category"] == "correct").sum()) for s in STAGES} if k else \
            dict.fromkeys(STAGES, 0)
        head = f"**{n} items**" if k == n else f"**{k} of {n} items** (filtered)"
        return (f"{head} · correct: hard {counts['hard']}, suppress {counts['suppress']}, restore "
                f"{counts['restore']}  \n{as_text(compute.fixed_summary(table))}")

    def _clicked(self, event):
        rows = self.table.value
        if event.row is None or not 0 <= event.row < len(rows):
            return
        self.detail.object = self.detail_html(rows.iloc[event.row])

    def detail_html(self, row) -> str:
        """The drill-down of one item: its image large, the full prompt, the three stages' answers."""
        image = compute.thumbnail(row["image_path"], size=192) if isinstance(row["image_path"], str) else ""
        return (f'<div style="display:flex;gap:16px;flex-wrap:wrap"><div>{image}</div>'
                f'<div style="flex:1 1 300px"><b>{html.escape(str(row["task"]))}</b> · item '
                f'{html.escape(str(row["id"]))}<br>{_item_html(row)}<br><b>answer</b>: '
                f'{html.escape(str(row["answer"]))}<br>{_answers_html(row)}</div></div>')

    def top(self):
        """The three stages' answers (first screen)."""
        return pn.Column(pn.Row(pn.pane.Markdown("#### Answers: hard-merge → suppress (M=0) → restore (M)",
                                                 margin=(0, 10)),
                                pn.widgets.TooltipIcon(value=" ".join(story.GLOSSARY[w] for w in
                                                                      ("suppress", "restore", "noimage")))),
                         self.stages, pn.Row(self.task, self.stage, self.category), self.changed, self.summary,
                         self.placeholder, self.more, self.table, sizing_mode="stretch_width",
                         css_classes=["lfm-generations"], styles=HALF)

    def rest(self):
        """The item detail and the transitions (below the first screen)."""
        return pn.Column("**item detail**", self.detail, "**suppress → restore transitions**", self.transitions,
                         sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Column(self.top(), self.rest(), sizing_mode="stretch_width")


class ExportView(View):
    """Downloads: the recipe (YAML for `lfm merge --config`; as a mergekit YAML where it has a mergekit form, else
    the one line saying why not), a figure (HTML or PNG), the generations (CSV)."""

    def __init__(self, state, figure_sources: dict, generations: GenerationsView, **params):
        super().__init__(state, **params)
        self.figure_sources = figure_sources  # name -> callable returning the current plotly figure
        self.generations_view = generations
        self.which = pn.widgets.Select(label="figure to export", options=list(figure_sources), width=200)
        self.recipe_button = pn.widgets.FileDownload(callback=self.recipe_file, filename="recipe.yaml",
                                                     label="recipe.yaml", color="success")
        self.mergekit_button = pn.widgets.FileDownload(callback=self.mergekit_file, filename="mergekit.yaml",
                                                       label="mergekit YAML")
        self.mergekit_note = pn.pane.Markdown("", sizing_mode="stretch_width")
        state.param.watch(self._mergekit_form, "recipe")
        self._mergekit_form()
        self.html_button = pn.widgets.FileDownload(callback=self.figure_html, filename="figure.html",
                                                   label="figure HTML", width=130)
        self.png_button = pn.widgets.FileDownload(callback=self.figure_png, filename="figure.png", label="figure PNG",
                                                  width=130)
        self.csv_button = pn.widgets.FileDownload(callback=self.generations_csv, filename="generations.csv",
                                                  label="generations CSV")
        self.which.param.watch(self._names, "value")
        self._names()

    def _names(self, *events):
        self.html_button.filename = f"{self.which.value}.html"
        self.png_button.filename = f"{self.which.value}.png"

    def recipe_file(self):
        return io.StringIO(self.state.recipe_yaml())

    def _mergekit_form(self, *events):
        reason = no_mergekit_form(self.state.recipe)
        self.mergekit_button.disabled = reason is not None
        self.mergekit_note.object = f"mergekit YAML: {reason}" if reason else ""

    def mergekit_file(self):
        source = self.state.source
        return io.StringIO(mergekit_yaml(self.state.recipe, source.base if source else "BASE_DIR",
                                         source.tuned if source else "TUNED_DIR"))

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
        return io.StringIO(csv_text(table))  # formula cells neutralised (lfm.spreadsheet)

    def __panel__(self):
        return pn.Column("### Export", self.recipe_button, self.mergekit_button, self.mergekit_note, self.which,
                         pn.Row(self.html_button, self.png_button),
                         self.csv_button, sizing_mode="stretch_width")


class CompareView(View):
    """Pinned recipes side by side: LA / VA / OA with n, per-task accuracies, and the items whose restore-stage
    category differs between the first two pins (their points are on the trade-off plot, their C'(i) on the
    rank curve)."""

    def __init__(self, state, **params):
        super().__init__(state, **params)
        s = state
        self.pin_button = pn.widgets.Button(label="pin current recipe", color="primary", width=170)
        self.pin_button.on_click(lambda e: s.pin())
        self.clear_button = pn.widgets.Button(label="clear pins", width=110)
        self.clear_button.on_click(lambda e: s.unpin_all())
        self.legend = pn.pane.Markdown("", sizing_mode="stretch_width")
        # no fixed height: every measure and task row shows (a short table, no scroll box)
        self.table = pn.widgets.Tabulator(pd.DataFrame(columns=["measure"]), show_index=False, disabled=True,
                                          sizing_mode="stretch_width", layout="fit_columns",
                                          configuration=NO_SORT)
        self.changed = pn.widgets.Tabulator(pd.DataFrame(columns=CHANGED_COLUMNS), show_index=False, disabled=True,
                                            height=240, sizing_mode="stretch_width", layout="fit_columns",
                                            formatters={c: {"type": "textarea"} for c in CHANGED_COLUMNS},
                                            widths={"id": 140, "task": 80, "answer": 80}, configuration=NO_SORT)
        self.note = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.table.visible = self.changed.visible = False  # shown once there is something to compare
        s.param.watch(self._refresh, "pinned")
        self._refresh()

    def _refresh(self, *events):
        pins = self.state.pinned
        self.table.value = self.comparison(pins) if pins else pd.DataFrame(columns=["measure"])
        self.legend.object = "  \n".join(f"**pin {i + 1}**: {p['recipe'].label}" for i, p in enumerate(pins))
        self.table.visible = bool(pins)
        self.changed.visible = len(pins) >= 2
        if len(pins) < 2:
            self.note.object = ("*pin a recipe, change a setting (e.g. locate top → random, rescale → replace), "
                                "pin again: they are compared here*")
            self.changed.value = pd.DataFrame(columns=CHANGED_COLUMNS)
            return
        pin1, pin2 = pins[0], pins[1]
        if pin1["generations"] is None or pin2["generations"] is None:
            self.note.object = "*no per-item answers for one of the first two pins (DARE, DELLA, hard-merge)*"
            self.changed.value = pd.DataFrame(columns=CHANGED_COLUMNS)
            return
        changed = analysis.changed_items(pin1["generations"], pin2["generations"])
        shown, more = first_rows(changed, "narrow the generations with its filters to see the others")
        self.note.object = (f"**{len(changed)} items** change restore-stage category between pin 1 "
                            f"({pin1['recipe'].label}) and pin 2 ({pin2['recipe'].label})"
                            + (f"  \n{more}" if more else ""))
        shown = shown.assign(**{"pin 1": shown["first"] + " (" + shown["first_category"] + ")",
                                "pin 2": shown["second"] + " (" + shown["second_category"] + ")"})
        self.changed.value = shown.reindex(columns=CHANGED_COLUMNS).reset_index(drop=True)

    @staticmethod
    def comparison(pins: list[dict]) -> pd.DataFrame:
        """One column per pinned recipe ('pin 1', ...), one row per measure: LA, VA, OA, items, each task."""
        columns = {}
        for i, p in enumerate(pins):
            c = p["current"]
            col = {"LA": round(c["LA"], 3), "VA": round(c["VA"], 3), "OA": round(c["OA"], 3)}
            for side, (k, n) in analysis.item_counts(c).items():
                col[f"{side} items correct"] = f"{k}/{n}"
            for t in analysis.per_task_table(c).to_dict("records"):
                col[f"{t['kind']}: {t['task']}"] = round(t["accuracy"], 3)
            columns[f"pin {i + 1}"] = col
        return pd.DataFrame(columns).rename_axis("measure").reset_index().astype(str)

    def __panel__(self):
        return pn.Column("### Compare pinned recipes", pn.Row(self.pin_button, self.clear_button), self.legend,
                         self.table,
                         self.note, self.changed, sizing_mode="stretch_width")
