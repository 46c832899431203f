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


def test_a_plan_with_a_finished_plans_structure_loads_its_fine_tuned_weights_instead_of_fine_tuning(tmp_path,
                                                                                                    small_splits):
    import onnx
    from onnx import numpy_helper

    job = make_job(tmp_path, small_splits, study="weights")
    run_search(job)  # the reference plans: fp32, int8, prune 0.25 + int8 (fine-tuned)
    trials = job.run_dir / "trials"
    assert (trials / "0002" / "finetuned.pt").is_file()
    assert not (trials / "0001" / "finetuned.pt").exists()  # not pruned, not fine-tuned
    study = optuna.load_study(study_name="weights", storage=job.storage_url)
    source = study.trials[2]
    study.enqueue_trial({k: (v if k.startswith("prune.") else "fp32") for k, v in source.params.items()})
    outcome = run_search(replace(job, search=replace(job.search, n_trials=4)))
    again = outcome.study.trials[3]
    assert again.state == optuna.trial.TrialState.COMPLETE and "reused_from" not in again.user_attrs
    assert again.user_attrs["finetune_from"] == 2
    assert again.user_attrs["result"]["curve"] == [] and source.user_attrs["result"]["curve"]
    assert not (trials / "0003" / "finetuned.pt").exists()  # a copy would add nothing

    def weights(path):
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}

    mine, theirs = weights(trials / "0003" / "model_fp32.onnx"), weights(trials / "0002" / "model_fp32.onnx")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    assert again.values[1] > source.values[1]  # fp32 where the source is int8: a larger file, measured anew
    client = MlflowClient(job.tracking.uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("weights").experiment_id])
               if r.data.tags.get("trial") == "3")
    assert run.data.tags["finetune_from"] == "2"


def test_a_child_that_keeps_a_front_members_structure_loads_its_weights(tmp_path, small_splits):
    from evaluators import Constraint

    job = make_job(tmp_path, small_splits, study="keep", n_trials=5)
    job = replace(job, profile=None, constraints=[Constraint("accuracy_drop", 100.0)],  # every plan feasible
                  search=replace(job.search, sampler="nsga2", population_size=3, keep_structure_prob=1.0))
    outcome = run_search(job)
    children = outcome.study.trials[3:]  # after the three reference plans (generation 0)
    assert children and all("kept_structure" in t.user_attrs for t in children)
    for child in children:
        member = outcome.study.trials[child.user_attrs["kept_structure"]]
        assert child.user_attrs["finetune_from"] <= member.number
        assert child.user_attrs["result"]["curve"] == [] and child.params != member.params
        assert {k: v for k, v in child.params.items() if k.startswith("prune.")} == \
            {k: v for k, v in member.params.items() if k.startswith("prune.")}
