"""The Optuna study: creation or resumption, samplers, reference plans and the trial loop."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.budget import BudgetReached, claim_slot, shielded, time_limit
from search.trials.early_stop import HopelessTrial
from search.trials.prescreen import DominatedPlan, Prescreen, screen_against
from search.sampler import SAMPLERS, constraint_violations, make_sampler
from search.trials.trial import WEIGHTS, SearchContext, TrialResult, run_trial
from spaces.base import Plan

if TYPE_CHECKING:
    from evaluators.base import Constraint, Objective
    from search.inspect.tracking import Tracker
    from spaces.space import Space

log = logging.getLogger(__name__)
LOCAL_WORKER_ENV = "AUTOSQUEEZE_LOCAL_WORKER"  # set for the processes `search.workers=N` starts
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial, for logs and fault tests


class StudyMismatchError(ValueError):
    """An existing study was created with other objectives than the config declares."""


@dataclass(frozen=True)
class SearchSettings:
    study_name: str = "autosqueeze"
    n_trials: int | None = 20
    timeout: float | None = None
    sampler: str = "nsga2"
    population_size: int = 8
    block_move_prob: float = 0.5
    keep_structure_prob: float = 0.25
    seed: int = 0
    reference_ratio: float = 0.25
    max_failures: int = 5
    trial_timeout: float | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"search.sampler={self.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if self.n_trials is None and self.timeout is None:
            raise ValueError("search.n_trials and search.timeout are both null; set at least one budget")
        if self.workers < 1:
            raise ValueError(f"search.workers={self.workers}: must be at least 1")
        if not 0.0 <= self.block_move_prob <= 1.0:
            raise ValueError(f"search.block_move_prob={self.block_move_prob!r} is outside [0, 1]; it is the "
                             "chance that an NSGA-II child also sets one resolution stage's knobs to one value")
        if not 0.0 <= self.keep_structure_prob <= 1.0:
            raise ValueError(f"search.keep_structure_prob={self.keep_structure_prob!r} is outside [0, 1]; it is the "
                             "chance that an NSGA-II child keeps a fine-tuned front member's structure")


def feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in constraint_violations(trial))


def open_study(settings: SearchSettings, storage: optuna.storages.BaseStorage,
               objectives: Sequence[Objective], blocks: Sequence[Sequence[str]] = (),
               structure: Mapping[str, Any] | None = None, unchanged: Mapping[str, Any] | None = None) -> optuna.Study:
    """Create the study, or load it when one of that name exists; its objectives must match.

    ``blocks`` are the knob names NSGA-II may move together (``Space.blocks``); ``structure`` the knobs
    that shape the fine-tuned weights, with their neutral values (``Space.structure_knobs``); ``unchanged``
    the params of the plan that changes nothing, which NSGA-II does not breed from.
    """
    study = optuna.create_study(study_name=settings.study_name, storage=storage, load_if_exists=True,
                                directions=[o.direction for o in objectives],
                                sampler=_sampler(settings, blocks, structure, unchanged))
    # A resumed study, or a second worker, must not replay the first run's random draws.
    offset = len(study.get_trials(deepcopy=False)) + (os.getpid() if os.environ.get(LOCAL_WORKER_ENV) else 0)
    if offset:
        study.sampler = _sampler(settings, blocks, structure, unchanged, seed=settings.seed + offset)
    if study.user_attrs.get("objectives") is None:
        study.set_user_attr("objectives", [o.metric for o in objectives])
    check_objectives(study, objectives)
    if study.metric_names is None:  # optuna-dashboard names its axes and columns after them
        study.set_metric_names([o.metric for o in objectives])
    return study


def _sampler(settings: SearchSettings, blocks: Sequence[Sequence[str]], structure: Mapping[str, Any] | None,
             unchanged: Mapping[str, Any] | None, seed: int | None = None) -> optuna.samplers.BaseSampler:
    return make_sampler(settings.sampler, seed=settings.seed if seed is None else seed,
                        population_size=settings.population_size, blocks=blocks,
                        block_move_prob=settings.block_move_prob, structure=structure,
                        keep_structure_prob=settings.keep_structure_prob, unchanged=unchanged)


def check_objectives(study: optuna.Study, objectives: Sequence[Objective]) -> None:
    """A study is read with the objectives it was searched with, or not at all."""
    stored, declared = study.user_attrs.get("objectives"), [o.metric for o in objectives]
    if stored is not None and stored != declared:
        raise StudyMismatchError(f"study {study.study_name!r} optimises {stored}, the config declares "
                                 f"{declared}; use another search.study_name or the evaluator settings it used")


def results(study: optuna.Study, *, feasible_only: bool = False, as_searched: bool = False) -> list[TrialResult]:
    """Every completed trial's result (or only those meeting the constraints), in trial order.

    Figures measured when the search ended (``search.confirm``) replace the in-search ones,
    unless ``as_searched``. A trial that reused an earlier trial's result is left out: that
    trial stands for the plan, so the front lists it once and its file is re-timed once
    (timed twice, one file read 1.54x and 1.76x and the copy pushed the original off the front).
    """
    confirmed = {} if as_searched else study.user_attrs.get("confirmed", {}).get("trials", {})
    return [TrialResult.from_attrs(t.number, t.user_attrs["result"]).confirmed(confirmed.get(str(t.number)))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "result" in t.user_attrs and "reused_from" not in t.user_attrs and (feasible(t) or not feasible_only)]


def feasible_results(study: optuna.Study, *, as_searched: bool = False) -> list[TrialResult]:
    return results(study, feasible_only=True, as_searched=as_searched)


def baseline_of(study: optuna.Study) -> dict[str, float]:
    """The baseline's metrics on validation, with its test accuracy once the search has measured it."""
    return {**study.user_attrs.get("baseline", {}), **study.user_attrs.get("confirmed", {}).get("baseline", {})}


def enqueue_references(study: optuna.Study, ctx: SearchContext, ratio: float) -> None:
    """Queue the hand-made plans first, once per study, so the front is never worse than them."""
    if study.user_attrs.get("references_enqueued") or study.get_trials(deepcopy=False):
        return
    study.set_user_attr("references_enqueued", True)
    for plan in ctx.space.reference_plans(uniform_ratio=ratio):
        try:
            ctx.space.check(plan)
        except ValueError as exc:
            log.warning("reference plan skipped: %s", exc)
            continue
        study.enqueue_trial(plan.params(), user_attrs={"reference": True}, skip_if_exists=True)


class FailureLimit:
    """Stops the study after ``limit`` consecutive failed trials: something is wrong with the setup."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.tripped = False
        self.last_error = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if trial.state == TrialState.FAIL:
            self.last_error = trial.user_attrs.get("error", "no reason recorded")
        if self.limit and self.streak >= self.limit:
            self.tripped = True
            study.stop()


def objective_fn(ctx: SearchContext, objectives: Sequence[Objective], constraints: Sequence[Constraint], *,
                 tracker: Tracker | None, parent_run: str | None, trial_params: dict[str, Any],
                 budget: int | None = None, trial_timeout: float | None = None,
                 on_stage: Callable[[int, str], None] | None = None,
                 on_step: Callable[[int, int], None] | None = None,
                 prescreen: Prescreen | None = None) -> Callable[[optuna.Trial], list[float]]:
    """The function Optuna calls: sample a plan, run it, record everything, return the objectives."""

    def objective(trial: optuna.Trial) -> list[float]:
        run_id = None

        def stage(name: str) -> None:
            # kept on the trial so a dashboard (or a test) can see what a running trial is doing
            with shielded():
                trial.set_user_attr("stage", name)
            if on_stage:
                on_stage(trial.number, name)

        # Every moment of a trial, waiting for a slot and sampling included, records why it ended:
        # a Ctrl-C while the plan is drawn must leave a reason and no MLflow run stuck RUNNING.
        try:
            claim_slot(trial, budget)
            trial.set_user_attr("worker", WORKER)
            plan = ctx.space.suggest(trial)
            run_id = tracker.trial_run(parent_run, trial.number, {**plan.params(), **trial_params}) if tracker else None
            if run_id:
                trial.set_user_attr("mlflow_run_id", run_id)
            twin = evaluated_twin(trial.study, plan)
            if twin is not None:
                return reuse(trial, twin, objectives, tracker=tracker, run_id=run_id)
            judged = prescreened_twin(trial.study, plan)
            if judged is not None:  # a beaten plan stays beaten: members are only ever added
                raise DominatedPlan(f"same plan as trial {judged.number}: {judged.user_attrs['pruned_reason']}",
                                    member=judged.user_attrs["prescreen"]["beaten_by"], figures={})
            screen = screen_against(lambda: feasible_results(trial.study, as_searched=True), objectives, prescreen)
            trained = trained_twin(trial.study, plan, ctx.space)
            if trained is not None:
                trial.set_user_attr("finetune_from", trained.number)
                log.info("trial %d: same structure as trial %d, its fine-tuned weights loaded (no fine-tune)",
                         trial.number, trained.number)
            with time_limit(trial_timeout):
                step = (lambda at, *_: on_step(trial.number, at)) if on_step else None  # fine-tune progress
                result = run_trial(ctx, plan, number=trial.number, on_stage=stage, log=step, screen=screen,
                                   trained=trained.weights if trained else None, finished=finished_checks(trial.study))
        except BudgetReached:
            raise  # not needed: the study already holds its budget
        except (HopelessTrial, DominatedPlan) as stop:
            record_stopped(trial, stop, tracker=tracker, run_id=run_id)
            raise  # Optuna records it PRUNED: no objectives, not a failure, not a completed trial
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            trial.set_user_attr("error", reason)
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            if run_id:
                tracker.fail_trial(run_id, reason, status=status)
            raise
        violations = [c.violation(result.metrics) for c in constraints]
        trial.set_user_attr("constraints", violations)
        trial.set_user_attr("result", result.to_attrs())
        if run_id:
            tracker.finish_trial(run_id, result, feasible=all(v <= 0 for v in violations),
                                 tags={"finetune_from": str(trained.number)} if trained else None)
        return [result.metrics[o.metric] for o in objectives]

    return objective


def record_stopped(trial: optuna.Trial, stop: HopelessTrial | DominatedPlan, *, tracker: Tracker | None,
                   run_id: str | None) -> None:
    """Why the early-stopping rule or the prescreen ended ``trial``, and what it had cost by then."""
    with shielded():
        trial.set_user_attr("pruned_reason", stop.reason)
        trial.set_user_attr("timings", stop.timings)
        trial.set_user_attr("prescreen" if isinstance(stop, DominatedPlan) else "early_stop", stop.record())
    if run_id:
        tracker.prune_trial(run_id, stop.reason, timings=stop.timings, record=stop.record())


def evaluated_twin(study: optuna.Study, plan: Plan) -> FrozenTrial | None:
    """The first completed trial that ran exactly ``plan``, if any."""
    wanted = plan.to_dict()
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if "result" in t.user_attrs and t.user_attrs["result"]["plan"] == wanted), None)


def finished_checks(study: optuna.Study) -> list[tuple[list[list[float]], float]]:
    """The early-stopping checkpoints of every completed fine-tune in the study, each with its trial's final drop."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        result = t.user_attrs.get("result", {})
        if result.get("checks") and "accuracy_drop" in result.get("metrics", {}) and "reused_from" not in t.user_attrs:
            out.append((result["checks"], float(result["metrics"]["accuracy_drop"])))
    return out


@dataclass(frozen=True)
class TrainedTwin:
    number: int
    weights: Path


def trained_twin(study: optuna.Study, plan: Plan, space: Space) -> TrainedTwin | None:
    """The first completed trial that fine-tuned the structure ``plan`` asks for, with its weights on this machine.

    Only the kinds that act before fine-tuning shape the weights (``Space.structure_of``): a plan that differs
    in precisions or sharing alone would fine-tune to the same weights again.
    """
    if not plan.needs_finetune:
        return None
    wanted = space.structure_of(plan)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = t.user_attrs.get("result")
        if attrs is None or "reused_from" in t.user_attrs:
            continue
        weights = Path(attrs["model_path"]).with_name(WEIGHTS)
        if weights.is_file() and space.structure_of(Plan.from_dict(attrs["plan"])) == wanted:
            return TrainedTwin(t.number, weights)
    return None


def prescreened_twin(study: optuna.Study, plan: Plan) -> FrozenTrial | None:
    """The first trial that ran exactly ``plan`` and was beaten before fine-tuning, if any.

    Samplers that learn only from completed trials (GP, TPE) propose such a plan again and again;
    judging it again would export, quantize and time it each time.
    """
    wanted = plan.to_dict()
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                 if "prescreen" in t.user_attrs and Plan.from_params(t.params).to_dict() == wanted), None)


def reuse(trial: optuna.Trial, twin: FrozenTrial, objectives: Sequence[Objective], *, tracker: Tracker | None,
          run_id: str | None) -> list[float]:
    """Record ``twin``'s result for ``trial`` instead of fine-tuning and measuring the same plan again."""
    source = TrialResult.from_attrs(twin.number, twin.user_attrs["result"])
    trial.set_user_attr("reused_from", twin.number)
    trial.set_user_attr("constraints", list(twin.user_attrs.get("constraints", [])))
    trial.set_user_attr("result", {**twin.user_attrs["result"], "timings": {"total": 0.0}})
    log.info("trial %d: same plan as trial %d, its result reused (no fine-tune)", trial.number, twin.number)
    if run_id:
        tracker.finish_trial(run_id, replace(source, timings={"total": 0.0}), feasible=feasible(twin),
                             tags={"reused_from": str(twin.number)})
    return [source.metrics[o.metric] for o in objectives]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class BudgetCallback:
    """Stops a worker once the study holds ``budget`` completed trials, whoever ran them."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.budget is not None and completed(study) >= self.budget:
            study.stop()


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """An existing study, or a clear error naming the studies that storage holds."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"search.study_name={name!r}: no such study in this storage; found: {names}") from None
