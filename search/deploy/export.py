"""Export a chosen trial as a deploy package: a folder, a zip beside it, an MLflow run and a registered model.

The package itself (files, manifest, zip) is built by ``search.deploy.package``; this module
picks the trial, replays it when its files are gone, and logs the result. A replayed trial
is held to what the study logged (sha256 and val accuracy): a rebuild that differs is not
the model the search chose, so it ships only with ``export.accept_rebuilt=true``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import optuna

from search.deploy.package import (FP32, RebuildMismatchError, package_name, versions, write_package, write_zip,
                            zip_path_for)
from search.trials.trial import TrialResult, run_trial, sha256_of

if TYPE_CHECKING:
    from search.deploy.targets.base import Target
    from search.trials.trial import SearchContext

__all__ = ["ExportSelectionError", "ExportSettings", "RebuildMismatchError", "export_command", "rebuild", "select",
           "versions", "write_package"]
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
    accept_rebuilt: bool = False              # ship a rebuilt trial even when it differs from the logged one

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


def trial_files_intact(result: TrialResult, *, include_fp32: bool, target: Target) -> bool:
    """The trial's model is still the scored one (and its fp32 sibling exists when it is shipped)."""
    model = Path(result.model_path)
    files = target.files(model)
    if not (all(f.is_file() for f in files) and sha256_of(*files) == result.sha256):
        return False
    return not include_fp32 or model.with_name(FP32).is_file()


def export_command(job: Any, settings: ExportSettings) -> int:
    """``autosqueeze export``: pick a trial of the study, package and zip it, log and register it in MLflow."""
    from search.runner import build_context
    from search.records.storage import existing_storage
    from search.study import baseline_of, feasible_results, load_study, results
    from search.inspect import pareto

    study = load_study(job.search.study_name, existing_storage(job.storage_url, job.search.study_name))
    front = pareto.front(feasible_results(study), job.objectives)
    logged = select(front, settings, results(study))
    shipped, rebuilt_from = logged, None
    if Path(logged.model_path).suffix != job.target.suffix:
        raise ExportSelectionError(f"trial {logged.number} was built for another target ({logged.model_path}); "
                                   f"export with the target the study was searched with, not {job.target.name}")
    if not trial_files_intact(logged, include_fp32=settings.include_fp32, target=job.target):
        print(f"trial {logged.number}: its files are gone or changed; rebuilding it from its plan")
        shipped, rebuilt_from = rebuild(build_context(job, study), study.trials[logged.number]), logged
    out = Path(settings.out)
    manifest = write_package(shipped, out_dir=out, data=job.data, evaluators=job.evaluators,
                             baseline=baseline_of(study), study_name=job.search.study_name,
                             include_fp32=settings.include_fp32, logged=rebuilt_from,
                             accept_rebuilt=settings.accept_rebuilt, config=_data_config(job.config),
                             target=job.target)
    name = package_name(job.search.study_name, shipped.number)
    archive = write_zip(out, zip_path_for(out, job.search.study_name, shipped.number), name)
    print(summary(manifest, logged, out))
    print(f"package: {archive}  (check it with: autosqueeze verify {archive})")
    if job.tracking:
        log_to_mlflow(job, study, out, archive, manifest, settings.registered_name)
    return 0


def summary(manifest: dict, logged: TrialResult, out: Path) -> str:
    """One line: val accuracy against the logged one, test accuracy when measured, size, hash, rebuilt or not."""
    measured = manifest["measured_at_export"]
    test = f", test {measured['test_accuracy']:.2f}%" if "test_accuracy" in measured else ""
    rebuilt = ""
    if "logged" in manifest:
        rebuilt = f" (rebuilt, differs from the logged trial: {', '.join(manifest['logged']['differs'])})"
    elif manifest["rebuilt"]:
        rebuilt = " (rebuilt, identical to the logged trial)"
    model = manifest.get("model", "model.onnx")
    zipped = manifest.get("sizes", {}).get(model)
    shipped = f" ({zipped['zip_bytes'] / 1e3:.1f} KB {zipped['zip_method']} in the zip)" if zipped else ""
    return (f"exported trial {manifest['trial']} to {out}{rebuilt}: val accuracy {measured['accuracy']:.2f}% "
            f"(logged {logged.metrics['accuracy']:.2f}%){test}, {manifest['metrics']['size_bytes'] / 1e3:.1f} KB"
            f"{shipped}, sha256 {manifest['files'][model][:12]}")


def log_to_mlflow(job: Any, study: optuna.Study, out: Path, archive: Path, manifest: dict,
                  registered_name: str | None) -> None:
    """The export run (folder + zip) and, when named, a new registered model version; failures only warn."""
    from search.inspect.tracking import Tracker

    tracker = Tracker(job.tracking)
    run_id = tracker.log_export(study.user_attrs.get("mlflow_parent_run_id"), out, manifest, zip_path=archive)
    if run_id and registered_name:
        version = tracker.register_model(run_id, out / manifest.get("model", "model.onnx"), registered_name, manifest)
        if version:
            print(f"registered in MLflow as model {registered_name!r} version {version}")


def _data_config(config: dict) -> dict | None:
    """What verify needs to rebuild the splits: the data group and the seed the hold-out is drawn with."""
    return {"data": config["data"], "seed": config["seed"]} if config.get("data") else None
