"""Plotly figures of the explorer, from plain tables and TensorViews (no Panel: reusable in notebooks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lfm.neurons import LINEAR_MODULES

from .analysis import TensorView, head_groups, item_counts, wilson_interval

METRICS = {  # statistic -> what it means (shown under the heatmap's statistic picker)
    "top1_lift": "top-1% share over its no-concentration value: 1 = every neuron changed alike; comparable "
                 "across modules of any size (top1_share is not: its floor is 1/48 for a 48-neuron k_proj, "
                 "2/256 for a 256-neuron MLP)",
    "top1_share": "share of the total change Σ C(i) held by the top 1% of neurons (at least one); its "
                  "no-concentration value k/n depends on the module's size",
    "top10_share": "share of the total change Σ C(i) held by the top 10% of neurons (at least one)",
    "max_over_median": "largest C(i) over the median C(i)",
    "mean": "mean C(i) = mean over neurons of Σⱼ|Δᵢⱼ|",
    "max": "largest C(i)",
}
CURRENT = "#d62728"
STALE = "#b0b0b0"  # a result shown while another is computing: never under the new recipe's label
PIN_SYMBOLS = ("diamond", "cross", "triangle-down", "pentagon")
PIN_COLOURS = ("#9467bd", "#17becf", "#8c564b", "#e377c2")
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=70, b=50), font=dict(size=12))


def decade_log_axis(values) -> dict:
    """Axis settings for a log axis labelled at powers of ten only: plotly's own log ticks label 2 and 5 between
    decades ("1, 5, 2, 0.1, 5, 2"), which reads as a jumble. The range spans whole decades around the positive
    `values` (at least one), so at least two labels always show, plus a 0.05-decade margin so a point on a
    decade (rank 1) is not cut in half; unlabelled minor ticks mark 2..9.

    Example:
        >>> decade_log_axis([0.03, 2.5])["range"], decade_log_axis([0.03, 2.5])["dtick"]
        ([-2.05, 1.05], 1)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (int(np.floor(np.log10(v.min()))), int(np.ceil(np.log10(v.max())))) if v.size else (0, 1)
    return dict(type="log", range=[lo - 0.05, max(hi, lo + 1) + 0.05], dtick=1, exponentformat="power",
                minor=dict(ticks="outside", ticklen=3, dtick="D1"))


def two_line_title(head: str, detail: str = "") -> dict:
    """A short head line and a smaller detail line (a long single title is cut at narrow widths)."""
    text = head if not detail else f"{head}<br><span style='font-size:11px'>{detail}</span>"
    return dict(text=text, x=0.01, xanchor="left", font=dict(size=14))


def locate_name(locate: str) -> str:
    """'top' -> 'top-M', 'random' -> 'random-M (control)', 'bottom' -> 'bottom-M (control)'."""
    return "top-M" if locate == "top" else f"{locate}-M (control)"


def heatmap(summary: pd.DataFrame, metric: str, selected: tuple[int, str] | None = None) -> go.Figure:
    """Layer x module heatmap of a tail statistic of C(i). `selected` (layer, module) is outlined."""
    modules = [m for m in LINEAR_MODULES if m in set(summary["module"])]
    layers = sorted(summary["layer"].unique())
    grid = summary.pivot_table(index="layer", columns="module", values=metric).reindex(index=layers, columns=modules)
    fig = go.Figure(go.Heatmap(z=grid.values, x=modules, y=[str(layer) for layer in layers], colorscale="Viridis",
                               colorbar=dict(title=metric.replace("_", "<br>")), hovertemplate="layer %{y} %{x}<br>" + metric +
                               " = %{z:.3g}<extra></extra>"))
    if selected is not None and selected[1] in modules and selected[0] in layers:
        fig.add_shape(type="rect", x0=modules.index(selected[1]) - 0.5, x1=modules.index(selected[1]) + 0.5,
                      y0=layers.index(selected[0]) - 0.5, y1=layers.index(selected[0]) + 0.5,
                      line=dict(color=CURRENT, width=3))
    fig.update_layout(title=two_line_title(f"C(i) per layer × module: {metric}",
                                           METRICS.get(metric, "")[:90] + ("…" if len(METRICS.get(metric, "")) > 90 else "")),
                      xaxis_title="module", yaxis_title="layer", **LAYOUT)
    return fig


def host(tensor) -> np.ndarray:
    """A numpy copy of a view's vector wherever it lives (a pair held on a GPU gives CUDA tensors)."""
    return tensor.detach().cpu().numpy()


def rank_curve(view: TensorView, module: str, layer: int, recipe_label: str, *, locate: str = "top", head_dim=None,
               n_heads=None, n_kv_heads=None, note: str = "", overlays: tuple = (), shared: tuple = ()) -> go.Figure:
    """Sorted C(i) on log-log axes (rank 1 = largest change), with C'(i) after suppression at K in the
    same order, and the located (restored) neurons marked. Attention neurons are coloured by head; for
    GQA k/v each kv head serves n_heads / n_kv_heads query heads. `overlays` ((label, TensorView), ...) adds
    pinned recipes' C'(i) in the same rank order (pins with one C'(i) share one curve, labelled 'A = B'); `shared`
    names pinned recipes whose C'(i) is the current one's (said in one line, not drawn again); `note` is a caveat
    line (e.g. a results folder's nearest K)."""
    order = np.argsort(-host(view.scores), kind="stable")
    scores = host(view.scores)[order]
    after = host(view.suppressed)[order]
    located = host(view.located)[order]
    rank = np.arange(1, len(scores) + 1)
    groups = head_groups(module, len(scores), head_dim, n_heads, n_kv_heads)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rank, y=scores, mode="lines", name="C(i) before merge",
                             line=dict(color="#1f77b4", width=2)))
    kv = module in ("k_proj", "v_proj") and n_heads and n_kv_heads and n_kv_heads < n_heads
    if groups is not None:
        g = host(groups)[order]
        group_size = (n_heads // n_kv_heads) if kv else 1
        for h in np.unique(g):
            sel = g == h
            name = (f"kv head {h} (query heads {h * group_size}-{h * group_size + group_size - 1})" if kv
                    else f"head {h}")
            sel &= after > 0  # a neuron with nothing left after suppression has no point on a log axis
            fig.add_trace(go.Scatter(x=rank[sel], y=after[sel], mode="markers", name=f"C'(i) {name}",
                                     marker=dict(size=5, symbol="circle-open"), legendgroup="after"))
    else:
        sel = after > 0  # a neuron with nothing left after suppression has no point on a log axis
        fig.add_trace(go.Scatter(x=rank[sel], y=after[sel], mode="markers", name="C'(i) after suppression at K",
                                 marker=dict(size=4, color="#ff7f0e", symbol="circle-open")))
    if located.any():
        fig.add_trace(go.Scatter(x=rank[located], y=scores[located], mode="markers",
                                 name=f"located {locate_name(locate)} ({int(located.sum())}) → restored",
                                 marker=dict(size=7, color=CURRENT, symbol="diamond")))
    for i, (label, other) in enumerate(overlays):
        o = host(other.suppressed)[order]
        sel = o > 0
        fig.add_trace(go.Scatter(x=rank[sel], y=o[sel], mode="lines", name=f"pinned: C'(i) {label}",
                                 line=dict(color=PIN_COLOURS[i % len(PIN_COLOURS)], width=1, dash="dot")))
    if shared:
        fig.add_annotation(text="same C′(i) as the current recipe: pinned " + ", ".join(shared), xref="paper",
                           yref="paper", x=0.98, y=0.98, xanchor="right", showarrow=False, font=dict(size=10))
    n_zero = int((after == 0).sum())
    if n_zero:
        fig.add_annotation(text=f"{n_zero} neurons with C'(i) = 0 (all entries suppressed)", xref="paper",
                           yref="paper", x=0.02, y=0.02, showarrow=False, font=dict(size=10))
    gqa = ""
    if kv:
        gqa = f" · GQA: {n_kv_heads} kv heads × {head_dim}, each shared by {n_heads // n_kv_heads} query heads"
    detail = recipe_label + (f" · {note}" if note else "") + gqa
    fig.update_layout(title=two_line_title(f"Layer {layer} {module}: sorted C(i), {len(scores)} neurons", detail),
                      xaxis=dict(decade_log_axis(rank), title="rank of neuron (by C(i))"),
                      yaxis=dict(decade_log_axis(np.concatenate([scores, after] + [host(o.suppressed) for _, o in overlays])),
                                 title="change score"), **LAYOUT)
    fig.update_layout(legend=dict(font=dict(size=10), orientation="h", y=-0.2, x=0), margin=dict(b=110))
    return fig


def outcome_figure(outcome: pd.DataFrame, ratios: pd.DataFrame, recipe_label: str, locate: str = "top",
                   note: str = "") -> go.Figure:
    """Per module (mean over layers): entries kept, share of the change after suppression and after the
    merge; and below it the distribution of C'(i)/C(i) over located neurons (what Rescale multiplies back)."""
    modules = [m for m in LINEAR_MODULES if m in set(outcome["module"])]
    mean = outcome.groupby("module")[["kept_entries", "change_after_suppress", "change_after_merge",
                                      "located_fraction"]].mean().reindex(modules)
    located = not ratios.empty
    # the ratios' panel only where neurons were located; otherwise one line in the title says why there is none
    fig = make_subplots(rows=2 if located else 1, cols=1, vertical_spacing=0.2,
                        subplot_titles=("Δ kept and restored per module (mean over layers)",
                                        f"C′(i)/C(i) of the located neurons ({locate_name(locate)}): what rescale "
                                        "multiplies back")[:2 if located else 1])
    bars = (("kept_entries", "Δ entries kept by Sub", "#1f77b4"),
            ("change_after_suppress", "change left after suppress: Σ C′(i) / Σ C(i)", "#ff7f0e"),
            ("change_after_merge", "change in the merged model: Σ C_final(i) / Σ C(i)", "#2ca02c"),
            ("located_fraction", f"neurons located ({locate_name(locate)})", CURRENT))
    for col, label, colour in bars:
        if col == "located_fraction" and not located:
            continue
        fig.add_trace(go.Bar(x=modules, y=mean[col].values, name=label, marker_color=colour), row=1, col=1)
    if located:
        for m in modules:
            r = ratios[ratios["module"] == m]["ratio"]
            if len(r):  # one colour: the module is the x axis already
                fig.add_trace(go.Box(y=r.values, name=m, showlegend=False, boxpoints=False, marker_color="#7f7f7f"),
                              row=2, col=1)
    detail = recipe_label + (f" · {note}" if note else "") + ("" if located else " · no neurons located (M=0, or "
                                                                                  "not Neuron-Fusion)")
    fig.update_layout(title=two_line_title("Merge outcome per module", detail),
                      barmode="group", **{**LAYOUT, "margin": dict(l=50, r=20, t=80, b=40)},
                      legend=dict(orientation="h", y=-0.12 if located else -0.25, x=0, font=dict(size=10)))
    fig.update_xaxes(categoryorder="array", categoryarray=modules, tickangle=0)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    return fig


def items_text(per_task) -> str:
    """What a point's evaluation size reads as in its hover: 'n = 8 items per task', 'n = all items'."""
    if per_task is None or (isinstance(per_task, float) and np.isnan(per_task)):
        return "n = as in the results folder"
    return "n = all items" if int(per_task) <= 0 else f"n = {int(per_task)} items per task"


# the settings a sweep curve can vary, with the key its points are labelled by (registry labels: K, M, a)
CURVE_AXES = (("density", "K"), ("neurons", "M"), ("alpha", "a"))


def curve_axis(points: pd.DataFrame) -> tuple[str, str] | None:
    """(column, key) of the setting that varies along one sweep curve; None when none does."""
    for column, key in CURVE_AXES:
        if column in points and points[column].nunique(dropna=True) > 1:
            return column, key
    return None


def tradeoff(sweep: pd.DataFrame | None, refs: pd.DataFrame, current: dict | None, recipe_label: str, *,
             pending: str = "", note: str = "", history: list | tuple = (), pinned: list | tuple = (),
             per_task: int | None = None) -> go.Figure:
    """LA (x) vs VA (y): sweep curves, base / tuned / hard-merge references, the points visited (`history`:
    dicts label, LA, VA, per_task), pinned recipes, and the current setting.

    A number is drawn under its own recipe's label only: `current` (a dict with 'label', LA, VA, OA) is the
    red star and titled only when its label is `recipe_label`; otherwise it is a grey 'last computed' point
    and the title says what is computing (`pending`) or why there is nothing (`note`).

    One evaluation size per plot: with `per_task` given, curve points, visited points and pins measured on another
    number of items are drawn grey under a label saying so (they are not comparable); every point's hover says n.
    Each curve is drawn in the order of the setting it varies, that setting's value printed at each point.
    """
    fig = go.Figure()

    def same_size(n) -> bool:
        return per_task is None or n is None or (isinstance(n, float) and np.isnan(n)) or int(n) == int(per_task)

    if sweep is not None and not sweep.empty:
        for curve, g in sweep.groupby("curve", sort=False):
            axis = curve_axis(g)
            if axis is not None:
                g = g.sort_values(axis[0])
            n = g["per_task"].iloc[0] if "per_task" in g else None
            text = [f"{axis[1]}={v:g}" for v in g[axis[0]]] if axis else None
            comparable = same_size(n)
            fig.add_trace(go.Scatter(
                x=g["LA"], y=g["VA"], mode="lines+markers+text" if text else "lines+markers",
                name=curve if comparable else f"{curve} ({items_text(n)}: another size, not comparable)",
                text=text, textposition="top right", textfont=dict(size=9), customdata=g["label"],
                hovertemplate="%{customdata}<br>LA %{x:.3f} VA %{y:.3f}<br>" + items_text(n) + "<extra></extra>",
                **(dict(marker=dict(size=6)) if comparable else
                   dict(line=dict(color=STALE, dash="dot"), marker=dict(size=5, color=STALE)))))
    symbols = {"tuned": "square", "hard-merge": "x", "base": "triangle-up"}
    for r in refs.to_dict("records"):
        if r["VA"] is None or pd.isna(r["VA"]):  # the base LLM has no visual ability: a vertical line
            fig.add_vline(x=r["LA"], line=dict(dash="dash", color="gray"),
                          annotation_text=f"base LA {r['LA']:.2f}", annotation_position="top left")
            continue
        fig.add_trace(go.Scatter(x=[r["LA"]], y=[r["VA"]], mode="markers+text", name=r["label"], text=[r["label"]],
                                 textposition="top center", marker=dict(size=12, color="black",
                                                                        symbol=symbols.get(r["label"], "circle")),
                                 hovertemplate=f"{r['label']}<br>LA %{{x:.3f}} VA %{{y:.3f}}<br>{items_text(per_task)}"
                                               "<extra></extra>"))
    for comparable in (True, False):
        shown = [h for h in history if same_size(h.get("per_task")) == comparable]
        if shown:
            fig.add_trace(go.Scatter(
                x=[h["LA"] for h in shown], y=[h["VA"] for h in shown], mode="markers",
                name="visited" if comparable else "visited at another n (not comparable)",
                text=[h["label"] for h in shown], customdata=[items_text(h.get("per_task")) for h in shown],
                hovertemplate="%{text}<br>LA %{x:.3f} VA %{y:.3f}<br>%{customdata}<extra>visited</extra>",
                marker=dict(size=7, color="#7f7f7f" if comparable else STALE,
                            symbol="circle" if comparable else "circle-open")))
    for i, p in enumerate(pinned):
        c = p["current"]
        comparable = same_size(c.get("per_task"))
        fig.add_trace(go.Scatter(
            x=[c["LA"]], y=[c["VA"]], mode="markers",
            name=f"pinned: {c['label']}" + ("" if comparable else f" ({items_text(c.get('per_task'))}, not comparable)"),
            hovertemplate=f"pinned {c['label']}<br>LA %{{x:.3f}} VA %{{y:.3f}}<br>{items_text(c.get('per_task'))}"
                          "<extra></extra>",
            marker=dict(size=14, color=PIN_COLOURS[i % len(PIN_COLOURS)] if comparable else STALE,
                        symbol=PIN_SYMBOLS[i % len(PIN_SYMBOLS)])))
    head, detail = "Trade-off LA vs VA", ""
    if current and current.get("LA") is not None and current.get("label") == recipe_label and not pending:
        bars, spans = wilson_bars(current)
        n = items_text(current.get("per_task"))
        if current.get("first_of") is not None:  # a move's first numbers: all its items are computing
            n += f" (first numbers; {items_text(current['first_of'])} computing)"
            head += f" · first {int(current['per_task'])} items per task …"  # the head line has room
        fig.add_trace(go.Scatter(x=[current["LA"]], y=[current["VA"]], mode="markers",
                                 name=f"current: {recipe_label}", marker=dict(size=18, color=CURRENT, symbol="star"),
                                 hovertemplate=f"{recipe_label}<br>LA %{{x:.3f}} VA %{{y:.3f}}<br>{n}"
                                               f"{'<br>' + spans if spans else ''}<extra>current</extra>", **bars))
        detail = (f"current {recipe_label}: LA {current['LA']:.3f} VA {current['VA']:.3f} "
                  f"OA {current['OA']:.3f}")
    else:
        if current and current.get("LA") is not None:
            fig.add_trace(go.Scatter(x=[current["LA"]], y=[current["VA"]], mode="markers",
                                     name=f"last computed: {current['label']}",
                                     marker=dict(size=14, color=STALE, symbol="star")))
        if pending:
            detail = f"computing {pending} …"
        elif note:
            detail = f"{recipe_label}: {note}"
    fig.update_layout(title=two_line_title(head, detail), xaxis_title="LA (language ability)",
                      yaxis_title="VA (visual ability)", **LAYOUT)
    fig.update_layout(legend=dict(orientation="h", y=-0.22, x=0, font=dict(size=10)), margin=dict(b=130))
    return fig


def wilson_bars(current: dict) -> tuple[dict, str]:
    """Error bars of the current point: the 95% Wilson interval of each side's items correct (the interval of
    LA / VA when every task has as many items; ``analysis.item_counts``), as Scatter keyword arguments, and the
    line that says them ('LA 12/24 items, 95% 0.31–0.69 · VA ...'); ({}, '') when the result holds no answers
    (a results folder).

        >>> bars, line = wilson_bars({"LA": 0.5, "VA": 1.0, "language_answers": [{"correct": 1}, {"correct": 0}],
        ...                           "answers": [{"category": "correct"}]})
        >>> sorted(bars), line
        (['error_x', 'error_y'], 'LA 1/2 items, 95% 0.09–0.91 · VA 1/1 items, 95% 0.21–1.00')
    """
    bars, parts = {}, []
    for side, name, axis in (("language", "LA", "error_x"), ("visual", "VA", "error_y")):
        if side not in item_counts(current) or current.get(name) is None:
            continue
        k, n = item_counts(current)[side]
        lo, hi = wilson_interval(k, n)
        value = current[name]
        bars[axis] = dict(type="data", symmetric=False, array=[max(hi - value, 0.0)],
                          arrayminus=[max(value - lo, 0.0)], color=CURRENT, thickness=1.5, width=4)
        parts.append(f"{name} {k}/{n} items, 95% {lo:.2f}–{hi:.2f}")
    return bars, " · ".join(parts)


def message_figure(message: str) -> go.Figure:
    """One line of text where a figure would be (no axes, no box)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0, y=0.5, xref="paper", yref="paper", xanchor="left", showarrow=False,
                       font=dict(size=13))
    fig.update_layout(template="plotly_white", xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=10, b=10))
    return fig


def stage_counts(generations: pd.DataFrame, stages) -> go.Figure:
    """Correct answers per stage (hard, suppress, restore) on the generations' items: one bar per stage."""
    n = len(generations)
    correct = [int((generations[f"{s}_category"] == "correct").sum()) for s in stages]
    fig = go.Figure(go.Bar(x=list(stages), y=correct, marker_color="#1f77b4", text=[f"{c}/{n}" for c in correct],
                           textposition="outside", hovertemplate="%{x}: %{y} of " + str(n) + " correct<extra></extra>"))
    fig.update_layout(title=two_line_title("Correct answers per stage", f"n = {n} visual items"),
                      yaxis=dict(title="items answered correctly", range=[0, max(n, 1) * 1.15]), **LAYOUT)
    return fig


# a tour step -> the traces its picture draws of one tensor's TensorView: (what, its legend name)
TOUR_TRACES = {
    "Δ": (("scores", "C(i) = Σⱼ|Δᵢⱼ| per neuron, in the order of the weight matrix's rows"),),
    "C(i)": (("sorted", "C(i), largest first"),),
    "suppress": (("sorted", "C(i) before"), ("suppressed", "C′(i) after suppression at K")),
    "locate": (("sorted", "C(i)"), ("located", "located neurons")),
    "restore": (("sorted", "C(i) before"), ("suppressed", "C′(i) after suppression"),
                ("final", "C_final(i) after restore")),
}
TOUR_STYLE = {"scores": dict(color="#1f77b4"), "sorted": dict(color="#1f77b4"), "suppressed": dict(color="#ff7f0e"),
              "located": dict(color=CURRENT), "final": dict(color="#2ca02c")}


def tour_figure(step: str, view: TensorView, tensor: str, recipe_label: str, locate: str = "top") -> go.Figure:
    """The picture of one tour step (``TOUR_TRACES``) for one tensor: its neurons by C(i) rank (log-log, decade
    labels), or (step Δ) in row order."""
    order = np.argsort(-host(view.scores), kind="stable")
    rank = np.arange(1, len(order) + 1)
    series = {"scores": host(view.scores), "sorted": host(view.scores)[order],
              "suppressed": host(view.suppressed)[order], "final": host(view.final)[order]}
    located = host(view.located)[order] if view.located.numel() else np.zeros(len(order), dtype=bool)
    fig = go.Figure()
    shown = []
    for what, name in TOUR_TRACES[step]:
        if what == "located":
            x, y = rank[located], series["sorted"][located]
            name = f"{name} ({locate_name(locate)}, {int(located.sum())})"
            fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=name, marker=dict(size=7, symbol="diamond",
                                                                                      **TOUR_STYLE[what])))
        else:
            x = np.arange(1, len(order) + 1) if what == "scores" else rank
            y = series[what]
            keep = y > 0  # a log axis has no zero
            fig.add_trace(go.Scatter(x=x[keep], y=y[keep], mode="lines", name=name, line=dict(**TOUR_STYLE[what])))
        shown.append(y)
    values = np.concatenate([np.asarray(v, dtype=float) for v in shown]) if shown else np.array([])
    xaxis = dict(title="neuron (row of the weight)") if step == "Δ" else \
        dict(title="rank of neuron by C(i)", **decade_log_axis(rank))
    fig.update_layout(title=two_line_title(f"{step}: {tensor}", recipe_label), xaxis=xaxis,
                      yaxis=dict(title="change score", **decade_log_axis(values)), **LAYOUT)
    fig.update_layout(legend=dict(orientation="h", y=-0.25, x=0, font=dict(size=10)), margin=dict(b=90))
    return fig
