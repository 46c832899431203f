"""The Pareto front of finished trials: selection, hypervolume, table and files."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume  # the implementation Optuna's own plots use
from optuna.study._multi_objective import _is_pareto_front  # what Study.best_trials uses

if TYPE_CHECKING:
    from evaluators.base import Objective
    from search.trials.trial import TrialResult

COLUMNS = ("trial", "accuracy", "accuracy_drop", "test_accuracy", "test_accuracy_drop", "size_bytes",
           "compressed_bytes", "latency_ms", "latency_p90_ms", "latency_cv", "speedup", "search_speedup",
           "size_ratio", "params", "macs")
"""``accuracy`` is on the validation split the search selects on; ``test_*`` is only reported.
``speedup`` is the re-timed ratio against the baseline (``search_speedup`` the in-search one)."""
LEFT = "left the front when re-timed"


def _losses(metrics: Sequence[Mapping[str, float]], objectives: Sequence[Objective]) -> np.ndarray:
    """Objective values turned into "smaller is better" form."""
    sign = np.array([1.0 if o.direction == "minimize" else -1.0 for o in objectives])
    return np.array([[m[o.metric] for o in objectives] for m in metrics], dtype=float).reshape(-1, len(objectives)) * sign


def front(results: Sequence[TrialResult], objectives: Sequence[Objective]) -> list[TrialResult]:
    """The non-dominated results, in trial order. Pass only feasible trials."""
    losses = _losses([r.metrics for r in results], objectives)
    if not len(losses):
        return []
    # Optuna keeps every copy of a repeated point; a member's re-run (same metrics) is listed once, the first.
    _, first = np.unique(losses, axis=0, return_index=True)
    keep = set(first) & set(np.flatnonzero(_is_pareto_front(losses, assume_unique_lexsorted=False)))
    return [results[i] for i in sorted(keep)]


def hypervolume(results: Sequence[TrialResult], objectives: Sequence[Objective],
                baseline: Mapping[str, float], *, margin: float = 0.05) -> float:
    """Hypervolume of the results, each objective normalised by the baseline's value.

    The reference point is the baseline for minimised metrics (a model no smaller or
    faster than the baseline adds nothing) and ``1 - margin`` of it for maximised ones,
    so studies on the same baseline are comparable whatever their samplers.
    """
    if not results:
        return 0.0
    scale = np.array([baseline[o.metric] for o in objectives], dtype=float)
    losses = _losses([{o.metric: r.metrics[o.metric] / s for o, s in zip(objectives, scale)} for r in results],
                     objectives)
    reference = np.array([1.0 if o.direction == "minimize" else -(1.0 - margin) for o in objectives])
    inside = np.all(losses < reference, axis=1)
    if not inside.any():
        return 0.0
    return float(compute_hypervolume(losses[inside], reference))


def rows(results: Sequence[TrialResult], left: Sequence[TrialResult] = ()) -> list[dict[str, float | int | str]]:
    """One row per member, then one per trial in ``left`` (in-search members the re-timing pushed out)."""
    out = []
    for r in (*results, *left):
        row: dict[str, float | int | str] = {"trial": r.number}
        row.update({c: r.metrics[c] for c in COLUMNS[1:] if c in r.metrics})
        row["sha256"] = r.sha256
        row["status"] = LEFT if r in left else "front"
        out.append(row)
    return out


def table(results: Sequence[TrialResult], baseline: Mapping[str, float], left: Sequence[TrialResult] = ()) -> str:
    """A fixed-width text table of the front, with the baseline as the first line.

    Accuracy and drop are on validation (what the search selected on), the test columns
    only report; trials in ``left`` are listed after the front, marked with ``*``.
    """
    header = (f"{'trial':>8} {'val %':>7} {'drop':>6} {'test %':>7} {'drop':>6} {'size KB':>9} {'zstd KB':>9} "
              f"{'lat ms':>8} {'speedup':>8} {'smaller':>8}")
    lines = [header, "-" * len(header)]

    def cell(m: Mapping[str, float], key: str, width: int, spec: str, scale: float = 1.0, unit: str = "") -> str:
        return f"{format(m[key] / scale, spec)}{unit}".rjust(width) if key in m else "-".rjust(width)

    def line(label: str, m: Mapping[str, float]) -> str:
        ratios = {"speedup": 1.0, "size_ratio": 1.0, **m} if m is baseline else m
        drops = {"accuracy_drop": 0.0, "test_accuracy_drop": 0.0, **m} if m is baseline else m
        return " ".join([f"{label:>8}", cell(m, "accuracy", 7, ".2f"), cell(drops, "accuracy_drop", 6, ".2f"),
                         cell(m, "test_accuracy", 7, ".2f"), cell(drops, "test_accuracy_drop", 6, ".2f"),
                         cell(m, "size_bytes", 9, ".1f", 1e3),
                         cell(m, "compressed_bytes", 9, ".1f", 1e3), cell(m, "latency_ms", 8, ".3f"),
                         cell(ratios, "speedup", 8, ".2f", unit="x"), cell(ratios, "size_ratio", 8, ".2f", unit="x")])

    lines.append(line("baseline", baseline))
    lines += [line(str(r.number), r.metrics) for r in sorted(results, key=lambda r: r.metrics.get("size_bytes", 0))]
    lines += [line(f"*{r.number}", r.metrics) for r in left]
    if left:
        lines.append(f"* {LEFT}")
    return "\n".join(lines)


def write_front(results: Sequence[TrialResult], *, out_dir: Path, baseline: Mapping[str, float],
                hv: float, objectives: Sequence[Objective], left: Sequence[TrialResult] = ()) -> tuple[Path, Path]:
    """``front.csv`` (one row per member) and ``front.json`` (members, plans, baseline, hypervolume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "front.csv", out_dir / "front.json"
    table_rows = rows(results, left)
    fields = list(dict.fromkeys(k for row in table_rows for k in row)) or list(COLUMNS)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table_rows)
    payload = {"objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
               "hypervolume": hv, "baseline": dict(baseline),
               "front": [{"trial": r.number, "metrics": dict(r.metrics), "plan": r.plan.to_dict(),
                          "model_path": r.model_path, "sha256": r.sha256} for r in results],
               "left_when_retimed": [{"trial": r.number, "metrics": dict(r.metrics), "plan": r.plan.to_dict()}
                                     for r in left]}
    json_path.write_text(json.dumps(payload, indent=2))
    return csv_path, json_path
