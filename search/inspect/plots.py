"""Plots of a study: the Pareto front, the hypervolume history and the front's per-layer choices.

Each plot is written as a PNG (matplotlib's object API on Agg: no display, no global backend)
and as an interactive HTML file (plotly, JavaScript inlined so it opens offline). The figure
builders take plain data (:class:`PlotData`); only :meth:`PlotData.from_study` reads Optuna.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from evaluators.base import Objective
from search.inspect import pareto
from search.study import baseline_of, feasible, results as study_results
from search.trials.trial import TrialResult

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes

    from spaces.base import Plan

Y_METRIC = "accuracy"
# metric: (axis label with its unit, factor from the stored unit to the shown one)
AXES: dict[str, tuple[str, float]] = {
    "accuracy": ("accuracy (%)", 1.0), "size_bytes": ("ONNX file size (KB)", 1e-3),
    "compressed_bytes": ("compressed size (KB)", 1e-3), "latency_ms": ("latency, batch 1 (ms)", 1.0),
    "params": ("parameters (thousands)", 1e-3), "macs": ("MACs (millions)", 1e-6)}
HV_TITLE, HV_AXIS = "Hypervolume of the feasible Pareto front after each trial", "hypervolume (objectives / baseline)"
DPI = 100


@dataclass(frozen=True)
class PlotData:
    """Everything the plots show, as plain values; ``results`` holds every completed trial in order."""
    results: Sequence[TrialResult]
    feasible: frozenset[int]
    front: Sequence[TrialResult]
    baseline: Mapping[str, float]
    objectives: Sequence[Objective]
    references: frozenset[int]
    hv_history: Sequence[tuple[int, float]]
    layers: Sequence[str]

    @classmethod
    def from_study(cls, study: optuna.Study, objectives: Sequence[Objective]) -> PlotData:
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "result" in t.user_attrs]
        results = study_results(study)  # with the figures confirmed when the search ended
        ok, baseline = frozenset(t.number for t in done if feasible(t)), baseline_of(study)
        order = [name.partition(".")[2] for name in (done[0].params if done else ()) if name.startswith("quant.")]
        return cls(results=results, feasible=ok, front=pareto.front([r for r in results if r.number in ok], objectives),
                   baseline=baseline, objectives=objectives, layers=layer_order(results, order),
                   references=frozenset(t.number for t in done if t.user_attrs.get("reference")),
                   hv_history=hypervolume_history(results, ok, objectives, baseline))


def hypervolume_history(results: Sequence[TrialResult], feasible_numbers: frozenset[int],
                        objectives: Sequence[Objective], baseline: Mapping[str, float]) -> list[tuple[int, float]]:
    """Hypervolume of the feasible trials numbered up to each completed trial (dominated ones add nothing)."""
    ordered = sorted(results, key=lambda r: r.number)
    pools = [[r for r in ordered[:i + 1] if r.number in feasible_numbers] for i in range(len(ordered))]
    return [(r.number, pareto.hypervolume(pool, objectives, baseline) if baseline else 0.0)
            for r, pool in zip(ordered, pools)]


def layer_order(results: Sequence[TrialResult], params_order: Sequence[str] = ()) -> list[str]:
    """Layers in model order: Optuna keeps the precision knobs in definition order; the rest sort naturally."""
    seen = {name for r in results for layers in r.plan.values.values() for name in layers}
    ordered = list(dict.fromkeys(n for n in params_order if n in seen))
    natural = (lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])
    return ordered + sorted(seen - set(ordered), key=natural)


def plan_label(plan: Plan) -> str:
    """A short name for a hand-made plan: "no compression", "int8 only", "prune 0.25 + int8"."""
    ratios, precisions = set(plan.prune.values()) or {0.0}, set(plan.quant.values()) or {"fp32"}
    if len(ratios) > 1 or len(precisions) > 1:
        return "mixed plan"
    ratio, precision = ratios.pop(), precisions.pop()
    if ratio == 0:
        return "no compression" if precision == "fp32" else f"{precision} only"
    return f"prune {ratio:g} + {precision}"


def x_metrics(data: PlotData) -> list[str]:
    """Size and latency, then any other minimised objective, when the trials measured them."""
    wanted = ["size_bytes", "latency_ms", *(o.metric for o in data.objectives if o.metric != Y_METRIC)]
    return [m for m in dict.fromkeys(wanted) if all(m in r.metrics for r in data.results) and m in data.baseline]


def _axis(metric: str) -> tuple[str, float]:
    return AXES.get(metric, (metric, 1.0))  # unknown metrics: their own name, unscaled


def _xy(results: Sequence[TrialResult], metric: str) -> tuple[np.ndarray, np.ndarray]:
    scale = _axis(metric)[1]
    return np.array([r.metrics[metric] * scale for r in results]), np.array([r.metrics[Y_METRIC] for r in results])


def _groups(data: PlotData) -> dict[str, list[TrialResult]]:
    members = {r.number for r in data.front}  # drawn on their own, on top
    return {"feasible": [r for r in data.results if r.number in data.feasible and r.number not in members],
            "infeasible": [r for r in data.results if r.number not in data.feasible],
            "front": sorted(data.front, key=lambda r: r.number),
            "reference": [r for r in data.results if r.number in data.references]}


def _front_2d(members: Sequence[TrialResult], metric: str) -> list[TrialResult]:
    """The members still non-dominated on (accuracy, ``metric``) alone, by ``metric``: the staircase to draw."""
    view = [Objective(Y_METRIC, "maximize"), Objective(metric, "minimize")]
    return sorted(pareto.front(list(members), view), key=lambda r: r.metrics[metric])


def _front_axes(ax: Axes, data: PlotData, metric: str, named: bool) -> None:
    """One panel of the front PNG: accuracy against ``metric``; ``named`` spells out the reference plans."""
    (label, scale), groups = _axis(metric), _groups(data)
    ax.scatter(*_xy(groups["feasible"], metric), s=30, c="tab:blue", alpha=0.35, label="feasible trial")
    ax.scatter(*_xy(groups["infeasible"], metric), s=40, marker="x", c="tab:red", alpha=0.7,
               label="infeasible trial (breaks a constraint)")
    ax.plot(*_xy(_front_2d(groups["front"], metric), metric), "-", c="tab:orange", lw=1.5, drawstyle="steps-post",
            label="front in this 2-D view", zorder=2)
    ax.plot(*_xy(groups["front"], metric), "o", c="tab:orange", ms=9, mec="black",
            label="Pareto front (all objectives)", zorder=3)
    ax.scatter(*_xy(groups["reference"], metric), s=160, marker="s", facecolors="none", edgecolors="tab:green", lw=2,
               label="reference plan")
    for r in {r.number: r for r in (*groups["front"], *groups["reference"])}.values():
        ref = r.number in data.references
        ax.annotate(f"#{r.number}" + (f" {plan_label(r.plan)}" if ref and named else ""), (r.metrics[metric] * scale,
                    r.metrics[Y_METRIC]), xytext=(7, -14 if ref else 6), textcoords="offset points", fontsize=8,
                    color="darkgreen" if ref else "black", weight="bold")
    bx, by = data.baseline[metric] * scale, data.baseline[Y_METRIC]
    ax.scatter([bx], [by], s=260, marker="*", c="black", label="baseline (fp32, unpruned)", zorder=4)
    ax.annotate("baseline", (bx, by), xytext=(-8, 8), textcoords="offset points", ha="right", fontsize=9)
    ax.set(xlabel=label, ylabel=AXES[Y_METRIC][0], title=f"accuracy vs {label.split(' (')[0]}")
    ax.margins(x=0.14, y=0.08)
    ax.grid(alpha=0.3)


def front_png(data: PlotData, path: Path) -> Path:
    """Accuracy against size and against latency, side by side."""
    metrics = x_metrics(data)
    fig = Figure(figsize=(6.2 * len(metrics), 5.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        _front_axes(ax, data, metric, named=ax is axes[0])
    axes[0].legend(loc="lower right", fontsize=8, framealpha=0.85)
    fig.suptitle(f"Pareto front: {len(data.front)} of {len(data.results)} completed trials "
                 f"({len(data.feasible)} feasible)", fontsize=12)
    fig.savefig(path, dpi=DPI)
    return path


def _hover(r: TrialResult, data: PlotData) -> str:
    lines = [f"trial {r.number}" + (f" (reference: {plan_label(r.plan)})" if r.number in data.references else "")]
    lines += [f"{_axis(m)[0]}: {r.metrics[m] * _axis(m)[1]:.4g}" for m in (Y_METRIC, *x_metrics(data))]
    lines.append(f"accuracy drop: {r.metrics.get('accuracy_drop', float('nan')):.2f} points")
    return "<br>".join(lines + ["feasible" if r.number in data.feasible else "infeasible"])


HTML_STYLES = {  # in _groups' order: legend name, plotly marker
    "feasible trial": dict(color="rgba(31,119,180,0.4)", size=8),
    "infeasible trial": dict(color="crimson", symbol="x", size=8),
    "Pareto front (all objectives)": dict(color="orange", size=12, line=dict(width=1)),
    "reference plan": dict(symbol="square-open", size=16, color="green", line=dict(width=2))}


def _front_traces(data: PlotData, metric: str, first: bool) -> list[go.Scatter]:
    """One subplot of the interactive front: trial groups, the 2-D staircase and the baseline."""
    traces = []
    for name, group in zip(HTML_STYLES, _groups(data).values()):
        x, y = _xy(group, metric)
        traces.append(go.Scatter(x=x, y=y, name=name, legendgroup=name, showlegend=first,
                                 mode="markers+text", text=[f"#{r.number}" if name.startswith("Pareto") else ""
                                                            for r in group], textposition="top center",
                                 customdata=[r.number for r in group], hovertext=[_hover(r, data) for r in group],
                                 hovertemplate="%{hovertext}<extra></extra>", marker=HTML_STYLES[name]))
    x, y = _xy(_front_2d(data.front, metric), metric)
    traces.append(go.Scatter(x=x, y=y, mode="lines", name="front in this 2-D view", legendgroup="2d",
                             showlegend=first, line=dict(color="orange", shape="hv"), hoverinfo="skip"))
    return traces + [go.Scatter(x=[data.baseline[metric] * _axis(metric)[1]], y=[data.baseline[Y_METRIC]],
                                mode="markers+text", text=["baseline"], textposition="bottom center",
                                name="baseline (fp32, unpruned)", legendgroup="baseline", showlegend=first,
                                marker=dict(symbol="star", size=16, color="black"))]


def front_html(data: PlotData, path: Path) -> Path:
    """The front plot as interactive HTML: hover a point for its trial number and metrics."""
    metrics = x_metrics(data)
    fig = make_subplots(rows=1, cols=len(metrics),
                        subplot_titles=[f"accuracy vs {_axis(m)[0].split(' (')[0]}" for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        for trace in _front_traces(data, metric, first=col == 1):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text=_axis(metric)[0], row=1, col=col)
        fig.update_yaxes(title_text=AXES[Y_METRIC][0], row=1, col=col)
    fig.update_layout(title="Pareto front (hover a point for its trial)", height=520, template="plotly_white")
    return _write_html(fig, path)


def hypervolume_png(data: PlotData, path: Path) -> Path:
    """The hypervolume as a step line over trial numbers, reference trials boxed."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    numbers, values = [n for n, _ in data.hv_history], [v for _, v in data.hv_history]
    ax.step(numbers, values, "o-", where="post", c="tab:purple", lw=2, ms=5, label="after this trial")
    refs = np.array([(n, v) for n, v in data.hv_history if n in data.references]).reshape(-1, 2).T
    ax.plot(*refs, "s", mfc="none", mec="tab:green", ms=11, mew=2, label="reference plan")
    if not any(values):
        ax.text(0.5, 0.6, "0: no feasible trial is better than the baseline in every objective yet",
                transform=ax.transAxes, ha="center", color="dimgrey")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial number", ylabel=HV_AXIS, title=HV_TITLE + (f" (final {values[-1]:.4f})" if values else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=DPI)
    return path


def hypervolume_html(data: PlotData, path: Path) -> Path:
    """The hypervolume history, interactive."""
    fig = go.Figure(go.Scatter(x=[n for n, _ in data.hv_history], y=[v for _, v in data.hv_history],
                               mode="lines+markers", line=dict(shape="hv", color="purple"),
                               hovertemplate="trial %{x}<br>hypervolume %{y:.4f}<extra></extra>"))
    fig.update_layout(title=HV_TITLE, template="plotly_white", xaxis_title="trial number", yaxis_title=HV_AXIS)
    return _write_html(fig, path)


def layer_matrix(members: Sequence[TrialResult], layers: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
    """Per member and layer: prune ratio (NaN: the layer roots no prune group), and "precision\\nratio" text."""
    ratios = np.array([[r.plan.prune.get(n, np.nan) for n in layers] for r in members], dtype=float)
    texts = [[r.plan.quant.get(n, "fp32") + ("" if n not in r.plan.prune else f"\n{r.plan.prune[n]:g}")
              + other_kinds(r.plan, n) for n in layers] for r in members]
    return ratios.reshape(len(members), len(layers)), texts


def other_kinds(plan: Plan, layer: str) -> str:
    """One line per kind besides prune and quant that changes ``layer``, as that kind describes its value."""
    from spaces.kinds import kind_named

    shown = ((kind, kind_named(kind).describe(values[layer])) for kind, values in plan.values.items()
             if kind not in ("prune", "quant") and layer in values)
    return "".join(f"\n{kind} {text}" for kind, text in shown if text)


def layers_png(data: PlotData, path: Path) -> Path:
    """Members by layers: colour = prune ratio of the group the layer roots, text = precision (and ratio)."""
    members, layers = sorted(data.front, key=lambda r: r.number), list(data.layers)
    (ratios, texts), rows = layer_matrix(members, layers), [f"trial {r.number}" for r in members]
    top = float(np.nanmax(np.append(ratios, 0.5)))  # the usual 0.5, or more when a plan prunes harder
    fig = Figure(figsize=(max(7.0, 0.45 * len(layers) + 3), 0.5 * len(rows) + 2.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(ratios), cmap=colormaps["YlOrBr"].with_extremes(bad="#e4e4e4"),
                      vmin=0, vmax=top, aspect="auto")
    fig.colorbar(image, ax=ax, label="prune ratio", fraction=0.04, pad=0.01)
    for (i, j), ratio in np.ndenumerate(ratios):
        ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=7 if len(layers) > 24 else 8,
                color="white" if ratio >= 0.6 * top else "black",
                weight="normal" if texts[i][j].startswith("fp32") else "bold")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=8)
    ax.set_title(f"Per-layer choices of the {len(rows)} Pareto-front members\ncolour: prune ratio of the channel group"
                 " the layer roots (grey: none)\ntext: precision, then that ratio", fontsize=10)
    fig.savefig(path, dpi=DPI)
    return path


def layers_html(data: PlotData, path: Path) -> Path:
    """The same heatmap, interactive; hover a cell for its trial, layer, precision and ratio."""
    members, layers = sorted(data.front, key=lambda r: r.number), list(data.layers)
    (ratios, texts), rows = layer_matrix(members, layers), [f"trial {r.number}" for r in members]
    texts = [[t.replace("\n", "<br>") for t in row] for row in texts]
    fig = go.Figure(go.Heatmap(z=ratios, x=layers, y=rows, zmin=0, zmax=np.nanmax(np.append(ratios, 0.5)),
                               colorscale="YlOrBr", text=texts, texttemplate="%{text}", hovertemplate="%{y}<br>%{x}<br>"
                               "%{text}<extra></extra>", colorbar=dict(title="prune ratio")))
    fig.update_layout(title="Per-layer choices of the Pareto-front members (colour: prune ratio; text: precision)",
                      template="plotly_white", xaxis_tickangle=-60, yaxis_autorange="reversed",
                      height=max(380, 34 * len(rows) + 300), width=max(700, 40 * len(layers) + 260))
    return _write_html(fig, path)


def _write_html(fig: go.Figure, path: Path) -> Path:
    """Works offline: plotly.js is written once beside the plots (``plotly.min.js``), not per file."""
    fig.write_html(path, include_plotlyjs="directory", full_html=True, config={"displaylogo": False})
    return path


def write_plots(study: optuna.Study, objectives: Sequence[Objective], out_dir: Path, *,
                data: PlotData | None = None) -> list[Path]:
    """Every plot of the study as ``<name>.png`` and ``<name>.html`` in ``out_dir``; [] before any result."""
    data = data or PlotData.from_study(study, objectives)
    if not data.results or not data.baseline or not x_metrics(data):
        return []
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    paths = [front_png(data, out / "front.png"), front_html(data, out / "front.html"),
             hypervolume_png(data, out / "hypervolume.png"), hypervolume_html(data, out / "hypervolume.html")]
    if data.front:
        paths += [layers_png(data, out / "layers.png"), layers_html(data, out / "layers.html")]
    return [*paths, out / "plotly.min.js"]
