"""MLflow logging: one parent run per study, one nested run per trial.

Uses ``MlflowClient`` rather than the fluent API so no run is ever "active" in global
state; several trials or workers can log side by side.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.secrets import redact

if TYPE_CHECKING:
    from search.trial import TrialResult

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
MAX_BATCH = 900  # MLflow accepts at most 1000 entries per log_batch call


@dataclass(frozen=True)
class TrackingSettings:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "autosqueeze"
    log_front_models: bool = True


class Tracker:
    """Writes a study and its trials to an MLflow tracking store."""

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings = settings
        self.client = MlflowClient(tracking_uri=settings.uri)
        found = self.client.get_experiment_by_name(settings.experiment)
        self.experiment_id = (found.experiment_id if found is not None
                              else self.client.create_experiment(settings.experiment))

    def parent_run(self, study_name: str, existing: str | None, params: Mapping[str, Any]) -> str:
        """The study's run: reused when resuming, created (with the search settings) otherwise."""
        if existing:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={"autosqueeze.study": study_name, "kind": "study"})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def trial_run(self, parent_id: str, number: int, params: Mapping[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}",
                                     tags={PARENT_TAG: parent_id, "kind": "trial", "trial": str(number),
                                           "state": "RUNNING"})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def finish_trial(self, run_id: str, result: TrialResult, *, feasible: bool) -> None:
        metrics = [Metric(k, float(v), _now(), 0) for k, v in result.metrics.items()]
        metrics += [Metric(f"time_{k}_s", float(v), _now(), 0) for k, v in result.timings.items()]
        for step, loss, accuracy in result.curve:
            metrics += [Metric("finetune_loss", loss, _now(), step), Metric("finetune_accuracy", accuracy, _now(), step)]
        self._log(run_id, metrics=metrics, tags={"state": "COMPLETE", "feasible": str(feasible).lower(),
                                                 "pareto": "false", "sha256": result.sha256})
        self.client.set_terminated(run_id, status="FINISHED")

    def fail_trial(self, run_id: str, reason: str, *, status: str = "FAILED") -> None:
        self._log(run_id, tags={"state": "FAIL", "feasible": "false", "pareto": "false",
                                "error": reason[:4000]})
        self.client.set_terminated(run_id, status=status)

    def log_baseline(self, parent_id: str, metrics: Mapping[str, float]) -> None:
        self._log(parent_id, metrics=[Metric(f"baseline_{k}", float(v), _now(), 0) for k, v in metrics.items()])

    def mark_front(self, run_ids: Mapping[str, bool]) -> None:
        """Keep ``pareto=true`` exactly on the current front members."""
        for run_id, member in run_ids.items():
            self.client.set_tag(run_id, "pareto", str(member).lower())

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def log_front(self, parent_id: str, metrics: Mapping[str, float]) -> None:
        self._log(parent_id, metrics=[Metric(k, float(v), _now(), 0) for k, v in metrics.items()])

    def end_study(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status=status)

    def log_export(self, parent_id: str | None, folder: Path, manifest: Mapping[str, Any]) -> str:
        """A run holding the deploy folder, nested under the study's run."""
        tags = {"kind": "export", "trial": str(manifest["trial"]), "sha256": manifest["files"]["model.onnx"]}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=f"export-trial-{manifest['trial']}", tags=tags)
        self._log(run.info.run_id, params={"trial": manifest["trial"]},
                  metrics=[Metric(k, float(v), _now(), 0) for k, v in manifest["measured_at_export"].items()])
        self.client.log_artifacts(run.info.run_id, str(folder), "deploy")
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

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

