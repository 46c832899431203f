"""Early stopping: the bound's arithmetic, the fine-tune hook, and hopeless trials recorded PRUNED, not FAILED."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from torch import nn
from torch.nn import functional as F

from evaluators import Accuracy, Constraint, Latency, Objective, Size
from evaluators.base import EvalData
from search.budget import claim_slot
from search.trials.early_stop import EarlyStop, HopelessTrial, StopRule, paired_drop, stop_rule
from search.trials.finetune import FinetuneSettings, finetune
from search.trials.prescreen import Rival
from search.trials.trial import TrialResult, run_trial
from search.runner import Job, build_context, prepare, preflight, run_search
from search.sampler import make_sampler
from search.study import BudgetCallback, FailureLimit, SearchSettings
from search.inspect.tracking import TrackingSettings
from spaces.base import Plan
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from tinynet import tiny_net

OBJECTIVES = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")]


# --- the rule's arithmetic -------------------------------------------------------------------

def test_checks_fall_on_fractions_of_the_steps_never_on_the_last():
    rule = EarlyStop(checks=(0.34, 0.67), slack=(3.0, 1.5))
    assert rule.schedule(200) == {68: 3.0, 134: 1.5}
    assert rule.schedule(15) == {5: 3.0, 10: 1.5}
    assert rule.schedule(2) == {1: 3.0}  # both round to step 1: the first (larger) slack is kept
    assert rule.schedule(1) == {}        # the only step is the last: the trial is scored right after


def test_the_bound_is_the_constraint_plus_slack_plus_z_standard_errors():
    assert EarlyStop(z=2.0).bound(1.0, 1.5, 0.5) == pytest.approx(3.5)
    assert EarlyStop(z=0.0).bound(1.0, 3.0, 9.9) == pytest.approx(4.0)


def test_the_study_learns_the_largest_share_recovered_after_each_check_plus_the_margin():
    settings = EarlyStop(learn_after=2, learn_margin=0.1)
    finished = [([(5, 10.0, 1.0, 9.0), (10, 4.0, 1.0, 6.0)], 2.0),   # recovered 80 %, then 50 %
                ([(5, 4.0, 1.0, 9.0), (10, 2.5, 1.0, 6.0)], 3.0),    # recovered 25 %, then lost more
                ([(5, 1.9, 1.0, 9.0), (10, 0.5, 1.0, 6.0)], 0.0)]    # too small a drop to learn from
    assert settings.shares(finished) == {5: pytest.approx(0.9), 10: pytest.approx(0.6)}
    assert EarlyStop(learn_after=3).shares(finished) == {}  # two drops of >= 2 points per check: too few
    assert EarlyStop(learn_after=1, learn_margin=0.5).shares(finished[:1])[5] == 0.95  # capped: the bound stays finite
    assert EarlyStop(learn=False, learn_after=1).shares(finished) == {}


def test_the_learned_bound_divides_the_limit_by_what_is_left_and_never_falls_below_two_points():
    settings = EarlyStop(z=2.0)
    assert settings.learned_bound(1.0, 0.6, 0.5) == pytest.approx(1.0 / 0.4 + 1.0)
    assert settings.learned_bound(1.0, 0.2, 0.5) == pytest.approx(2.0 + 1.0)
    assert settings.learned_bound(-3.0, 0.5, 0.0) == pytest.approx(2.0)  # a rival more accurate than the baseline


def test_paired_drop_counts_points_and_its_standard_error():
    base = np.ones(100, dtype=bool)
    model = np.r_[np.zeros(10, dtype=bool), np.ones(90, dtype=bool)]
    drop, se = paired_drop(base, model)
    assert drop == pytest.approx(10.0)
    assert se == pytest.approx(100 * np.sqrt(0.1 * 0.9 * 100 / 99) / 10)  # std (ddof=1) / sqrt(n), in points
    # the same mistakes on the same samples are no evidence of a drop at all
    assert paired_drop(model, model) == (0.0, 0.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"checks": (0.6, 0.3), "slack": (1.0, 1.0)}, "increasing"),
    ({"checks": (1.0,), "slack": (1.0,)}, "strictly between 0 and 1"),
    ({"checks": (0.5,), "slack": (1.0, 2.0)}, "one value >= 0 per check"),
    ({"checks": (0.5,), "slack": (-1.0,)}, "one value >= 0 per check"),
    ({"subset": 0}, "subset >= 1"),
    ({"z": -1.0}, "z >= 0"),
    ({"front": "yes"}, "front='yes'; allowed: true or false"),
    ({"learn": 1}, "learn=1; allowed: true or false"),
    ({"learn_after": 0}, "learn_after >= 1"),
    ({"learn_margin": 1.0}, r"learn_margin in \[0, 1\)"),
])
def test_bad_settings_name_the_key_and_what_is_allowed(kwargs, words):
    with pytest.raises(ValueError, match=words):
        EarlyStop(**kwargs)


def test_the_config_group_builds_the_settings():
    from search.cli import load_config, plain

    settings = EarlyStop(**plain(load_config([]).search.early_stop))
    assert settings.enabled and len(settings.checks) == len(settings.slack)


# --- the rule on a model ---------------------------------------------------------------------

class Echo(nn.Module):
    """Reads the label off its input: always right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.flatten(1)[:, 0].long(), 10).float()


class Zero(nn.Module):
    """Always class 0: right on a tenth of a balanced set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 10)


def echo_data(n: int = 400) -> EvalData:
    labels = np.arange(n) % 10
    return EvalData(inputs=labels.astype(np.float32).reshape(n, 1, 1, 1), labels=labels.astype(np.int64))


def test_a_model_far_below_the_baseline_is_stopped_with_a_reason():
    rule = StopRule(EarlyStop(subset=200), max_drop=1.0, baseline=Echo(), val=echo_data(200))
    model = Zero().train()
    with pytest.raises(HopelessTrial) as info:
        rule.check(15)(5, model)
    stop = info.value
    assert isinstance(stop, optuna.TrialPruned)
    assert (stop.step, stop.steps, stop.drop) == (5, 15, pytest.approx(90.0))
    assert stop.bound == pytest.approx(1.0 + 3.0 + 2.0 * paired_drop(np.ones(200), np.arange(200) % 10 == 0)[1])
    for words in ("fine-tune step 5/15", "accuracy drop 90.00 points on 200 validation samples", "> bound",
                  "accuracy_drop <= 1"):
        assert words in stop.reason
    assert "\n" not in stop.reason
    assert stop.record() == {"step": 5, "steps": 15, "subset_drop": 90.0, "bound": round(stop.bound, 4)}
    assert model.training  # the check hands the model back in the mode it found it


def test_a_model_as_good_as_the_baseline_goes_on_and_steps_off_the_schedule_are_ignored():
    rule = StopRule(EarlyStop(), max_drop=1.0, baseline=Echo(), val=echo_data())
    check = rule.check(15)
    assert check.at == {5, 10}
    check(5, Echo())
    check(10, Echo())
    check(7, Zero())  # not a check step


class Slip(nn.Module):
    """Reads the label off its input, but answers wrong on every 25th sample: 4 points below :class:`Echo`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, index = x.flatten(1)[:, 0].long(), x.flatten(1)[:, 1].long()
        return F.one_hot(torch.where(index % 25 == 0, (label + 1) % 10, label), 10).float()


def slip_data(n: int = 400) -> EvalData:
    labels = np.arange(n) % 10
    inputs = np.stack([labels, np.arange(n)], 1).astype(np.float32).reshape(n, 1, 1, 2)
    return EvalData(inputs=inputs, labels=labels.astype(np.int64))


def test_a_plan_that_cannot_end_more_accurate_than_its_rival_is_stopped_though_it_could_still_be_feasible():
    rule = StopRule(EarlyStop(), max_drop=1.0, baseline=Echo(), val=slip_data())
    rule.check(15)(10, Slip())  # 4.0 points at step 10: under the constraint's bound 1 + 1.5 + 2 s.e.
    with pytest.raises(HopelessTrial) as info:
        rule.check(15, rival=Rival(number=7, drop=0.0))(10, Slip())
    stop = info.value
    se = paired_drop(np.ones(400), np.arange(400) % 25 != 0)[1]
    assert (stop.drop, stop.bound) == (pytest.approx(4.0), pytest.approx(0.0 + 1.5 + 2.0 * se))
    assert "(trial 7, better on every other objective, dropped 0.00, + slack 1.5" in stop.reason
    assert stop.record()["rival"] == 7


def test_what_the_study_learned_stops_a_plan_the_fixed_slack_lets_through():
    rule = StopRule(EarlyStop(z=1.0), max_drop=1.0, baseline=Echo(), val=slip_data())
    check = rule.check(15)
    check(5, Slip())  # 4.0 points at step 5: under 1 + slack 3 + 1 s.e.
    se = paired_drop(np.ones(400), np.arange(400) % 25 != 0)[1]
    assert check.passed == [(5, pytest.approx(4.0), pytest.approx(se), pytest.approx(1.0 + 3.0 + se))]
    # four finished fine-tunes that were 5 points down at step 5 and ended 4 down: 20 % recovered
    finished = [([(5, 5.0, 1.0, 9.0)], 4.0)] * 4
    with pytest.raises(HopelessTrial) as info:
        rule.check(15, finished=finished)(5, Slip())
    assert info.value.bound == pytest.approx(2.0 + se)  # max(1 / (1 - 0.35), 2) + 1 s.e.
    assert "finished fine-tunes recovered" in info.value.reason and "(1 - 0.35" in info.value.reason
    # three are too few to learn from, and a step learned elsewhere does not apply here
    rule.check(15, finished=finished[:3])(5, Slip())
    rule.check(15, finished=[([(10, 5.0, 1.0, 9.0)], 4.0)] * 4)(5, Slip())


def test_the_study_hands_the_rule_its_completed_fine_tunes_but_not_reused_or_unchecked_results():
    from search.study import finished_checks

    study = optuna.create_study(directions=["maximize", "minimize"])

    def add(checks, drop, **attrs):
        result = {"checks": checks, "metrics": {"accuracy_drop": drop}}
        study.add_trial(optuna.trial.create_trial(values=[1.0, 1.0], user_attrs={"result": result, **attrs}))

    add([[5, 6.0, 1.0, 9.0]], 2.5)
    add([[5, 6.0, 1.0, 9.0]], 2.5, reused_from=0)  # the same fine-tune counted once
    add([], 0.5)                                     # unpruned, or weights loaded: nothing checked
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"early_stop": {"step": 5}}))
    assert finished_checks(study) == [([[5, 6.0, 1.0, 9.0]], 2.5)]


@pytest.mark.parametrize("settings, rival", [(EarlyStop(), Rival(7, 1.5)), (EarlyStop(front=False), Rival(7, 0.0))],
                         ids=["rival-less-accurate-than-the-constraint", "front-off"])
def test_a_rival_holds_a_plan_only_below_the_constraint_and_only_when_front_is_on(settings, rival):
    StopRule(settings, max_drop=1.0, baseline=Echo(), val=slip_data()).check(15, rival=rival)(10, Slip())


def test_the_subset_is_seeded_and_never_larger_than_the_split():
    data = echo_data(1000)
    pick = [StopRule(EarlyStop(subset=100), max_drop=1.0, baseline=Echo(), val=data, seed=s).labels for s in (0, 0, 1)]
    assert torch.equal(pick[0], pick[1]) and not torch.equal(pick[0], pick[2])
    assert len(StopRule(EarlyStop(subset=5000), max_drop=1.0, baseline=Echo(), val=data).labels) == 1000


def test_only_an_accuracy_drop_constraint_switches_the_rule_on():
    kwargs = {"baseline": Echo(), "val": echo_data()}
    assert stop_rule(EarlyStop(), [Constraint("size_bytes", 1e6)], **kwargs) is None
    assert stop_rule(EarlyStop(enabled=False), [Constraint("accuracy_drop", 1.0)], **kwargs) is None
    assert stop_rule(None, [Constraint("accuracy_drop", 1.0)], **kwargs) is None
    rule = stop_rule(EarlyStop(), [Constraint("accuracy_drop", 2.0), Constraint("accuracy_drop", 0.5)], **kwargs)
    assert rule is not None and rule.max_drop == 0.5  # the tightest limit holds


# --- the fine-tune hook ----------------------------------------------------------------------

def test_the_check_runs_at_its_steps_and_training_resumes_in_train_mode():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    seen = []

    def check(step: int, m: nn.Module) -> None:
        seen.append((step, m.training))
        m.eval()

    finetune(model, data, FinetuneSettings(steps=10, batch_size=16), check=check, check_at={3, 4, 10})
    assert seen == [(3, True), (4, True), (10, True)]  # train mode restored after each check


def test_a_check_that_raises_ends_the_fine_tune_there():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    steps = []

    def check(step: int, m: nn.Module) -> None:
        raise HopelessTrial("hopeless", step=step, steps=10, drop=9.0, bound=1.0)

    with pytest.raises(HopelessTrial):
        finetune(nn.Linear(8, 3), data, FinetuneSettings(steps=10, batch_size=16, log_every=1), check=check,
                 check_at={4}, log=lambda step, *_: steps.append(step))
    assert steps == [1, 2, 3, 4]


def test_a_trial_the_rule_lets_through_gets_the_same_weights(small_splits):
    baseline = tiny_net().eval()
    rule = StopRule(EarlyStop(slack=(1e9, 1e9)), max_drop=1.0, baseline=baseline, val=small_splits.val)
    settings = FinetuneSettings(steps=6, batch_size=64)
    weights = []
    for check in (None, rule.check(6)):
        model = tiny_net()
        finetune(model, small_splits.train, settings, seed=3, teacher=baseline, check=check,
                 check_at=check.at if check else ())
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- the study: PRUNED, not FAILED, and no part of the budget ------------------------------------

def test_stopped_trials_neither_fail_the_search_nor_use_up_its_budget():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    limit = FailureLimit(2)

    def objective(trial: optuna.Trial) -> list[float]:
        claim_slot(trial, 2)
        x = trial.suggest_float("x", 0, 1)
        if trial.number < 3:
            raise HopelessTrial("hopeless", step=1, steps=2, drop=9.0, bound=1.0)
        return [x, x]

    study.optimize(objective, catch=(Exception,), callbacks=[limit, BudgetCallback(2)])
    states = [t.state for t in study.trials]
    assert states == [TrialState.PRUNED] * 3 + [TrialState.COMPLETE] * 2
    assert not limit.tripped


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_the_constrained_samplers_go_on_sampling_past_stopped_trials(sampler):
    """NSGA-II leaves PRUNED trials out of its population; TPE reads them as infeasible."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(sampler, seed=0, population_size=4))

    def objective(trial: optuna.Trial) -> list[float]:
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 2:
            raise HopelessTrial("hopeless", step=1, steps=2, drop=9.0, bound=1.0)
        trial.set_user_attr("constraints", [x - 0.5])
        return [x, x]

    study.optimize(objective, n_trials=24)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 12
    assert sum(t.state == TrialState.PRUNED for t in study.trials) == 12


def plan_of(space, prune: dict[str, float]) -> Plan:
    params = {k.name: prune.get(k.name, 0.0) for k in space.prune_knobs}
    return Plan.from_params({**params, **{k.name: "fp32" for k in space.quant_knobs}})


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_splits):
    """A real search on the tiny net: a plan pruned hard, a lightly pruned one, the unchanged one; budget 2."""
    tmp = tmp_path_factory.mktemp("early_stop")
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=10)],
              objectives=OBJECTIVES, constraints=[Constraint("accuracy_drop", 1.0)],
              search=SearchSettings(study_name="es", n_trials=2, sampler="random"),
              run_dir=tmp / "run", cache_dir=tmp / "cache", model_key="tiny",
              baseline_training=FinetuneSettings(steps=120, log_every=40),
              finetune=FinetuneSettings(steps=15, log_every=5), prune=PruneSpec(ratios=(0.0, 0.125, 0.75)),
              quant=QuantSpec(precisions=("fp32", "int8")),
              tracking=TrackingSettings(uri=f"sqlite:///{tmp}/mlflow.db", experiment="es"), early_stop=EarlyStop())
    space = preflight(job)[1]
    job.run_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="es", storage=job.storage_url, directions=["maximize", "minimize"])
    for prune in ({k.name: 0.75 for k in space.prune_knobs}, {"prune.layer2.conv1": 0.125}, {}):
        study.enqueue_trial(plan_of(space, prune).params())
    return job, run_search(job)


def test_a_hopeless_plan_is_recorded_pruned_with_its_reason(searched):
    job, outcome = searched
    hard = outcome.study.trials[0]
    assert hard.state == TrialState.PRUNED
    assert hard.user_attrs["pruned_reason"].startswith("fine-tune step 5/15: accuracy drop")
    assert "accuracy_drop <= 1" in hard.user_attrs["pruned_reason"]
    assert hard.user_attrs["early_stop"]["step"] == 5
    assert set(hard.user_attrs["timings"]) == {"prune", "finetune", "total"}
    assert "error" not in hard.user_attrs and "result" not in hard.user_attrs
    assert not (job.run_dir / "trials" / "0000" / "model.onnx").exists()  # never exported


def test_a_lightly_pruned_plan_is_not_stopped_and_the_budget_counts_completed_trials_only(searched):
    job, outcome = searched
    states = [t.state for t in outcome.study.trials if t.state.is_finished()]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]  # n_trials=2 completed
    light = outcome.study.trials[1]
    assert light.user_attrs["result"]["plan"]["prune"]["layer2.conv1"] == 0.125
    assert outcome.ending == "complete"


def test_the_mlflow_run_of_a_stopped_trial_says_pruned_and_why(searched):
    job, outcome = searched
    client = MlflowClient(job.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("es").experiment_id], "tags.kind = 'trial'")
    by_trial = {int(r.data.tags["trial"]): r for r in runs}
    hard = by_trial[0]
    assert hard.info.status == "FINISHED"
    assert hard.data.tags["state"] == "PRUNED"
    assert hard.data.tags["pruned_reason"] == outcome.study.trials[0].user_attrs["pruned_reason"]
    assert hard.data.tags["pareto"] == "false"
    assert "time_finetune_s" in hard.data.metrics and "early_stop_subset_drop" in hard.data.metrics
    assert "accuracy" not in hard.data.metrics
    assert by_trial[1].data.tags["state"] == "COMPLETE"
    # the checks a completed fine-tune passed show on the same chart as the stopped one
    passed = client.get_metric_history(by_trial[1].info.run_id, "early_stop_subset_drop")
    assert [m.step for m in passed] == [5, 10]
    light = outcome.study.trials[1].user_attrs["result"]["checks"]
    assert [m.value for m in passed] == pytest.approx([c[1] for c in light])


def test_the_progress_line_says_stopped_early(searched, caplog):
    from search.progress import Progress

    job, outcome = searched
    with caplog.at_level("INFO", logger="autosqueeze"):
        Progress(2, None).trial_done(outcome.study, outcome.study.trials[0], 1)
    assert "trial 0 stopped early" in caplog.text and "failed" not in caplog.text


def test_sync_replays_a_stopped_trial_as_pruned(searched, tmp_path):
    from search.inspect.sync import sync
    from search.inspect.tracking import Tracker

    job, outcome = searched
    tracker = Tracker(TrackingSettings(uri=f"sqlite:///{tmp_path}/missed.db", experiment="es"))
    assert sync(outcome.study, tracker, OBJECTIVES, params={}) == 3
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'trial'")
    assert {int(r.data.tags["trial"]): r.data.tags["state"] for r in runs} == {0: "PRUNED", 1: "COMPLETE",
                                                                                2: "COMPLETE"}
    assert sync(outcome.study, tracker, OBJECTIVES, params={}) == 0  # a PRUNED run counts as logged


@pytest.mark.parametrize("rival", [None, Rival(number=99, drop=-50.0)], ids=["no-rival", "unbeatable-rival"])
def test_the_trial_holds_the_fine_tune_to_the_rival_its_screen_found(tmp_path, small_splits, rival):
    """run_trial hands what the prescreen returned to the fine-tune's checks; the loose constraint never stops it."""
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=5)],
              objectives=OBJECTIVES, constraints=[Constraint("accuracy_drop", 100.0)],
              search=SearchSettings(study_name="rival", n_trials=1), run_dir=tmp_path / "run",
              cache_dir=tmp_path / "cache", model_key="tiny", baseline_training=FinetuneSettings(steps=60),
              finetune=FinetuneSettings(steps=15, log_every=5), prune=PruneSpec(ratios=(0.0, 0.5)),
              quant=QuantSpec(precisions=("fp32", "int8")), tracking=None)
    study = optuna.create_study(directions=["maximize", "minimize"])
    ctx = build_context(job, study, prepare(job))
    ctx = replace(ctx, early_stop=stop_rule(EarlyStop(), job.constraints, baseline=ctx.baseline, val=ctx.data.val))
    plan = plan_of(ctx.space, {k.name: 0.5 for k in ctx.space.prune_knobs})
    seen = []

    def screen(figures):
        seen.append(figures)
        return rival

    if rival is None:
        result = run_trial(ctx, plan, number=0, screen=screen)
        assert result.metrics["accuracy_drop"] < 100
        assert [c[0] for c in result.checks] == [5, 10]  # both checks passed, and kept with the result
        assert TrialResult.from_attrs(0, result.to_attrs()).checks == result.checks
    else:
        with pytest.raises(HopelessTrial) as info:
            run_trial(ctx, plan, number=0, screen=screen)
        assert info.value.step == 5 and info.value.rival == 99
    assert len(seen) == 1 and "size_bytes" in seen[0]
