"""Exporting a trial whose files are gone: the rebuild is held to what the study logged, not to itself."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import optuna
import pytest

from evaluators import Accuracy, Latency, Objective, Size
from search.deploy.export import ExportSettings, RebuildMismatchError, export_command
from search.trials.finetune import FinetuneSettings
from search.deploy.package import file_sha256, write_package
from search.runner import Job, run_search
from search.study import SearchSettings, baseline_of, results
from search.trials.trial import TrialResult
from search.deploy.verify import VerifySettings, verify_package
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from stores import baseline_cache
from tinynet import tiny_net

STUDY = "rebuild"


@pytest.fixture(scope="module")
def job(tmp_path_factory, small_splits) -> Job:
    """Two trials, the unchanged reference and the all-int8 one; no MLflow."""
    tmp = tmp_path_factory.mktemp("export")
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20)],
              objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")], constraints=[],
              search=SearchSettings(study_name=STUDY, n_trials=2, sampler="random"),
              run_dir=tmp / "run", cache_dir=baseline_cache(tmp_path_factory), model_key="tiny-60",
              baseline_training=FinetuneSettings(steps=60, log_every=20),
              prune=PruneSpec(ratios=(0.0, 0.25)), quant=QuantSpec(precisions=("fp32", "int8")), tracking=None)
    run_search(job)
    return job


def logged_trial(job: Job, number: int = 1) -> TrialResult:
    return results(optuna.load_study(study_name=STUDY, storage=job.storage_url))[number]


def delete_files(trial: TrialResult) -> None:
    shutil.rmtree(Path(trial.model_path).parent)


def other_calibration(job: Job) -> Job:
    """The same study replayed with other calibration images: the rebuilt int8 file gets other scales."""
    return dataclasses.replace(job, data=dataclasses.replace(job.data, calib=job.data.calib[:4]))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_a_rebuild_identical_to_the_logged_trial_ships_its_logged_metrics(job, tmp_path, capsys):
    logged = logged_trial(job)
    delete_files(logged)
    assert export_command(job, ExportSettings(trial=1, out=str(tmp_path / "deploy"))) == 0
    manifest = manifest_of(tmp_path / "deploy")
    assert manifest["rebuilt"] is True and "logged" not in manifest
    assert manifest["files"]["model.onnx"] == logged.sha256 == file_sha256(Path(logged.model_path))
    assert manifest["metrics"] == dict(logged.metrics) and "test_accuracy" in manifest["metrics"]
    assert manifest["measured_at_export"]["accuracy"] == logged.metrics["accuracy"]
    assert manifest["measured_at_export"]["test_accuracy"] == logged.metrics["test_accuracy"]
    assert "rebuilt, identical to the logged trial" in capsys.readouterr().out


def test_a_rebuild_that_differs_stops_the_export_naming_both_figures(job, tmp_path):
    logged = logged_trial(job)
    delete_files(logged)
    out = tmp_path / "deploy"
    with pytest.raises(RebuildMismatchError) as raised:
        export_command(other_calibration(job), ExportSettings(trial=1, out=str(out)))
    message = str(raised.value)
    rebuilt_sha = file_sha256(Path(logged.model_path))
    assert rebuilt_sha != logged.sha256
    assert f"sha256 {rebuilt_sha[:12]} (logged {logged.sha256[:12]})" in message
    assert "export.accept_rebuilt=true" in message and "Nothing was exported" in message
    assert not out.exists()


def test_an_accepted_rebuild_ships_with_its_own_metrics_and_keeps_the_logged_ones(job, tmp_path):
    logged = logged_trial(job)
    delete_files(logged)
    out = tmp_path / "deploy"
    assert export_command(other_calibration(job), ExportSettings(trial=1, out=str(out), accept_rebuilt=True)) == 0
    manifest = manifest_of(out)
    measured = manifest["measured_at_export"]
    assert manifest["rebuilt"] is True and "sha256" in manifest["logged"]["differs"]
    assert manifest["logged"]["sha256"] == logged.sha256 != manifest["files"]["model.onnx"]
    assert manifest["logged"]["accuracy"] == logged.metrics["accuracy"]
    assert manifest["logged"]["test_accuracy"] == logged.metrics["test_accuracy"]
    assert manifest["metrics"]["accuracy"] == measured["accuracy"]
    assert manifest["metrics"]["test_accuracy"] == measured["test_accuracy"]
    assert manifest["metrics"]["size_bytes"] == (out / "model.onnx").stat().st_size
    checks = verify_package(out, val=job.data.val, test=job.data.test, settings=VerifySettings(max_slowdown=1e3))
    assert all(c.ok for c in checks), [c.line() for c in checks]


def test_the_package_is_held_to_the_logged_val_accuracy_not_to_the_rebuild(job, tmp_path):
    trial = logged_trial(job, 0)
    study = optuna.load_study(study_name=STUDY, storage=job.storage_url)
    record = dataclasses.replace(trial, metrics={**trial.metrics, "accuracy": trial.metrics["accuracy"] + 1.0})
    common = dict(data=job.data, evaluators=job.evaluators, baseline=baseline_of(study), study_name=STUDY)
    with pytest.raises(RebuildMismatchError, match=r"val accuracy .* \(logged .*\)"):
        write_package(trial, out_dir=tmp_path / "a", logged=record, **common)
    with pytest.raises(RuntimeError, match="on the val split but trial 0 logged"):
        write_package(record, out_dir=tmp_path / "b", **common)
    manifest = write_package(trial, out_dir=tmp_path / "c", logged=record, accept_rebuilt=True, **common)
    assert manifest["logged"]["differs"] == ["accuracy"] and manifest["metrics"]["accuracy"] == trial.metrics[
        "accuracy"]
