"""A real 3-trial search on a tiny model: study, MLflow runs, front files and export."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from evaluators import Constraint
from jobs import OBJECTIVES, make_job
from search.inspect import pareto
from search.deploy.export import ExportSettings, select, write_package
from search.runner import run_search
from search.study import SearchSettings, feasible_results, results


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_splits):
    tmp = tmp_path_factory.mktemp("search")
    job = make_job(tmp, small_splits)
    return job, run_search(job)


def test_study_holds_the_reference_plans_and_the_budget(searched):
    job, outcome = searched
    study = optuna.load_study(study_name="it", storage=job.storage_url)
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [t.user_attrs.get("reference") for t in study.trials] == [True, True, True]
    first, second, third = (r.plan for r in results(study))
    assert first.is_identity
    assert set(second.quant.values()) == {"int8"} and set(second.prune.values()) == {0.0}
    assert set(third.prune.values()) == {0.25}
    assert study.user_attrs["baseline"]["accuracy"] > 50
    # the unchanged reference plan scores exactly what the baseline scores: same evaluator, same data
    assert results(study)[0].metrics["accuracy"] == pytest.approx(study.user_attrs["baseline"]["accuracy"])


def test_mlflow_has_nested_trial_runs_with_params_metrics_and_front_tags(searched):
    job, outcome = searched
    client = MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "baseline_accuracy" in parent.data.metrics and "hypervolume" in parent.data.metrics
    front_numbers = {r.number for r in outcome.front}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name.startswith("trial-")
        number = int(run.data.tags["trial"])
        assert any(k.startswith("prune.") for k in run.data.params)
        assert any(k.startswith("quant.") for k in run.data.params)
        for metric in ("accuracy", "size_bytes", "latency_ms", "accuracy_drop", "params", "macs"):
            assert metric in run.data.metrics
        assert run.data.tags["pareto"] == str(number in front_numbers).lower()
    assert front_numbers, "the no-compression reference is always feasible, so the front is never empty"


def test_front_files_match_the_front(searched):
    job, outcome = searched
    payload = json.loads((job.run_dir / "front.json").read_text())
    assert [m["trial"] for m in payload["front"]] == [r.number for r in outcome.front]
    assert payload["hypervolume"] == pytest.approx(outcome.hypervolume)
    csv_lines = (job.run_dir / "front.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(outcome.front)
    expected = pareto.front(feasible_results(outcome.study), OBJECTIVES)
    assert [r.number for r in expected] == [r.number for r in outcome.front]


def test_export_re_measures_the_trial_accuracy(searched, tmp_path):
    job, outcome = searched
    chosen = select(outcome.front, ExportSettings(rule="smallest"))
    manifest = write_package(chosen, out_dir=tmp_path / "deploy", data=job.data, evaluators=job.evaluators,
                             baseline=outcome.baseline, study_name="it")
    assert manifest["measured_at_export"]["accuracy"] == chosen.metrics["accuracy"]
    assert (tmp_path / "deploy" / "model.onnx").read_bytes() == Path(chosen.model_path).read_bytes()
    assert manifest["files"]["model.onnx"] == chosen.sha256
    assert manifest["plan"] == chosen.plan.to_dict()


def test_every_trial_is_timed_paired_with_the_baseline(searched):
    job, outcome = searched
    reference = outcome.baseline["latency_ms"]
    for r in results(outcome.study, as_searched=True):
        raw, base = r.metrics["latency_raw_ms"], r.metrics["baseline_raw_ms"]
        # the ratio of two medians from one interleaved run, scaled to the study's reference
        assert r.metrics["speedup"] == pytest.approx(base / raw)
        assert r.metrics["latency_ms"] == pytest.approx(reference * raw / base)


def test_the_front_is_re_timed_and_scored_on_test_when_the_search_ends(searched):
    job, outcome = searched
    record = outcome.study.user_attrs["confirmed"]
    assert record["runs"] == 300 and "test_accuracy" in record["baseline"]
    for member in outcome.front:
        figures = record["trials"][str(member.number)]
        assert member.metrics["speedup"] == figures["speedup"]
        assert member.metrics["test_accuracy"] == figures["test_accuracy"]
        assert member.metrics["test_accuracy_drop"] == pytest.approx(
            record["baseline"]["test_accuracy"] - figures["test_accuracy"])
        assert "search_speedup" in member.metrics
        # selection stays on validation: the constraint was computed from the val drop
        trial = outcome.study.trials[member.number]
        assert trial.user_attrs["constraints"][0] == pytest.approx(member.metrics["accuracy_drop"] - 1.0)
    header = (job.run_dir / "front.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy", "test_accuracy", "test_accuracy_drop", "search_speedup", "status"} <= set(header)
    run = next(r for r in MlflowClient(job.tracking.uri).search_runs(
        [MlflowClient(job.tracking.uri).get_experiment_by_name("it").experiment_id])
        if r.data.tags.get("trial") == str(outcome.front[0].number))
    assert run.data.tags["retimed"] == "true"
    assert run.data.metrics["speedup"] == pytest.approx(outcome.front[0].metrics["speedup"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(outcome.front[0].metrics["test_accuracy"])


def test_a_resume_with_other_constraints_is_refused_naming_them(searched):
    from dataclasses import replace

    from search.records.fingerprint import FingerprintMismatch

    job, _ = searched
    changed = replace(make_job(job.run_dir.parent, job.data), constraints=[Constraint("accuracy_drop", 0.5)])
    with pytest.raises(FingerprintMismatch, match=r"other constraints .*search.study_name"):
        run_search(changed)


def test_rerun_resumes_and_adds_only_the_missing_trials(searched):
    job, _ = searched
    bigger = make_job(job.run_dir.parent, job.data, n_trials=4)
    outcome = run_search(bigger)
    assert len(outcome.study.trials) == 4
    assert outcome.study.trials[3].user_attrs.get("reference") is None


def test_a_resumed_study_does_not_replay_its_random_draws(tmp_path):
    from search.records.storage import make_storage
    from search.study import open_study

    settings = SearchSettings(study_name="draws", n_trials=4, sampler="random")
    storage = make_storage(f"sqlite:///{tmp_path}/study.db")
    first = open_study(settings, storage, OBJECTIVES)
    first.optimize(lambda t: [t.suggest_float("x", 0, 1), 0.0, 0.0], n_trials=2)
    again = open_study(settings, storage, OBJECTIVES)
    again.optimize(lambda t: [t.suggest_float("x", 0, 1), 0.0, 0.0], n_trials=2)
    xs = [t.params["x"] for t in again.trials]
    assert len(set(xs)) == 4, xs


def test_mlflow_pareto_tags_follow_the_front_after_re_timing(tmp_path, small_splits, monkeypatch):
    """A member that re-timing pushes off the front loses its ``pareto`` tag, as it leaves front.json."""
    import search.runner as runner

    measured = runner.confirm

    def worse(study, ctx, members, settings):
        record = measured(study, ctx, members, settings)
        identity = results(study, as_searched=True)[0].metrics
        # the int8 reference, as if the end of the search had measured it worse than the baseline on everything
        record["trials"]["1"] = {"accuracy": 0.0, "size_bytes": 2 * identity["size_bytes"],
                                 "latency_ms": 100 * identity["latency_ms"]}
        study.set_user_attr("confirmed", record)
        return record

    monkeypatch.setattr(runner, "confirm", worse)
    job = make_job(tmp_path, small_splits, study="retimed")
    outcome = run_search(job)
    assert 1 in {r.number for r in outcome.left}  # on the front the search tagged, off the one it ended with
    client = MlflowClient(job.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("retimed").experiment_id], "tags.kind = 'trial'")
    tags = {int(r.data.tags["trial"]): r.data.tags["pareto"] for r in runs}
    assert tags == {n: str(n in {r.number for r in outcome.front}).lower() for n in tags}
