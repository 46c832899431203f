"""Size and speed are measured before fine-tuning; a plan a near-baseline member beats on both is not fine-tuned."""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from evaluators import Constraint, Objective
from search.trials.prescreen import Prescreen, Rival, beating_member, rival_of
from search.runner import run_search
from search.trials.trial import TrialResult
from spaces.base import Plan
from jobs import make_job

SIZE_ONLY = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")]
BOTH = [*SIZE_ONLY, Objective("latency_ms", "minimize")]


def member(number: int, drop: float, size: float, latency: float) -> TrialResult:
    return TrialResult(number=number, plan=Plan(), metrics={"accuracy_drop": drop, "size_bytes": size,
                                                            "latency_ms": latency}, timings={}, model_path="",
                       sha256="")


def test_only_a_member_near_the_baseline_and_clearly_better_on_every_other_objective_beats_a_plan():
    rule = Prescreen(max_member_drop=0.1, margin=0.03)
    figures = {"size_bytes": 100.0, "latency_ms": 1.0}
    assert beating_member(figures, [member(1, 0.05, 50, 0.5)], BOTH, rule).number == 1
    assert beating_member(figures, [member(1, 0.5, 50, 0.5)], BOTH, rule) is None     # could still be beaten on accuracy
    assert beating_member(figures, [member(1, 0.05, 50, 0.99)], BOTH, rule) is None   # within timing noise
    assert beating_member(figures, [member(1, 0.05, 50, 0.99)], SIZE_ONLY, rule).number == 1
    assert beating_member(figures, [member(1, 0.05, 50, 0.5)], [BOTH[1]], rule) is None  # no accuracy objective


def test_the_rival_is_the_most_accurate_member_clearly_better_on_every_other_objective():
    rule = Prescreen()
    figures = {"size_bytes": 100.0, "latency_ms": 1.0}
    members = [member(1, 0.8, 50, 0.5), member(2, 0.4, 60, 0.6), member(3, 0.1, 200, 0.5), member(4, 0.2, 50, 0.99)]
    assert rival_of(figures, members, BOTH, rule) == Rival(number=2, drop=0.4)  # 3 is larger, 4 within timing noise
    assert rival_of(figures, members[2:], BOTH, rule) is None
    assert rival_of(figures, members, [BOTH[1], BOTH[2]], rule) is None  # no accuracy objective: nothing to hold to


def test_a_plan_beaten_before_fine_tuning_is_pruned_and_a_smaller_one_is_measured_as_it_will_ship(tmp_path,
                                                                                                  small_splits):
    job = replace(make_job(tmp_path, small_splits, study="prescreen"), objectives=SIZE_ONLY,
                  constraints=[Constraint("accuracy_drop", 100.0)], prescreen=Prescreen(max_member_drop=100.0))
    first = run_search(job)  # the reference plans: fp32, int8, prune 0.25 + int8
    smaller = first.study.trials[2].user_attrs["result"]
    assert smaller["before_finetune"]["size_bytes"] == pytest.approx(smaller["metrics"]["size_bytes"], rel=1e-3)
    assert "prescreen" in smaller["timings"]
    # prune 0.25 but keep fp32: larger than the int8 members before a single fine-tune step
    plan = first.study.trials[2].params
    first.study.enqueue_trial({k: (v if k.startswith("prune.") else "fp32") for k, v in plan.items()})
    outcome = run_search(replace(job, search=replace(job.search, n_trials=4)))
    skipped = outcome.study.trials[3]
    assert skipped.state == optuna.trial.TrialState.PRUNED
    assert skipped.user_attrs["prescreen"]["beaten_by"] in (1, 2)
    assert skipped.user_attrs["pruned_reason"].startswith("before fine-tuning, trial ")
    assert "prescreen" in skipped.user_attrs["timings"] and "finetune" not in skipped.user_attrs["timings"]
    client = MlflowClient(job.tracking.uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("prescreen").experiment_id])
               if r.data.tags.get("trial") == "3")
    assert run.data.tags["state"] == "PRUNED" and run.data.tags["beaten_by"] in ("1", "2")
    # proposed once more: judged by the record, not exported and timed again
    queued_as = len(outcome.study.trials)
    outcome.study.enqueue_trial(skipped.params)
    again = run_search(replace(job, search=replace(job.search, n_trials=5))).study.trials[queued_as]
    assert again.state == optuna.trial.TrialState.PRUNED and again.params == skipped.params
    assert again.user_attrs["pruned_reason"].startswith("same plan as trial 3: before fine-tuning")
    assert "prescreen" not in again.user_attrs.get("timings", {})
