"""Export a chosen trial as a deploy folder: the quantized ONNX file plus a manifest."""
from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import optuna

from search.trial import TrialResult, measure, run_trial, sha256_of

if TYPE_CHECKING:
    from evaluators.base import Evaluator
    from search.trial import SearchContext
    from zoo.data import DataSplits

RULES = {
    "smallest": (lambda r: r.metrics["size_bytes"]),
    "fastest": (lambda r: r.metrics["latency_ms"]),
    "most_accurate": (lambda r: -r.metrics["accuracy"]),
}
VERSIONED = ("autosqueeze", "torch", "torch-pruning", "onnx", "onnxruntime", "optuna", "mlflow", "numpy")


class ExportSelectionError(ValueError):
    """No trial matches the requested number or rule."""


@dataclass(frozen=True)
class ExportSettings:
    trial: int | None = None
    rule: str = "smallest"
    max_drop: float | None = None
    out: str = "deploy"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"export.rule={self.rule!r} is unknown; allowed: {', '.join(RULES)}")


def select(candidates: Sequence[TrialResult], settings: ExportSettings,
           every: Sequence[TrialResult] = ()) -> TrialResult:
    """The trial to ship: by number (any completed trial), else the rule's best front member."""
    if settings.trial is not None:
        found = [r for r in (*every, *candidates) if r.number == settings.trial]
        if not found:
            numbers = sorted({r.number for r in every} or {r.number for r in candidates})
            raise ExportSelectionError(f"export.trial={settings.trial}: no completed trial with that number; "
                                       f"completed: {numbers}")
        return found[0]
    pool = [r for r in candidates
            if settings.max_drop is None or r.metrics.get("accuracy_drop", 0.0) <= settings.max_drop]
    if not pool:
        raise ExportSelectionError(f"no front member has an accuracy drop <= {settings.max_drop} points")
    return min(pool, key=RULES[settings.rule])


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def rebuild(ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialResult:
    """Replay a trial's params through the search's own code path (Optuna's FixedTrial)."""
    plan = ctx.space.suggest(optuna.trial.FixedTrial(trial.params, number=trial.number))
    return run_trial(ctx, plan, number=trial.number)


def write_package(result: TrialResult, *, out_dir: Path, data: DataSplits, evaluators: Sequence[Evaluator],
                  baseline: Mapping[str, float], study_name: str, tolerance: float = 1e-9) -> dict[str, Any]:
    """Copy the trial's model into ``out_dir``, re-measure it and write ``manifest.json``.

    The re-measured accuracy must equal the trial's logged one: same file, same data,
    same ONNX Runtime. A mismatch means the artifact or the data changed, so it fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.onnx"
    shutil.copyfile(result.model_path, model_path)
    checked = measure(model_path, data, evaluators)
    if abs(checked["accuracy"] - result.metrics["accuracy"]) > tolerance:
        raise RuntimeError(f"exported model scores {checked['accuracy']:.4f}% but trial {result.number} logged "
                           f"{result.metrics['accuracy']:.4f}%: the data or the artifact differ from the search's")
    manifest = {
        "study": study_name,
        "trial": result.number,
        "plan": result.plan.to_dict(),
        "metrics": dict(result.metrics),
        "measured_at_export": checked,
        "baseline_metrics": dict(baseline),
        "input": {"name": "input", "shape": [1, *data.input_shape], "dtype": "float32"},
        "preprocessing": data.preprocessing,
        "versions": versions(),
        "files": {"model.onnx": sha256_of(model_path)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def export_command(job: Any, settings: ExportSettings) -> int:
    """``autosqueeze export``: pick a trial of the study, package it, log it to MLflow."""
    from search.runner import build_context
    from search.storage import existing_storage
    from search.study import feasible_results, load_study, results
    from search import pareto

    study = load_study(job.search.study_name, existing_storage(job.storage_url, job.search.study_name))
    front = pareto.front(feasible_results(study), job.objectives)
    chosen = select(front, settings, results(study))
    if not (Path(chosen.model_path).is_file() and sha256_of(Path(chosen.model_path)) == chosen.sha256):
        frozen = study.trials[chosen.number]
        chosen = rebuild(build_context(job, study), frozen)
    manifest = write_package(chosen, out_dir=Path(settings.out), data=job.data, evaluators=job.evaluators,
                             baseline=study.user_attrs["baseline"], study_name=job.search.study_name)
    if job.tracking:
        from search.tracking import Tracker

        Tracker(job.tracking).log_export(study.user_attrs.get("mlflow_parent_run_id"), Path(settings.out), manifest)
    print(f"exported trial {chosen.number} to {settings.out}: accuracy {manifest['measured_at_export']['accuracy']:.2f}% "
          f"(logged {chosen.metrics['accuracy']:.2f}%), {chosen.metrics['size_bytes'] / 1e3:.1f} KB, "
          f"sha256 {manifest['files']['model.onnx'][:12]}")
    return 0
