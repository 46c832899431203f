"""One self-contained HTML report of a study: baseline, front, plots, layer sensitivity, export commands.

The file embeds its PNG plots as data URIs and its CSS inline, and references no external
resource, so it can be mailed, archived as an MLflow artifact or opened offline as is.
"""
from __future__ import annotations

import base64
import html
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from optuna.trial import TrialState

from search.profiling.narrow import offered
from search.inspect.plots import PlotData, plan_label, write_plots
from search.profiling.profile import stored_profile
from search.inspect.profile_plot import write_profile_plots
from search.inspect.report_profile import cost_line, group_rows, layer_rows

if TYPE_CHECKING:
    import optuna

    from evaluators.base import Objective
    from search.trials.trial import TrialResult

PRUNE_AT = 0.25  # a group counts as "pruned" in a trial from this ratio on
THRESHOLD = 1.0  # points of extra accuracy drop that make a knob "sensitive"
MIN_TRIALS = 2  # trials needed on each side of a comparison before it gets a verdict
CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1320px;
color:#222;padding:0 16px}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ccc;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}th,td{border:1px solid #d0d0d0;padding:4px 9px}
th{background:#f2f2f2;text-align:center}td{text-align:right;font-variant-numeric:tabular-nums}td.l{text-align:left}
tr.ref td:first-child::after{content:" ref";color:#2a7d2a;font-size:0.8em}figure{margin:12px 0;overflow-x:auto}
img{border:1px solid #eee;display:block}
.sensitive{color:#b30000;font-weight:600}.tolerant{color:#1a7f1a}.unknown{color:#888}code,pre{background:#f6f6f6}
pre{padding:8px 12px;overflow-x:auto}.note{color:#555;font-size:0.92em;max-width:1000px}"""


@dataclass(frozen=True)
class Comparison:
    """Mean accuracy drop (points) of trials that compress one knob vs trials that leave it alone."""

    n_off: int
    n_on: int
    drop_off: float
    drop_on: float
    corr: float
    verdict: str

    @property
    def delta(self) -> float:
        return self.drop_on - self.drop_off


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    prune: Comparison | None  # None: the layer roots no prune group
    quant: Comparison | None  # None: the layer has no precision knob


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _corr(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than three trials."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def compare(off: Sequence[float], on: Sequence[float], *, corr: float = math.nan, threshold: float = THRESHOLD,
            min_trials: int = MIN_TRIALS) -> Comparison:
    """The rule: "sensitive" when compressing costs more than ``threshold`` extra points on average."""
    if min(len(off), len(on)) < min_trials:
        verdict = "too few trials"
    else:
        verdict = "sensitive" if _mean(on) - _mean(off) > threshold else "tolerant"
    return Comparison(len(off), len(on), _mean(off), _mean(on), corr, verdict)


def _drop(r: TrialResult, baseline: Mapping[str, float]) -> float:
    return r.metrics.get("accuracy_drop", baseline.get("accuracy", math.nan) - r.metrics["accuracy"])


def sensitivity(results: Sequence[TrialResult], layers: Sequence[str], baseline: Mapping[str, float], *,
                prune_at: float = PRUNE_AT, threshold: float = THRESHOLD,
                min_trials: int = MIN_TRIALS) -> list[LayerSensitivity]:
    """For each layer: accuracy drop with its group pruned (ratio >= ``prune_at``) vs unpruned, and int8 vs fp32."""
    drops = [_drop(r, baseline) for r in results]
    out = []
    for layer in layers:
        prune = quant = None
        if any(layer in r.plan.prune for r in results):
            ratios = [r.plan.prune.get(layer, 0.0) for r in results]
            prune = compare(_where(drops, ratios, lambda x: x == 0), _where(drops, ratios, lambda x: x >= prune_at),
                            corr=_corr(ratios, drops), threshold=threshold, min_trials=min_trials)
        if any(layer in r.plan.quant for r in results):
            kinds = [r.plan.quant.get(layer, "fp32") for r in results]
            quant = compare(_where(drops, kinds, lambda k: k == "fp32"), _where(drops, kinds, lambda k: k == "int8"),
                            threshold=threshold, min_trials=min_trials)
        out.append(LayerSensitivity(layer, prune, quant))
    return out


def _where(drops: Sequence[float], keys: Sequence[Any], keep: Callable[[Any], bool]) -> list[float]:
    return [d for d, k in zip(drops, keys) if keep(k)]


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _kb(value: float | None) -> str:
    return _num(None if value is None else value / 1e3, ".1f")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    """An HTML table of escaped cells; text cells (starting with a letter or a tag) align left, numbers right."""
    head = "".join(f"<th>{h}</th>" for h in headers) if any(headers) else ""
    body = "".join(
        f"<tr class='{classes[i] if i < len(classes) else ''}'>"
        + "".join(f"<td{' class=l' if c[:1].isalpha() or c.startswith('<') else ''}>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>"


def _metric_cells(m: Mapping[str, float]) -> list[str]:
    """Cells in METRIC_HEADERS' order; the baseline has no derived metrics, so those default to "no change"."""
    return [_num(m.get("accuracy")), _num(m.get("accuracy_drop", 0.0)), _num(m.get("test_accuracy")),
            _num(m.get("test_accuracy_drop", 0.0 if "test_accuracy" in m else None)), _kb(m.get("size_bytes")),
            _kb(m.get("compressed_bytes")), _num(m.get("latency_ms"), ".4f"),
            _num(m.get("speedup", 1.0)) + "×", _num(m.get("size_ratio", 1.0)) + "×",
            _num(m.get("params"), ",.0f"), _num(m["macs"] / 1e6 if "macs" in m else None)]


METRIC_HEADERS = ("val accuracy (%)", "val drop (points)", "test accuracy (%)", "test drop (points)", "size (KB)", "compressed (KB)", "latency (ms)", "speedup",
                  "size ratio", "params", "MACs (M)")


def front_section(data: PlotData) -> str:
    """The baseline line and one line per front member, smallest first."""
    members = sorted(data.front, key=lambda r: r.metrics.get("size_bytes", 0.0))
    rows = [["baseline", *_metric_cells(data.baseline)]] + [[str(r.number), *_metric_cells(r.metrics)] for r in members]
    classes = [""] + ["ref" if r.number in data.references else "" for r in members]
    if not members:
        return "<p>No feasible trial yet: the front is empty.</p>" + _table(("trial", *METRIC_HEADERS), rows)
    return (_table(("trial", *METRIC_HEADERS), rows, classes)
            + "<p class=note>val: the validation split the search selected on; test: the test split, measured "
              "once the search ended and never used to choose. drop: baseline accuracy minus the trial's, in points "
              "(negative = better). speedup: the baseline's median latency over the trial's, both timed interleaved "
              "in one run when the search ended; size ratio: baseline size over the trial's. "
              "<b>ref</b>: an enqueued reference plan.</p>")


def _cmp_cells(c: Comparison | None, *, with_corr: bool) -> list[str]:
    """Counts, mean drops, Δ, [correlation,] verdict; dashes when the layer has no such knob."""
    if c is None:
        return ["–"] * (6 if with_corr else 5)
    css = "unknown" if c.verdict == "too few trials" else c.verdict
    return [f"{c.n_off} / {c.n_on}", _num(c.drop_off), _num(c.drop_on), _num(c.delta, "+.2f"),
            *([_num(c.corr)] if with_corr else []), f"<span class='{css}'>{c.verdict}</span>"]


def sensitivity_section(rows: Sequence[LayerSensitivity], threshold: float = THRESHOLD) -> str:
    """The per-layer table, preceded by the rule that produced its verdicts."""
    headers = ("layer", "trials unpruned / pruned", "drop unpruned", "drop pruned", "Δ prune", "corr(ratio, drop)",
               "prune verdict", "trials fp32 / int8", "drop fp32", "drop int8", "Δ int8", "int8 verdict")
    cells = [[html.escape(s.layer), *_cmp_cells(s.prune, with_corr=True), *_cmp_cells(s.quant, with_corr=False)]
             for s in rows]
    rule = (f"Over every completed trial, feasible or not: <b>drop pruned</b> is the mean accuracy drop (points) "
            f"of the trials that prune the layer's channel group by a ratio ≥ {PRUNE_AT:g}, <b>drop unpruned</b> "
            f"that of the trials with ratio 0; likewise int8 vs fp32 for the layer's precision. A knob is "
            f"<b>sensitive</b> when Δ (compressed minus uncompressed) exceeds {threshold:g} point, otherwise "
            f"<b>tolerant</b>; with fewer than {MIN_TRIALS} trials on either side there is no verdict. "
            "Other layers vary between trials too, so this is a marginal comparison: it points at layers to keep "
            "light, it does not isolate each layer's effect. '–': the layer has no such knob (pruning is "
            "set per channel group, keyed by the group's root layer).")
    return f"<p class=note>{rule}</p>" + _table(headers, cells)


def _image(path: Path, link: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption class=note>{caption} Interactive version: <a href='{link}'>{link}</a>.</figcaption></figure>")


def plots_section(paths: Sequence[Path], out_dir: Path) -> str:
    """Each PNG embedded, with a relative link to its interactive HTML twin."""
    captions = {"front": "Every completed trial; the front is non-dominated among feasible trials in all objectives, "
                         "so a member can look dominated in one 2-D view.",
                "hypervolume": "Hypervolume of the feasible front after each trial, objectives divided by the "
                               "baseline's (0 until a feasible trial beats the baseline in every objective).",
                "layers": "One row per front member, one column per layer in model order: colour is the prune ratio "
                          "of the channel group the layer roots, text its precision (then that ratio)."}
    parts = []
    for path in (p for p in paths if p.suffix == ".png"):
        link = html.escape(Path(os.path.relpath(path.with_suffix(".html"), out_dir)).as_posix())
        parts.append(_image(path, link, captions.get(path.stem, "")))
    return "".join(parts) or "<p>No plots: the study has no completed trial.</p>"


def exports_section(data: PlotData, export_hint: Callable[[int], str]) -> str:
    """The command that packages each front member, as ``export_hint`` spells it."""
    lines = [f"# trial {r.number}: {_num(r.metrics['accuracy'])}% accuracy, "
             f"{_kb(r.metrics.get('size_bytes'))} KB\n{html.escape(export_hint(r.number))}"
             for r in sorted(data.front, key=lambda r: r.number)]
    return ("<pre>" + "\n\n".join(lines) + "</pre>" if lines else "<p>No front member to export.</p>") + (
        "<p class=note>Add the same model/data overrides the search used.</p>")


def trials_section(data: PlotData) -> str:
    """Every completed trial, folded away: the front table is what most readers need."""
    rows = [[str(r.number), "yes" if r.number in data.feasible else "no", _num(r.metrics["accuracy"]),
             _num(r.metrics.get("accuracy_drop")), _kb(r.metrics.get("size_bytes")),
             _num(r.metrics.get("latency_ms"), ".4f"),
             html.escape(plan_label(r.plan)) if r.number in data.references else ""] for r in data.results]
    headers = ("trial", "feasible", "accuracy (%)", "drop (points)", "size (KB)", "latency (ms)", "reference")
    table = _table(headers, rows)
    return f"<details><summary>all {len(rows)} completed trials</summary>{table}</details>"


def summary_section(study: optuna.Study, data: PlotData, objectives: Sequence[Objective]) -> str:
    """Trial counts, objectives, final hypervolume and the baseline's metrics."""
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    goals = ", ".join(f"{o.direction} {html.escape(o.metric)}" for o in objectives)
    hv = data.hv_history[-1][1] if data.hv_history else 0.0
    facts = [["completed trials", str(len(data.results))], ["failed trials", str(failed)],
             ["feasible trials", str(len(data.feasible))], ["front members", str(len(data.front))],
             ["objectives", goals], ["hypervolume (objectives / baseline)", _num(hv, ".4f")]]
    baseline = [["baseline (fp32, unpruned)", *_metric_cells(data.baseline)]]
    return (_table(("", ""), facts) + "<h2>Baseline</h2>" + _table(("model", *METRIC_HEADERS), baseline)
            + f"<p class=note>Accuracy is measured on the exported ONNX file, as every trial's is; "
              f"p90 latency {_num(data.baseline.get('latency_p90_ms'), '.4f')} ms.</p>")


def profile_section(study: optuna.Study, data: PlotData, plots_dir: Path, out_dir: Path) -> str:
    """What the search measured before its first trial: per group and per layer, with its bar chart."""
    profile = stored_profile(study)
    if profile is None:
        return "<p>No profile: the study was searched with search.profile.enabled=false or before profiles.</p>"
    png = write_profile_plots(profile, plots_dir)[0]
    groups, layers = group_rows(profile), layer_rows(profile, offered(study))
    link = html.escape(Path(os.path.relpath(png.with_suffix(".html"), out_dir)).as_posix())
    note = ("Each group pruned alone on the baseline, <b>without fine-tuning</b> (trials fine-tune, so they lose "
            "less), and the share of parameters and MACs that removes. Per layer: the error int8 adds at the "
            "layer alone and at its output in the all-int8 model (SQNR, higher is better), its share of the fp32 "
            "baseline's latency and weight bytes, and whether int4 is offered there (latency-aware precisions). "
            f"The profile was {html.escape(cost_line(profile, data.results))}.")
    return (f"<p class=note>{note}</p>" + _table(groups.headers, [[html.escape(c) for c in r] for r in groups.rows])
            + _table(layers.headers, [[html.escape(c) for c in r] for r in layers.rows])
            + _image(png, link, "Accuracy lost per group when pruned alone; latency and size shares per layer."))


def write_report(study: optuna.Study, objectives: Sequence[Objective], out_path: Path, *,
                 export_hint: Callable[[int], str], plots_dir: Path | None = None,
                 threshold: float = THRESHOLD) -> Path:
    """Write the plots (to ``plots_dir``, default ``<out_path's folder>/plots``) and the one-file HTML report."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = PlotData.from_study(study, objectives)
    plots = write_plots(study, objectives, plots_dir or out_path.parent / "plots", data=data)
    title = f"autosqueeze report: study {html.escape(study.study_name)}"
    body = [f"<h1>{title}</h1><p class=note>written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
            summary_section(study, data, objectives), "<h2>Pareto front</h2>", front_section(data),
            "<h2>Plots</h2>", plots_section(plots, out_path.parent), "<h2>Sensitivity profile</h2>",
            profile_section(study, data, plots_dir or out_path.parent / "plots", out_path.parent),
            "<h2>Per-layer sensitivity</h2>",
            sensitivity_section(sensitivity(data.results, data.layers, data.baseline, threshold=threshold), threshold),
            "<h2>Export a front member</h2>", exports_section(data, export_hint), "<h2>All trials</h2>",
            trials_section(data)]
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    out_path.write_text(page, encoding="utf-8")
    return out_path
