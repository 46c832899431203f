"""The objective Optuna calls: every way a trial ends leaves its reason on the trial."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from evaluators.base import Objective
from search.study import objective_fn


class Interrupted:
    def suggest(self, trial):
        raise KeyboardInterrupt  # Ctrl-C while the plan is being drawn


def test_a_ctrl_c_while_the_plan_is_sampled_records_its_reason():
    study = optuna.create_study(directions=["maximize"])
    objective = objective_fn(SimpleNamespace(space=Interrupted()), [Objective("accuracy", "maximize")], [],
                             tracker=None, parent_run=None, trial_params={})
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["error"].startswith("KeyboardInterrupt")
