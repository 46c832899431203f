"""The sensitivity profile: measured once per study, seeds drawn from it, latency-aware precision choices."""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from evaluators import Accuracy, Complexity, Constraint, Latency, Objective, Size
from search.trials.finetune import FinetuneSettings
from search.profiling.narrow import latency_choices, narrowed, weight_only_layers
from search.trials.onnx_export import export_onnx
from search.profiling.profile import (GroupProfile, LayerProfile, Profile, ProfileSettings, PrunePoint, load_or_measure,
                            stored_profile)
from search.profiling.measure import measure_profile
from search.inspect.report import write_report
from search.runner import Job, build_context, prepare, run_search
from search.profiling.seeds import greedy_groups, seed_plans, sqnr_outliers
from search.study import SearchSettings
from search.inspect.tracking import TrackingSettings
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from spaces.space import Space
from tinynet import tiny_net

OBJECTIVES = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize"),
              Objective("latency_ms", "minimize")]
SETTINGS = ProfileSettings(samples=200, latency_runs=10)
LIGHT = 0.1  # the latency share int4 layers may hold together: on the tiny net, one or two layers fit


def make_job(tmp: Path, splits, *, n_trials: int = 5) -> Job:
    return Job(make_model=tiny_net, data=splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=10), Complexity()],
               objectives=OBJECTIVES, constraints=[Constraint("accuracy_drop", 1.0)],
               search=SearchSettings(study_name="prof", n_trials=n_trials, sampler="nsga2", population_size=8),
               run_dir=tmp / "run", cache_dir=tmp / "cache", model_key="tiny",
               baseline_training=FinetuneSettings(steps=120, log_every=40), finetune=FinetuneSettings(steps=10),
               prune=PruneSpec(ratios=(0.0, 0.25, 0.5)),
               quant=QuantSpec(precisions=("fp32", "int8", "int4"), int4_max_latency_share=LIGHT),
               profile=SETTINGS, tracking=TrackingSettings(uri=f"sqlite:///{tmp}/mlflow.db", experiment="prof",
                                                           log_front_models=False))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_splits):
    job = make_job(tmp_path_factory.mktemp("profile"), small_splits)
    return job, run_search(job)


@pytest.fixture(scope="module")
def ctx(searched):
    job, outcome = searched
    return build_context(job, outcome.study, prepare(job))


def _synthetic(drops: dict[str, float], *, shares: dict[str, float] | None = None,
               layers: tuple[LayerProfile, ...] = ()) -> Profile:
    shares = shares or {name: 0.2 for name in drops}
    groups = tuple(GroupProfile(n, (PrunePoint(0.5, d, shares[n], shares[n]),)) for n, d in drops.items())
    return Profile(groups=groups, layers=layers, baseline_accuracy=90.0, samples=1000, seed=0)


def test_the_profile_is_deterministic_for_a_seed_and_round_trips_through_json(ctx):
    first, second = measure_profile(ctx, SETTINGS), measure_profile(ctx, SETTINGS)
    assert first.groups == second.groups
    assert [(x.name, x.int8_sqnr_db, x.int8_added_db, x.size_share) for x in first.layers] == \
           [(x.name, x.int8_sqnr_db, x.int8_added_db, x.size_share) for x in second.layers]
    assert first.ratios == (0.25, 0.5) and first.samples == 200
    assert sum(x.latency_share for x in first.layers) + first.latency_unassigned == pytest.approx(1.0, abs=1e-4)
    assert first.latency_unassigned < 0.2  # fused and renamed nodes are traced back to their layers
    assert sum(x.size_share for x in first.layers) == pytest.approx(1.0, abs=0.05)
    for group in first.groups:  # a larger ratio removes more
        low, high = group.points
        assert 0 < low.params_share < high.params_share and 0 < low.macs_share < high.macs_share
    assert Profile.from_json(first.to_json()) == first
    assert first.seconds["total"] > 0 and {"prune", "int8", "latency"} <= set(first.seconds)


def test_a_study_measures_its_profile_once_and_a_resume_reads_it_back(searched, monkeypatch):
    job, outcome = searched
    stored = stored_profile(outcome.study)
    assert stored is not None
    assert Profile.from_json((job.run_dir / "profile.json").read_text()) == stored

    def refuse(*_, **__):
        raise AssertionError("the profile was measured again")

    monkeypatch.setattr("search.profiling.measure.measure_profile", refuse)
    resumed = run_search(replace(job, search=replace(job.search, n_trials=6)))
    assert stored_profile(resumed.study) == stored
    assert load_or_measure(resumed.study, build_context(job, resumed.study, prepare(job)), SETTINGS) == stored


def test_the_first_generation_holds_the_references_then_the_profile_seeds(searched, ctx):
    job, outcome = searched
    study = optuna.load_study(study_name="prof", storage=job.storage_url)
    profile = stored_profile(study)
    space = narrowed(ctx.space, profile, study, quant=job.quant, objectives=job.objectives)
    expected = [(seed.text, seed.plan.params()) for seed in seed_plans(space, profile, SETTINGS)]
    assert [t.user_attrs.get("reference") for t in study.trials[:3]] == [True] * 3
    seeded = [(t.user_attrs["seed"], t.params or t.system_attrs["fixed_params"]) for t in study.trials
              if "seed" in t.user_attrs]
    # as many as the budget had room for: 2 of 5 trials (and a third once the resume test raised it to 6)
    assert len(seeded) >= 2 and seeded == expected[:len(seeded)]
    assert all(t.number >= 3 for t in study.trials if "seed" in t.user_attrs)


def test_seeds_follow_the_profiles_ranking_of_groups(ctx, tmp_path):
    """Half of layer2.conv1's channels are zeroed (weights, BN and the consumer's inputs): pruning them is free."""
    model = copy.deepcopy(ctx.baseline)
    with torch.no_grad():
        block = model.layer2
        for tensor in (block.conv1.weight, block.bn1.weight, block.bn1.bias):
            tensor[:16] = 0
        block.conv2.weight[:, :16] = 0
    path = export_onnx(model, ctx.space.example_input, tmp_path / "model.onnx")
    profile = measure_profile(replace(ctx, baseline=model, baseline_path=path), SETTINGS)
    drops = {g.name: g.at(0.5).drop for g in profile.groups}
    assert drops["layer2.conv1"] == min(drops.values()) == pytest.approx(0.0, abs=0.5)
    budgets = replace(SETTINGS, budgets=(0.3, 0.45), mac_budget=0.2)
    plans = seed_plans(ctx.space, profile, budgets)
    assert plans and all(seed.plan.prune["layer2.conv1"] == 0.5 for seed in plans)
    # the same shares, that group made the costliest: the same budgets prune other groups instead
    costly = replace(profile, groups=tuple(replace(g, points=tuple(replace(p, drop=100.0) for p in g.points))
                                           if g.name == "layer2.conv1" else g for g in profile.groups))
    assert all(seed.plan.prune["layer2.conv1"] == 0.0 for seed in seed_plans(ctx.space, costly, budgets))


def test_greedy_groups_take_the_cheapest_per_share_until_the_budget():
    profile = _synthetic({"a": 0.0, "b": 5.0, "c": 0.5}, shares={"a": 0.1, "b": 0.3, "c": 0.2})
    assert greedy_groups(profile, ratio=0.5, budget=0.25) == (["a", "c"], pytest.approx(0.3))
    swapped = _synthetic({"a": 5.0, "b": 0.0, "c": 0.5}, shares={"a": 0.1, "b": 0.3, "c": 0.2})
    assert greedy_groups(swapped, ratio=0.5, budget=0.25)[0] == ["b"]


@pytest.mark.parametrize("gain, kept", [(None, True), (0.5, True), (0.1, False), (-0.3, False)],
                         ids=["not measured (older profile)", "pays", "too little", "hurts"])
def test_seeds_keep_fp32_only_on_layers_whose_int8_error_is_far_worst_and_whose_fp32_pays(gain, kept):
    layers = tuple(LayerProfile(n, 30.0, db, 0.25, 0.25) for n, db in (("x", 42.0), ("y", 41.0), ("z", 43.0),
                                                                       ("w", 22.0)))
    space = Space.build(tiny_net(), torch.randn(1, 1, 28, 28), prune_spec=PruneSpec(ratios=(0.0, 0.5)),
                        quant_spec=QuantSpec(precisions=("fp32", "int8")))
    names = [k.name.partition(".")[2] for k in space.quant_knobs]
    layers = tuple(replace(x, name=n, fp32_gain=gain if x.name == "w" else None) for x, n in zip(layers, names))
    profile = _synthetic({"layer1.conv1": 0.0}, layers=layers)
    plan = seed_plans(space, profile, SETTINGS)[0].plan  # fp32_min_gain 0.2
    assert [n for n, p in plan.quant.items() if p == "fp32"] == ([names[3]] if kept else [])
    space.check(plan)


def test_the_profile_measures_what_fp32_wins_back_on_exactly_the_sqnr_outliers(ctx):
    settings = replace(SETTINGS, fp32_margin_db=0.0, fp32_max_layers=2)  # the two worst layers are candidates
    first, second = measure_profile(ctx, settings), measure_profile(ctx, settings)
    measured = {x.name: x.fp32_gain for x in first.layers if x.fp32_gain is not None}
    assert set(measured) == set(sqnr_outliers(first, margin_db=0.0, max_layers=2)) and len(measured) == 2
    assert measured == {x.name: x.fp32_gain for x in second.layers if x.fp32_gain is not None}
    assert all(abs(gain) < 100 for gain in measured.values()) and "fp32_gain" in first.seconds


def _tiny_space() -> Space:
    return Space.build(tiny_net(), torch.randn(1, 1, 28, 28), prune_spec=PruneSpec(ratios=(0.0, 0.5)),
                       quant_spec=QuantSpec(precisions=("fp32", "int8", "int4")))


def _heavy(space: Space, heavy: str) -> Profile:
    """One layer with 90 % of the latency; six with 1 % each and a fifth of its weight bytes."""
    layers = tuple(LayerProfile(k.name.partition(".")[2], 40.0, 45.0, *((0.9, 0.5) if heavy in k.name else (0.01, 0.1)))
                   for k in space.quant_knobs)
    return _synthetic({}, layers=layers)


AWARE = QuantSpec(int4_max_latency_share=0.1)


def test_int4_is_offered_only_where_latency_is_cheap_and_only_when_latency_is_an_objective():
    space, study = _tiny_space(), optuna.create_study(directions=["maximize"])
    profile = _heavy(space, "layer1.conv1")
    assert latency_choices(space, profile, max_share=0.1) == {"quant.layer1.conv1": ("fp32", "int8")}
    aware = narrowed(space, profile, study, quant=AWARE, objectives=OBJECTIVES)
    study.optimize(lambda t: float(aware.suggest(t).quant["layer1.conv1"] != "int4"), n_trials=20)
    values = [t.params["quant.layer1.conv1"] for t in study.trials]
    assert "int4" not in values and "int4" in {v for t in study.trials for v in t.params.values()}
    assert study.user_attrs["precision_choices"]["layer1.conv1"] == ["fp32", "int8"]
    for quant, objectives in ((QuantSpec(latency_aware=False), OBJECTIVES), (QuantSpec(), OBJECTIVES[:2])):
        same = narrowed(space, profile, optuna.create_study(), quant=quant, objectives=objectives)
        assert same.quant_knobs == space.quant_knobs


def test_int4_layers_share_one_latency_budget_spent_where_they_save_most_bytes():
    space = _tiny_space()
    names = [k.name.partition(".")[2] for k in space.quant_knobs]
    sizes = dict(zip(names, (0.01, 0.3, 0.05, 0.2, 0.1, 0.3, 0.04)))
    profile = _synthetic({}, layers=tuple(LayerProfile(n, 40.0, 45.0, 0.01, sizes[n]) for n in names))
    assert weight_only_layers(space, profile, max_share=0.025) == {"layer1.conv1", "layer2.conv2"}
    assert weight_only_layers(space, profile, max_share=1.0) == set(names)


def test_a_study_that_sampled_int4_on_a_now_heavy_layer_still_loads_and_runs(tmp_path):
    space, url = _tiny_space(), f"sqlite:///{tmp_path}/old.db"
    old = optuna.create_study(study_name="old", storage=url)
    old.enqueue_trial(space.uniform(0.0, "int4").params())
    old.optimize(lambda t: float(len(space.suggest(t).quant)), n_trials=1)
    profile = _heavy(space, "layer1.conv1")
    study = optuna.load_study(study_name="old", storage=url)
    bare = space.with_choices(latency_choices(space, profile, max_share=0.1))
    with pytest.raises(ValueError, match="dynamic value space"):  # why the study keeps what it recorded
        study.optimize(lambda t: float(len(bare.suggest(t).quant)), n_trials=1, catch=())
    kept = narrowed(space, profile, study, quant=AWARE, objectives=OBJECTIVES)
    study.optimize(lambda t: float(len(kept.suggest(t).quant)), n_trials=3)
    done = [t for t in optuna.load_study(study_name="old", storage=url).trials if t.state.name == "COMPLETE"]
    assert len(done) == 4 and done[0].params["quant.layer1.conv1"] == "int4"
    fresh = narrowed(space, profile, optuna.create_study(), quant=AWARE, objectives=OBJECTIVES)
    assert "int4" not in next(k for k in fresh.quant_knobs if k.name == "quant.layer1.conv1").choices


def test_the_search_offers_int4_only_within_the_latency_budget(searched, ctx):
    _, outcome = searched
    profile = stored_profile(outcome.study)
    offered = outcome.study.user_attrs["precision_choices"]
    light = weight_only_layers(ctx.space, profile, max_share=LIGHT)
    assert {name for name, choices in offered.items() if "int4" in choices} == light
    assert sum(profile.layer(name).latency_share for name in light) <= LIGHT
    for trial in outcome.study.trials:
        for name, distribution in trial.distributions.items():
            if name.startswith("quant."):
                assert list(distribution.choices) == offered[name.partition(".")[2]]


def test_the_studys_mlflow_run_holds_the_profile_and_its_plot(searched):
    job, outcome = searched
    client = MlflowClient(job.tracking.uri)
    logged = {a.path for a in client.list_artifacts(outcome.study.user_attrs["mlflow_parent_run_id"])}
    assert {"profile.json", "profile.png", "profile.html"} <= logged


def test_the_report_shows_the_profile(searched, tmp_path):
    _, outcome = searched
    page = write_report(outcome.study, OBJECTIVES, tmp_path / "report.html", export_hint=str).read_text()
    section = page.split("<h2>Sensitivity profile</h2>")[1].split("<h2>")[0]
    assert "int4 offered" in section and "<td class=l>layer2.conv1</td>" in section
    assert "% of the search" in section and (tmp_path / "plots" / "profile.png").is_file()


def test_with_share_in_the_space_each_seed_plan_comes_twice_plain_first_then_with_6_bits():
    profile = _synthetic({"layer1.conv1": 0.0, "layer2.conv1": 0.2, "down.0": 3.0})
    model, x = tiny_net(), torch.zeros(1, 1, 28, 28)
    settings = replace(SETTINGS, budgets=(0.2, 0.4), mac_budget=None)
    plain = seed_plans(Space.build(model, x), profile, settings)
    shared = seed_plans(Space.build(model, x, kinds=["prune", "quant", "share"]), profile, settings)
    assert len(shared) == 2 * len(plain)
    first, second = shared[:len(plain)], shared[len(plain):]
    assert [s.plan.prune for s in first] == [s.plan.prune for s in second] == [s.plan.prune for s in plain]
    assert all(set(s.plan.of("share").values()) <= {0} for s in first)
    assert all(set(s.plan.of("share").values()) == {6} and s.text.endswith("+ share 6") for s in second)


def ladder_case(drops: dict[str, float], *, violation: float, budget: float = 0.2, n_trials: int | None = 10):
    """A study holding one finished params-budget seed that ended ``violation`` from its constraint."""
    from optuna.distributions import CategoricalDistribution

    from search.profiling.seeds import SeedLadder, seed_plan

    space = Space.build(tiny_net(), torch.zeros(1, 1, 28, 28), prune_spec=PruneSpec(ratios=(0.0, 0.5)),
                        quant_spec=QuantSpec(precisions=("fp32", "int8")))
    profile = _synthetic(drops)
    settings = replace(SETTINGS, budgets=(budget,), mac_budget=None, ladder_step=0.15, ladder_headroom=0.25)
    seed = seed_plan(space, profile, settings, budget=budget, by="params")
    params = space.complete(seed.plan).params()
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: CategoricalDistribution([v, "other"]) for k, v in params.items()},
        values=[90.0, 1.0, 1.0], user_attrs={"seed": seed.text, "seed_budget": ["params", budget],
                                             "constraints": [violation]}))
    ladder = SeedLadder(space, profile, settings, budget=n_trials)
    ladder(study, study.trials[0])
    return seed, study.get_trials(states=(optuna.trial.TrialState.WAITING,)), lambda: ladder(study, study.trials[0])


DROPS = {"layer1.conv1": 0.0, "layer2.conv1": 0.2, "down.0": 3.0}  # each group 20 % of the parameters


def test_a_seed_with_room_to_spare_queues_the_next_larger_one_on_its_axis():
    seed, queued, _ = ladder_case(DROPS, violation=-0.6)
    assert len(queued) == 1
    bigger = queued[0]
    assert bigger.user_attrs["seed_budget"] == ["params", pytest.approx(0.35)]
    assert "after trial 0" in bigger.user_attrs["seed"]
    pruned = {k for k, v in bigger.system_attrs["fixed_params"].items() if k.startswith("prune.") and v}
    assert {f"prune.{g}" for g in seed.groups} < pruned  # the same groups, and the next cheapest one
    assert "prune.layer2.conv1" in pruned and "prune.down.0" not in pruned


@pytest.mark.parametrize("violation, n_trials", [(-0.1, 10), (0.4, 10), (-0.6, 1)],
                         ids=["too little room", "infeasible", "no budget left"])
def test_no_larger_seed_without_room_or_budget(violation, n_trials):
    assert ladder_case(DROPS, violation=violation, n_trials=n_trials)[1] == []


def test_the_ladder_stops_when_no_group_is_left_to_add():
    assert ladder_case({"layer1.conv1": 0.0}, violation=-0.6)[1] == []


def test_a_larger_seed_the_space_rejects_is_logged_and_not_retried(monkeypatch, caplog):
    def reject(self, plan):
        raise ValueError("plan outside the space")

    monkeypatch.setattr(Space, "check", reject)
    with caplog.at_level(logging.WARNING, logger="search.profiling.seeds"):
        _, queued, again = ladder_case(DROPS, violation=-0.6)
        assert queued == []
        assert caplog.text.count("seed plan skipped") == 1 and "plan outside the space" in caplog.text
        again()  # the axis's top moved past the rejected seed: the ladder does not try it once more
    assert caplog.text.count("seed plan skipped") == 1


def test_ladder_settings_are_checked():
    with pytest.raises(ValueError, match="ladder_step"):
        ProfileSettings(ladder_step=1.5)
    with pytest.raises(ValueError, match="ladder_headroom"):
        ProfileSettings(ladder_headroom=-1.0)
    assert ProfileSettings(ladder_step=None).ladder_step is None


def test_a_search_runs_the_larger_seed_its_first_seed_made_room_for(tmp_path, small_splits):
    job = make_job(tmp_path, small_splits, n_trials=5)
    job = replace(job, constraints=[Constraint("accuracy_drop", 100.0)],  # every plan has room to spare
                  profile=replace(SETTINGS, budgets=(0.2,), mac_budget=None, ladder_step=0.15))
    study = run_search(job).study
    seeds = [t for t in study.trials if "seed" in t.user_attrs]
    assert [t.number for t in seeds] == [3, 4]
    assert seeds[1].user_attrs["seed_budget"] == ["params", pytest.approx(0.35)]
    assert "after trial 3" in seeds[1].user_attrs["seed"]
    removed = [int(re.search(r"~(\d+)% of params", t.user_attrs["seed"]).group(1)) for t in seeds]
    assert removed[1] > removed[0]
