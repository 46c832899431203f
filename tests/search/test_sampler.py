"""The NSGA-II sampler counts enqueued reference plans as members of its first generation."""
from __future__ import annotations

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


def test_unknown_sampler_names_the_allowed_ones():
    with pytest.raises(ValueError, match="nsga2, tpe, random"):
        make_sampler("grid", seed=0, population_size=4)
