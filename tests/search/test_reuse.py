"""A plan the study already evaluated is not fine-tuned and measured again: its result is reused."""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.runner import run_search
from search.study import results
from jobs import make_job


def test_a_repeated_plan_reuses_the_earlier_result_and_records_which(tmp_path, small_splits):
    job = make_job(tmp_path, small_splits, study="reuse")
    run_search(job)
    study = optuna.load_study(study_name="reuse", storage=job.storage_url)
    study.enqueue_trial(study.trials[2].params)           # the pruned reference plan, proposed again
    outcome = run_search(replace(job, search=replace(job.search, n_trials=4)))
    again = outcome.study.trials[3]
    assert again.state == optuna.trial.TrialState.COMPLETE
    assert again.user_attrs["reused_from"] == 2 and again.values == outcome.study.trials[2].values
    assert again.user_attrs["result"]["timings"] == {"total": 0.0}     # no fine-tune, no export, no timing
    assert not (job.run_dir / "trials" / "0003").exists()
    # the plan is listed, re-timed and on the front once, as the trial that ran it
    assert [r.number for r in results(outcome.study)] == [0, 1, 2]
    assert 3 not in [r.number for r in outcome.front]
    assert "3" not in outcome.study.user_attrs["confirmed"]["trials"]
    run = next(r for r in MlflowClient(job.tracking.uri).search_runs(
        [MlflowClient(job.tracking.uri).get_experiment_by_name("reuse").experiment_id])
        if r.data.tags.get("trial") == "3")
    assert run.data.tags["reused_from"] == "2"
    assert run.data.metrics["accuracy"] == pytest.approx(again.values[0])
