"""Optuna samplers for the search, with the hand-made reference plans counted as NSGA-II parents."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials  # what Study.best_trials uses
from optuna.trial import FrozenTrial, TrialState

SAMPLERS = ("nsga2", "tpe", "gp", "random")


class SeededNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II whose first generation includes the enqueued trials, and whose children may move a block.

    Optuna stamps a trial's generation only when it samples relative parameters, which an
    enqueued trial never does: the reference plans (fp32, uniform int8, uniform prune + int8)
    would be evaluated and then ignored as parents, and the next generation bred only from
    random plans. Stamping them at the start makes them members of the current generation.
    """

    def __init__(self, *, blocks: Sequence[Sequence[str]] = (), block_move_prob: float = 0.0,
                 structure: Mapping[str, Any] | None = None, keep_structure_prob: float = 0.0,
                 unchanged: Mapping[str, Any] | None = None, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.blocks, self.block_move_prob = [tuple(b) for b in blocks], block_move_prob
        self.structure, self.keep_structure_prob = dict(structure or {}), keep_structure_prob
        self.unchanged = dict(unchanged or {})
        self.move_rng = np.random.RandomState(seed)

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """NSGA-II's parents, without the plan that changes nothing (``unchanged``: every knob neutral).

        That reference is the front's most accurate member, and an extreme one, so NSGA-II's crowding
        distance makes it a parent in every generation; uniform crossover with it hands each child about
        half of its knobs neutral. On MobileNetV2 (experiments/mobilenet_v2) 20 of 36 trials were such
        children, with 9 to 40 fp32 layers and speedups of 0.95-1.32x: the search spent over half its budget
        between the baseline and the plans it started from. Neutral values still come from mutation and
        from the other parents.
        """
        population = self.get_population(study, generation - 1) + self.get_parent_population(study, generation - 1)
        bred = [t for t in population if not self.unchanged or t.params != self.unchanged]
        return self._elite_population_selection_strategy(study, bred or population)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """NSGA-II's child (crossover and mutation), plus, now and then, one block move.

        A block is the knobs of one kind at one resolution (``Space.blocks``). Uniform crossover
        and 1/n mutation change a few of dozens of knobs at a time, and the plans on the way to
        "every late group at 0.5" are neither smaller nor faster, so the search never gets there;
        one block move does it in a single child. With probability ``block_move_prob`` a child
        gets one: a random block, set to a value its knobs share, other than the one most hold now.

        Before that, with probability ``keep_structure_prob``, a child instead keeps the structure of a
        feasible front member (:func:`keep_structure`) and is not moved: it costs no fine-tune.
        """
        params = super().sample_relative(study, trial, search_space)
        if params and self.structure and self.move_rng.rand() < self.keep_structure_prob:
            kept = keep_structure(study, self.structure, search_space, params, self.move_rng)
            if kept:
                member, moved = kept
                study._storage.set_trial_user_attr(trial._trial_id, "kept_structure", member)
                return {**params, **moved}
        if not params or not self.blocks or self.move_rng.rand() >= self.block_move_prob:
            return params
        block = [n for n in self.blocks[self.move_rng.randint(len(self.blocks))] if n in search_space]
        moved = block_move(block, search_space, params, self.move_rng)
        if moved:  # recorded as NSGA-II records a trial's generation, so a move can be traced to its result
            study._storage.set_trial_user_attr(trial._trial_id, "block_move",
                                               {"knobs": len(moved), "first": block[0], "value": moved[block[0]]})
        return {**params, **moved}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params"):
            self.get_trial_generation(study, trial)
        super().before_trial(study, trial)


def block_move(block: Sequence[str], space: dict[str, BaseDistribution], params: dict[str, Any],
               rng: np.random.RandomState) -> dict[str, Any]:
    """One value for every knob of ``block`` that offers it; ``{}`` when no other value is shared."""
    shared = None
    for name in block:
        dist = space[name]
        if not isinstance(dist, CategoricalDistribution):
            return {}
        shared = list(dist.choices) if shared is None else [c for c in shared if c in dist.choices]
    held = Counter(params[n] for n in block if n in params).most_common(1)
    values = [c for c in shared or () if not held or c != held[0][0]]
    if not values:
        return {}
    value = values[rng.randint(len(values))]
    return {name: value for name in block}


def keep_structure(study: Study, structure: Mapping[str, Any], space: dict[str, BaseDistribution],
                   params: dict[str, Any], rng: np.random.RandomState) -> tuple[int, dict[str, Any]] | None:
    """A feasible front member's structure knobs, to put into ``params``; ``None`` when there is none to keep.

    ``structure`` maps the knobs acting before fine-tuning to their neutral value (``Space.structure_knobs``).
    The child then differs from that member only in what acts after fine-tuning, so the trial loads the
    member's fine-tuned weights instead of fine-tuning (``study.trained_twin``): a precision variant of a good
    structure costs an export and a measurement, where a new structure costs a fine-tune. Members that were
    not fine-tuned (every structure knob neutral) are left out; when the child would repeat the member
    exactly, one of its other knobs takes another value.
    """
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.values is not None and all(v <= 0 for v in constraint_violations(t))
              and "reused_from" not in t.user_attrs]
    members = [t for t in _get_pareto_front_trials_by_trials(trials, study.directions)
               if any(t.params.get(n, neutral) != neutral for n, neutral in structure.items())]
    if not members:
        return None
    member = members[rng.randint(len(members))]
    kept = {n: v for n, v in member.params.items() if n in structure and n in space}
    rest = [n for n in space if n not in structure and isinstance(space[n], CategoricalDistribution)
            and len(space[n].choices) > 1]
    # Knobs NSGA-II mutates are missing from ``params`` and drawn later, maybe as the member holds them.
    if rest and not any(n in params and params[n] != member.params.get(n) for n in rest):
        name = rest[rng.randint(len(rest))]
        other = [c for c in space[name].choices if c != member.params.get(name)]
        kept[name] = other[rng.randint(len(other))]
    return member.number, kept


UNMEASURED = 1e9
"""The violation of a trial whose constraints were never measured (stopped early): infeasible, worse than any
measured one, and finite, since Optuna stores it and a browser cannot parse the ``Infinity`` JSON an inf becomes
(optuna-dashboard then shows no trial of the study at all)."""


def constraint_violations(trial: FrozenTrial) -> Sequence[float]:
    return trial.user_attrs.get("constraints", [UNMEASURED])


def make_sampler(name: str, *, seed: int, population_size: int, blocks: Sequence[Sequence[str]] = (),
                 block_move_prob: float = 0.0, structure: Mapping[str, Any] | None = None,
                 keep_structure_prob: float = 0.0, unchanged: Mapping[str, Any] | None = None
                 ) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return SeededNSGAIISampler(population_size=population_size, seed=seed, constraints_func=constraint_violations,
                                   blocks=blocks, block_move_prob=block_move_prob, structure=structure,
                                   keep_structure_prob=keep_structure_prob, unchanged=unchanged)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraint_violations, multivariate=True)
    if name == "gp":
        # random (or enqueued) plans first, as many as NSGA-II's first generation, then logCEHVI
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraint_violations,
                                         n_startup_trials=population_size, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"search.sampler={name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
