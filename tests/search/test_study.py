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


def test_a_study_names_its_objectives_for_optuna_dashboard(tmp_path):
    from search.records.storage import make_storage
    from search.study import SearchSettings, open_study

    objectives = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")]
    url = f"sqlite:///{tmp_path}/study.db"
    open_study(SearchSettings(study_name="named", n_trials=1, sampler="random"), make_storage(url), objectives)
    assert optuna.load_study(study_name="named", storage=url).metric_names == ["accuracy", "size_bytes"]
