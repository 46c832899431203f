"""The NSGA-II sampler counts enqueued reference plans as members of its first generation."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from search.sampler import SeededNSGAIISampler, make_sampler

KEY = SeededNSGAIISampler._get_generation_key()
CHOICES = ("fp32", "int8", "int4")


def objective(trial: optuna.Trial) -> tuple[float, float]:
    picks = [trial.suggest_categorical(f"quant.layer{i}", CHOICES) for i in range(4)]
    # all-int8 is the best plan on both objectives; it is only ever enqueued, never drawn
    return (picks.count("int8") * 2.0 + picks.count("fp32"), -float(picks.count("int4")))


def run(population: int = 4, trials: int = 12) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=make_sampler("nsga2", seed=3, population_size=population))
    study.enqueue_trial({f"quant.layer{i}": "int8" for i in range(4)})
    study.enqueue_trial({f"quant.layer{i}": "fp32" for i in range(4)})
    study.optimize(objective, n_trials=trials)
    return study


def test_enqueued_trials_join_generation_zero():
    study = run()
    generations = [t.system_attrs.get(KEY) for t in study.trials]
    assert generations[:4] == [0, 0, 0, 0]  # two references + two random plans fill population 4
    assert generations[4] == 1


def test_reference_plans_are_bred_from():
    study = run()
    parent_ids = study._storage.get_study_system_attrs(study._study_id)[f"{SeededNSGAIISampler.__name__}:parent:1"]
    best = study.trials[0]
    assert best._trial_id in parent_ids


def test_the_plan_that_changes_nothing_is_evaluated_but_never_bred_from():
    unchanged = {f"quant.layer{i}": "fp32" for i in range(4)}

    def parents(sampler: optuna.samplers.BaseSampler) -> tuple[optuna.Study, list[int]]:
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        study.enqueue_trial(unchanged)
        study.optimize(objective, n_trials=10)
        ids = study._storage.get_study_system_attrs(study._study_id)[f"{SeededNSGAIISampler.__name__}:parent:1"]
        return study, ids

    study, ids = parents(make_sampler("nsga2", seed=3, population_size=4))
    assert study.trials[0]._trial_id in ids  # an extreme of the front (no int4): NSGA-II breeds from it
    study, ids = parents(make_sampler("nsga2", seed=3, population_size=4, unchanged=unchanged))
    assert study.trials[0].params == unchanged and study.trials[0].system_attrs.get(KEY) == 0
    assert study.trials[0]._trial_id not in ids and len(ids) == 3  # the rest of generation 0


def test_unknown_sampler_names_the_allowed_ones():
    with pytest.raises(ValueError, match="nsga2, tpe, gp, random"):
        make_sampler("grid", seed=0, population_size=4)


RATIOS = (0.0, 0.25, 0.5)
LATE = tuple(f"prune.late{i}" for i in range(6))
EARLY = tuple(f"prune.early{i}" for i in range(6))


def stage_objective(trial: optuna.Trial) -> tuple[float, float]:
    """Pays only when every late knob is at 0.5 (the hand plan's shape); early pruning only costs."""
    late = [trial.suggest_categorical(n, RATIOS) for n in LATE]
    early = [trial.suggest_categorical(n, RATIOS) for n in EARLY]
    return float(all(r == 0.5 for r in late)), -sum(early)


def stage_search(prob: float, trials: int = 40) -> optuna.Study:
    sampler = make_sampler("nsga2", seed=1, population_size=6, blocks=(LATE, EARLY), block_move_prob=prob)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.optimize(stage_objective, n_trials=trials)
    return study


def test_a_block_move_sets_the_whole_block_to_one_new_value():
    study = stage_search(prob=1.0, trials=14)
    moved = [t for t in study.trials if "block_move" in t.user_attrs]
    assert len(moved) == 14 - 6  # every bred child, none of the random first generation
    for trial in moved:
        move = trial.user_attrs["block_move"]
        block = LATE if move["first"] in LATE else EARLY
        assert {trial.params[n] for n in block} == {move["value"]}
        assert move["knobs"] == 6


def test_block_moves_reach_a_plan_that_per_knob_breeding_does_not():
    # six knobs must all hold 0.5 at once; each partial step is worth nothing
    assert max(t.values[0] for t in stage_search(prob=0.5).trials) == 1.0
    assert max(t.values[0] for t in stage_search(prob=0.0).trials) == 0.0


def test_block_move_skips_values_not_every_knob_offers():
    from optuna.distributions import CategoricalDistribution

    from search.sampler import block_move

    space = {"quant.a": CategoricalDistribution(["fp32", "int8", "int4"]),
             "quant.b": CategoricalDistribution(["fp32", "int8"])}
    rng = np.random.RandomState(0)
    for _ in range(20):  # the only value shared and not already held by most is fp32
        assert block_move(["quant.a", "quant.b"], space, {"quant.a": "int8", "quant.b": "int8"}, rng) == \
            {"quant.a": "fp32", "quant.b": "fp32"}


def test_gp_sampler_runs_a_constrained_multi_objective_study():
    sampler = make_sampler("gp", seed=0, population_size=4)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)

    def constrained(trial: optuna.Trial) -> tuple[float, float]:
        values = objective(trial)
        trial.set_user_attr("constraints", [1.0 - values[0]])  # feasible from one int8 or two fp32 layers on
        return values

    study.optimize(constrained, n_trials=7)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 7


@pytest.mark.parametrize("name", ["nsga2", "tpe", "gp", "random"])
def test_a_stopped_trial_stores_finite_constraints_so_browsers_can_read_the_study(name):
    """optuna-dashboard sends the stored constraints as JSON; an inf there is ``Infinity``, which JSON.parse refuses."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed=0,
                                                                                          population_size=4))

    def stopped(trial: optuna.Trial) -> tuple[float, float]:
        trial.suggest_categorical("quant.fc", CHOICES)
        raise optuna.TrialPruned()  # what the early-stopping rule and the prescreen do

    study.optimize(stopped, n_trials=1)
    stored = study.trials[0].system_attrs.get("constraints")
    if stored is not None:  # a sampler without constraints stores none
        json.dumps(stored, allow_nan=False)
        assert all(v > 0 for v in stored)  # still infeasible


STRUCTURE = {f"prune.g{i}": 0.0 for i in range(6)}
PRECISIONS = tuple(f"quant.l{i}" for i in range(3))


def structured_objective(trial: optuna.Trial) -> tuple[float, float]:
    """Pruning buys size and costs accuracy; int8 buys size; plans pruning g0 at 0.5 are infeasible."""
    ratios = [trial.suggest_categorical(n, RATIOS) for n in STRUCTURE]
    picks = [trial.suggest_categorical(n, ("fp32", "int8")) for n in PRECISIONS]
    trial.set_user_attr("constraints", [1.0 if ratios[0] == 0.5 else -1.0])
    return -sum(ratios), sum(ratios) + picks.count("int8") * 0.1


def structure_search(prob: float, trials: int = 30) -> optuna.Study:
    sampler = make_sampler("nsga2", seed=2, population_size=6, structure=STRUCTURE, keep_structure_prob=prob)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.optimize(structured_objective, n_trials=trials)
    return study


def test_a_kept_structure_child_copies_a_feasible_pruned_member_and_differs_elsewhere():
    study = structure_search(prob=1.0)
    kept = [t for t in study.trials if "kept_structure" in t.user_attrs]
    assert len(kept) >= 20  # nearly every bred child once a pruned member is feasible
    for child in kept:
        member = study.trials[child.user_attrs["kept_structure"]]
        assert member.number < child.number
        assert member.user_attrs["constraints"] == [-1.0]  # feasible
        assert any(member.params[n] != 0.0 for n in STRUCTURE)  # was fine-tuned
        assert all(child.params[n] == member.params[n] for n in STRUCTURE)
        assert any(child.params[n] != member.params[n] for n in PRECISIONS)


def test_the_move_repeats_fine_tuned_structures_far_more_often_than_breeding():
    def repeats(study: optuna.Study) -> int:
        seen, count = set(), 0
        for t in study.trials:
            key = tuple(t.params[n] for n in STRUCTURE)
            count += key in seen and any(key)
            seen.add(key)
        return count

    assert not any("kept_structure" in t.user_attrs for t in structure_search(prob=0.0).trials)
    kept, bred = repeats(structure_search(prob=1.0)), repeats(structure_search(prob=0.0))
    assert kept >= 20 and kept > 2 * bred


def test_no_move_while_no_feasible_member_was_pruned():
    from optuna.distributions import CategoricalDistribution

    from search.sampler import keep_structure

    study = optuna.create_study(directions=["maximize", "maximize"])
    unpruned = {**{n: 0.0 for n in STRUCTURE}, **{n: "int8" for n in PRECISIONS}}
    infeasible = {**unpruned, "prune.g0": 0.5}
    for params, violation in ((unpruned, -1.0), (infeasible, 1.0)):
        study.enqueue_trial(params, user_attrs={"constraints": [violation]})
    study.optimize(lambda t: (0.0, 0.0) if not [t.suggest_categorical(n, RATIOS) for n in STRUCTURE]
                   or not [t.suggest_categorical(n, ("fp32", "int8")) for n in PRECISIONS] else (0.0, 0.0),
                   n_trials=2)
    space = {**{n: CategoricalDistribution(RATIOS) for n in STRUCTURE},
             **{n: CategoricalDistribution(("fp32", "int8")) for n in PRECISIONS}}
    assert keep_structure(study, STRUCTURE, space, dict(unpruned), np.random.RandomState(0)) is None
