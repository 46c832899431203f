"""Export a chosen trial as a deploy package: a folder, a zip beside it, an MLflow run and a registered model.

The package itself (files, manifest, zip) is built by ``search.package``; this module
picks the trial, replays it when its files are gone, and logs the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import optuna

from search.package import FP32, package_name, versions, write_package, write_zip, zip_path_for
from search.trial import TrialResult, run_trial, sha256_of

if TYPE_CHECKING:
    from search.trial import SearchContext

__all__ = ["ExportSelectionError", "ExportSettings", "export_command", "rebuild", "select", "versions",
           "write_package"]
RULES = {
    "smallest": (lambda r: r.metrics["size_bytes"]),
    "fastest": (lambda r: r.metrics["latency_ms"]),
    "most_accurate": (lambda r: -r.metrics["accuracy"]),
}


class ExportSelectionError(ValueError):
    """No trial matches the requested number or rule."""


@dataclass(frozen=True)
class ExportSettings:
    trial: int | None = None
    rule: str = "smallest"
    max_drop: float | None = None
    out: str = "deploy"
    include_fp32: bool = True                 # ship model_fp32.onnx as a fallback
    registered_name: str | None = None        # MLflow registered model name; None registers nothing

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


def rebuild(ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialResult:
    """Replay a trial's params through the search's own code path (Optuna's FixedTrial)."""
    plan = ctx.space.suggest(optuna.trial.FixedTrial(trial.params, number=trial.number))
    return run_trial(ctx, plan, number=trial.number)


def trial_files_intact(result: TrialResult, *, include_fp32: bool) -> bool:
    """The trial's model is still the scored one (and its fp32 sibling exists when it is shipped)."""
    model = Path(result.model_path)
    if not (model.is_file() and sha256_of(model) == result.sha256):
        return False
    return not include_fp32 or model.with_name(FP32).is_file()


def export_command(job: Any, settings: ExportSettings) -> int:
    """``autosqueeze export``: pick a trial of the study, package and zip it, log and register it in MLflow."""
    from search.runner import build_context
    from search.storage import existing_storage
    from search.study import feasible_results, load_study, results
    from search import pareto

    study = load_study(job.search.study_name, existing_storage(job.storage_url, job.search.study_name))
    front = pareto.front(feasible_results(study), job.objectives)
    chosen = select(front, settings, results(study))
    if not trial_files_intact(chosen, include_fp32=settings.include_fp32):
        chosen = rebuild(build_context(job, study), study.trials[chosen.number])
    out = Path(settings.out)
    manifest = write_package(chosen, out_dir=out, data=job.data, evaluators=job.evaluators,
                             baseline=study.user_attrs["baseline"], study_name=job.search.study_name,
                             include_fp32=settings.include_fp32)
    name = package_name(job.search.study_name, chosen.number)
    archive = write_zip(out, zip_path_for(out, job.search.study_name, chosen.number), name)
    print(f"exported trial {chosen.number} to {out}: accuracy {manifest['measured_at_export']['accuracy']:.2f}% "
          f"(logged {chosen.metrics['accuracy']:.2f}%), {chosen.metrics['size_bytes'] / 1e3:.1f} KB, "
          f"sha256 {manifest['files']['model.onnx'][:12]}")
    print(f"package: {archive}  (check it with: autosqueeze verify {archive})")
    if job.tracking:
        log_to_mlflow(job, study, out, archive, manifest, settings.registered_name)
    return 0


def log_to_mlflow(job: Any, study: optuna.Study, out: Path, archive: Path, manifest: dict,
                  registered_name: str | None) -> None:
    """The export run (folder + zip) and, when named, a new registered model version; failures only warn."""
    from search.tracking import Tracker

    tracker = Tracker(job.tracking)
    run_id = tracker.log_export(study.user_attrs.get("mlflow_parent_run_id"), out, manifest, zip_path=archive)
    if run_id and registered_name:
        version = tracker.register_model(run_id, out / "model.onnx", registered_name, manifest)
        if version:
            print(f"registered in MLflow as model {registered_name!r} version {version}")
