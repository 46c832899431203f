"""Shared checks that a plan of any knob kind survives Optuna and MLflow under its knob names."""
from __future__ import annotations

from pathlib import Path

import optuna

from search.inspect.tracking import Tracker, TrackingSettings
from spaces.base import Plan
from spaces.space import Space


def through_optuna(space: Space, plan: Plan) -> Plan:
    """``plan`` enqueued in a study, suggested back by ``space`` and rebuilt from the trial's params."""
    study = optuna.create_study()
    study.enqueue_trial(plan.params())
    trial = study.ask()
    suggested = space.suggest(trial)
    assert Plan.from_params(trial.params) == suggested
    return suggested


def through_mlflow(plan: Plan, tmp_path: Path) -> Plan:
    """``plan`` logged as a trial run's params and rebuilt from what MLflow stored (strings)."""
    tracker = Tracker(TrackingSettings(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="kinds"))
    parent = tracker.parent_run("kinds", None, {})
    run_id = tracker.trial_run(parent, 0, plan.params())
    return Plan.from_params(tracker.client.get_run(run_id).data.params)
