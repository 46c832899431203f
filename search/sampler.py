"""Optuna samplers for the search, with the hand-made reference plans counted as NSGA-II parents."""
from __future__ import annotations

from typing import Sequence

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial

SAMPLERS = ("nsga2", "tpe", "random")


class SeededNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II whose first generation includes the enqueued trials.

    Optuna stamps a trial's generation only when it samples relative parameters, which an
    enqueued trial never does: the reference plans (fp32, uniform int8, uniform prune + int8)
    would be evaluated and then ignored as parents, and the next generation bred only from
    random plans. Stamping them at the start makes them members of the current generation.
    """

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params"):
            self.get_trial_generation(study, trial)
        super().before_trial(study, trial)


def constraint_violations(trial: FrozenTrial) -> Sequence[float]:
    return trial.user_attrs.get("constraints", [float("inf")])


def make_sampler(name: str, *, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return SeededNSGAIISampler(population_size=population_size, seed=seed,
                                   constraints_func=constraint_violations)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraint_violations, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"search.sampler={name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
