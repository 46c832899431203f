"""Replay into MLflow what a search could not log (the server was down, or tracking was off).

MLflow itself is the record of what was logged: a trial counts as synced when its run
under the study's parent run carries a final ``state`` tag.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import optuna
from optuna.trial import TrialState

from search.inspect import pareto
from search.study import feasible, feasible_results
from search.trials.trial import TrialResult

if TYPE_CHECKING:
    from evaluators.base import Objective
    from search.inspect.tracking import Tracker


class TrackingUnavailable(ConnectionError):
    """MLflow still cannot be reached; nothing was lost, sync can be run again."""


def logged_runs(tracker: Tracker, parent: str) -> dict[int, tuple[str, str]]:
    """``{trial number: (run id, state tag)}`` for the trial runs under ``parent``."""
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.kind = 'trial'",
                                      max_results=50000)
    return {int(r.data.tags["trial"]): (r.info.run_id, r.data.tags.get("state", "RUNNING")) for r in runs}


def sync(study: optuna.Study, tracker: Tracker, objectives: Sequence[Objective], *, params: dict) -> int:
    """Log every finished trial MLflow lacks, then refresh the front tags; returns how many."""
    parent = study.user_attrs.get("mlflow_parent_run_id") or tracker.parent_run(study.study_name, None, params)
    if parent is None:
        raise TrackingUnavailable(f"MLflow at {tracker.settings.uri} is unreachable; run sync again later")
    study.set_user_attr("mlflow_parent_run_id", parent)
    if "baseline" in study.user_attrs:
        tracker.log_baseline(parent, study.user_attrs["baseline"])
    runs = logged_runs(tracker, parent)
    replayed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if trial.state == TrialState.PRUNED and "pruned_reason" not in trial.user_attrs:
            continue  # turned away by the budget before it ran: it never had a run
        run_id, state = runs.get(trial.number, (None, None))
        if state in ("COMPLETE", "FAIL", "PRUNED"):
            continue
        run_id = run_id or tracker.trial_run(parent, trial.number, trial.params)
        if run_id is None:
            raise TrackingUnavailable(f"MLflow at {tracker.settings.uri} became unreachable during sync")
        if trial.state == TrialState.COMPLETE and "result" in trial.user_attrs:
            result = TrialResult.from_attrs(trial.number, trial.user_attrs["result"])
            tracker.finish_trial(run_id, result, feasible=feasible(trial))
        elif trial.state == TrialState.PRUNED:
            tracker.prune_trial(run_id, trial.user_attrs["pruned_reason"], timings=trial.user_attrs.get("timings"),
                                record=trial.user_attrs.get("early_stop"))
        else:
            tracker.fail_trial(run_id, trial.user_attrs.get("error", "failed"))
        runs[trial.number] = (run_id, "synced")
        replayed += 1
    members = {r.number for r in pareto.front(feasible_results(study), objectives)}
    tracker.mark_front({run_id: number in members for number, (run_id, _) in runs.items()})
    return replayed
