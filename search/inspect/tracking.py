"""MLflow logging: one parent run per study, one nested run per trial.

Uses ``MlflowClient`` rather than the fluent API so no run is ever "active" in global
state; several trials or workers can log side by side.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.records.secrets import redact

if TYPE_CHECKING:
    from search.trials.trial import TrialResult

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
MAX_BATCH = 900  # MLflow accepts at most 1000 entries per log_batch call


@dataclass(frozen=True)
class TrackingSettings:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "autosqueeze"
    log_front_models: bool = True


def artifact_location(uri: str) -> str | None:
    """A new experiment's artifacts: ``mlartifacts/`` beside a SQLite store's file, as ``mlflow server`` keeps them.

    MLflow's own default for a SQLite store is ``./mlruns`` of whatever folder the process runs in; a
    server, or any other store, decides for itself (None). Experiments that exist keep their location.
    """
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    database = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return str(database.resolve().parent / "mlartifacts")


F = TypeVar("F", bound=Callable[..., Any])


def guarded(method: F) -> F:
    """Tracking never stops a search: a failed call warns (once) and returns None.

    Trials whose logging was lost are replayed later from the study by ``autosqueeze sync``.
    """

    @functools.wraps(method)
    def call(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:  # network, server and store errors all mean "not logged"
            level = logging.WARNING if self.healthy else logging.DEBUG
            log.log(level, "MLflow at %s is unreachable (%s); the search goes on, and `autosqueeze sync` "
                    "replays the missing logging later", redact(self.settings.uri),
                    redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            self.healthy = False
            return None
        self.healthy = True
        return result

    return call  # type: ignore[return-value]


class Tracker:
    """Writes a study and its trials to an MLflow tracking store."""

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings = settings
        self.healthy = True
        if settings.uri.startswith("http"):
            # MLflow's defaults retry a dead server for minutes; a trial should not wait that long.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            # MLflow prints two "View run/experiment at" lines per ended run to stdout; the study's run URL
            # is logged once instead (parent_run), so neither quiet logs nor the live display fill with them.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=settings.uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.settings.experiment)
            self._experiment_id = (found.experiment_id if found is not None else self.client.create_experiment(
                self.settings.experiment, artifact_location=artifact_location(self.settings.uri)))
        return self._experiment_id

    @guarded
    def parent_run(self, study_name: str, existing: str | None, params: Mapping[str, Any]) -> str:
        """The study's run: reused when resuming, created (with the search settings) otherwise."""
        if existing:
            self.client.update_run(existing, status="RUNNING")
            run_id = existing
        else:
            run = self.client.create_run(self.experiment_id, run_name=study_name,
                                         tags={"autosqueeze.study": study_name, "kind": "study"})
            self._log(run.info.run_id, params=params)
            run_id = run.info.run_id
        if self.settings.uri.startswith("http"):
            log.info("MLflow run of the study: %s/#/experiments/%s/runs/%s", redact(self.settings.uri).rstrip("/"),
                     self.experiment_id, run_id)
        return run_id

    @guarded
    def trial_run(self, parent_id: str, number: int, params: Mapping[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}",
                                     tags={PARENT_TAG: parent_id, "kind": "trial", "trial": str(number),
                                           "state": "RUNNING"})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    @guarded
    def finish_trial(self, run_id: str, result: TrialResult, *, feasible: bool,
                     tags: Mapping[str, str] | None = None) -> bool:
        metrics = [Metric(k, float(v), _now(), 0) for k, v in result.metrics.items()]
        metrics += [Metric(f"time_{k}_s", float(v), _now(), 0) for k, v in result.timings.items()]
        for step, loss, accuracy in result.curve:
            metrics += [Metric("finetune_loss", loss, _now(), step),
                        Metric("finetune_accuracy", accuracy, _now(), step)]
        for step, drop, _, bound in result.checks:  # beside a stopped trial's, under the same names
            metrics += [Metric("early_stop_subset_drop", drop, _now(), int(step)),
                        Metric("early_stop_bound", bound, _now(), int(step))]
        self._log(run_id, metrics=metrics, tags={"state": "COMPLETE", "feasible": str(feasible).lower(),
                                                 "pareto": "false", "sha256": result.sha256, **(tags or {})})
        self.client.set_terminated(run_id, status="FINISHED")
        return True

    @guarded
    def log_confirmed(self, run_id: str, figures: Mapping[str, float]) -> None:
        """The end-of-search figures as step 1 of the same metrics, so the UI shows them as the latest values."""
        self._log(run_id, metrics=[Metric(k, float(v), _now(), 1) for k, v in figures.items()],
                  tags={"retimed": "true"})

    @guarded
    def fail_trial(self, run_id: str, reason: str, *, status: str = "FAILED") -> bool:
        self._log(run_id, tags={"state": "FAIL", "feasible": "false", "pareto": "false",
                                "error": reason[:4000]})
        self.client.set_terminated(run_id, status=status)
        return True

    @guarded
    def prune_trial(self, run_id: str, reason: str, *, timings: Mapping[str, float] | None = None,
                    record: Mapping[str, float] | None = None) -> bool:
        """A trial the early-stopping rule or the prescreen ended: FINISHED with ``state=PRUNED`` and its reason.

        Not KILLED: in the UI that reads as a crash or a dead worker, which is what this
        project marks KILLED; stopping a hopeless plan is the search working as meant.
        """
        metrics = [Metric(f"time_{k}_s", float(v), _now(), 0) for k, v in (timings or {}).items()]
        tags = {"state": "PRUNED", "feasible": "false", "pareto": "false", "pruned_reason": reason[:4000]}
        if record and "subset_drop" in record:
            metrics += [Metric("early_stop_subset_drop", float(record["subset_drop"]), _now(), int(record["step"])),
                        Metric("early_stop_bound", float(record["bound"]), _now(), int(record["step"]))]
        if record and "beaten_by" in record:  # the prescreen: the plan's figures before fine-tuning
            metrics += [Metric(f"before_finetune_{k}", float(v), _now(), 0) for k, v in record.items()
                        if k not in ("rule", "beaten_by")]
            tags["beaten_by"] = str(record["beaten_by"])
        self._log(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, status="FINISHED")
        return True

    @guarded
    def log_baseline(self, parent_id: str, metrics: Mapping[str, float]) -> None:
        self._log(parent_id, metrics=[Metric(f"baseline_{k}", float(v), _now(), 0) for k, v in metrics.items()])

    @guarded
    def mark_front(self, run_ids: Mapping[str, bool]) -> None:
        """Keep ``pareto=true`` exactly on the current front members."""
        for run_id, member in run_ids.items():
            self.client.set_tag(run_id, "pareto", str(member).lower())

    @guarded
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    @guarded
    def log_front(self, parent_id: str, metrics: Mapping[str, float]) -> None:
        self._log(parent_id, metrics=[Metric(k, float(v), _now(), 0) for k, v in metrics.items()])

    @guarded
    def end_study(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status=status)

    @guarded
    def log_export(self, parent_id: str | None, folder: Path, manifest: Mapping[str, Any], *,
                   zip_path: Path | None = None) -> str:
        """A run holding the deploy folder (and its zip), nested under the study's run."""
        tags = {"kind": "export", "trial": str(manifest["trial"]),
                "sha256": manifest["files"][manifest.get("model", "model.onnx")]}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=f"export-trial-{manifest['trial']}", tags=tags)
        self._log(run.info.run_id, params={"trial": manifest["trial"]},
                  metrics=[Metric(k, float(v), _now(), 0) for k, v in manifest["measured_at_export"].items()])
        self.client.log_artifacts(run.info.run_id, str(folder), "deploy")
        if zip_path is not None:
            self.client.log_artifact(run.info.run_id, str(zip_path))
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

    @guarded
    def register_model(self, run_id: str, model_path: Path, name: str, manifest: Mapping[str, Any]) -> str:
        """Log ``model_path`` under ``run_id/model`` and register a new version of ``name``.

        An ONNX file is logged as an MLflow ONNX model; another target's artifact (an IR's .xml and
        .bin, a .pte) as its plain files, which no MLflow flavor loads. The version's tags carry the
        trial's metrics, trial number, study and sha256, so the registry alone tells which trial a
        deployed version came from and what it scored. Guarded on its own, after ``log_export``:
        a registry failure leaves the export run logged.
        """
        from mlflow.exceptions import MlflowException

        if model_path.suffix != ".onnx":
            for file in manifest["files"]:
                if file.startswith(f"{model_path.stem}."):
                    self.client.log_artifact(run_id, str(model_path.with_name(file)), "model")
        else:
            self._log_onnx_model(run_id, model_path, manifest)
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(name, tags={"autosqueeze.study": str(manifest["study"])})
        version_tags = {k: repr(float(v)) for k, v in manifest["metrics"].items()}
        version_tags.update({"trial": str(manifest["trial"]), "study": str(manifest["study"]),
                             "sha256": manifest["files"][manifest.get("model", "model.onnx")]})
        version = self.client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id,
                                                   tags=version_tags)
        self.client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
        return str(version.version)

    def _log_onnx_model(self, run_id: str, model_path: Path, manifest: Mapping[str, Any]) -> None:
        """``model_path`` as an MLflow ONNX model under ``run_id/model``."""
        import tempfile

        import mlflow.onnx
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "model"
            # One self-contained file, byte-identical to the package's model.onnx; the requirements are
            # given, so MLflow does not spend seconds inferring them in a subprocess.
            versions = manifest.get("versions", {})
            requirements = [f"{name}=={versions[name]}" if name in versions else name
                            for name in ("onnx", "onnxruntime", "numpy")]
            mlflow.onnx.save_model(onnx.load(str(model_path)), str(saved), save_as_external_data=False,
                                   pip_requirements=requirements)
            self.client.log_artifacts(run_id, str(saved), "model")

    def _log(self, run_id: str, *, params: Mapping[str, Any] | None = None, metrics: Iterable[Metric] = (),
             tags: Mapping[str, str] | None = None) -> None:
        items_params = [Param(k, redact(str(v))[:6000]) for k, v in (params or {}).items()]
        items_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        items_metrics = list(metrics)
        for start in range(0, max(len(items_params), len(items_metrics), len(items_tags), 1), MAX_BATCH):
            self.client.log_batch(run_id, metrics=items_metrics[start:start + MAX_BATCH],
                                  params=items_params[start:start + MAX_BATCH],
                                  tags=items_tags[start:start + MAX_BATCH])


def _now() -> int:
    return int(time.time() * 1000)

