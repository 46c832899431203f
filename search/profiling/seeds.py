"""Structured starting points drawn from the profile, queued after the reference plans.

NSGA-II breeds with uniform crossover and 1/n mutation, which moves a few knobs at a time; a
plan that needs many groups pruned together (the low-resolution half of a network) is out of
its reach in a few dozen trials. Greedy allocations over the profile put such plans in the
first generation: the groups that cost least accuracy per parameter (or MAC) removed get the
large ratio until a budget is reached, every layer int8 but the few whose int8 error is far
worse than the rest.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from search.sampler import constraint_violations
from spaces.base import Plan
from spaces.space import layer_of

if TYPE_CHECKING:
    import optuna

    from search.profiling.profile import Profile, ProfileSettings
    from spaces.space import Space

log = logging.getLogger(__name__)
ATTR = "seeds_enqueued"
LADDER_ATTR = "seed_ladder"  # {axis: the largest budget the ladder queued on it}
OVERSHOOT = 0.25


def sqnr_outliers(profile: Profile, *, margin_db: float, max_layers: int) -> list[str]:
    """Layers whose own int8 SQNR is ``margin_db`` below the median, worst first, at most ``max_layers``."""
    added = {layer.name: layer.int8_added_db for layer in profile.layers if math.isfinite(layer.int8_added_db)}
    if not added:
        return []
    median = float(np.median(list(added.values())))
    worst = sorted((db, name) for name, db in added.items() if db < median - margin_db)
    return [name for _, name in worst[:max_layers]]


def fp32_outliers(profile: Profile, *, margin_db: float, max_layers: int, min_gain: float) -> list[str]:
    """The SQNR outliers that the seeds keep fp32: those whose measured gain is at least ``min_gain`` points.

    A profile stored before gains were measured keeps every SQNR outlier, as it did then.
    """
    gains = {layer.name: layer.fp32_gain for layer in profile.layers}
    return [name for name in sqnr_outliers(profile, margin_db=margin_db, max_layers=max_layers)
            if gains.get(name) is None or gains[name] >= min_gain]


def greedy_groups(profile: Profile, *, ratio: float, budget: float, by: str = "params") -> tuple[list[str], float]:
    """Groups cheapest in accuracy per share of ``by`` removed at ``ratio``, until ``budget`` is removed.

    A group that would overshoot the budget by more than ``OVERSHOOT`` of it is passed over for
    the next in the ranking. Returns the groups and the share they remove, summed over groups
    (coupled groups overlap a little, so it is an estimate). A drop below one sample's worth
    counts as that much, so among free groups the one removing more comes first.
    """
    floor = 100.0 / max(profile.samples, 1)
    ranked = []
    for group in profile.groups:
        point = group.at(ratio)
        share = 0.0 if point is None else (point.params_share if by == "params" else point.macs_share)
        if share > 0:
            ranked.append((max(point.drop, floor) / share, group.name, share))
    chosen, removed = [], 0.0
    for _, name, share in sorted(ranked):
        if removed >= budget:
            break
        if removed + share <= budget * (1 + OVERSHOOT):
            chosen.append(name)
            removed += share
    if not chosen and ranked:  # every group alone overshoots: the smallest one comes nearest
        _, name, removed = min(ranked, key=lambda row: row[2])
        chosen = [name]
    return chosen, removed


@dataclass(frozen=True)
class Seed:
    """One seed plan, and the budget it was drawn for: a share of ``by`` ("params" or "macs") pruned away."""

    text: str
    plan: Plan
    by: str
    budget: float
    groups: tuple[str, ...] = ()
    removed: float = 0.0  # the share of ``by`` the groups remove (estimated from the profile)


def seed_plan(space: Space, profile: Profile, settings: ProfileSettings, *, budget: float, by: str) -> Seed:
    """The plan pruning the groups cheapest per ``by`` removed until ``budget`` of it is gone, int8 elsewhere."""
    ratio = max(profile.ratios)
    kept = fp32_outliers(profile, margin_db=settings.fp32_margin_db, max_layers=settings.fp32_max_layers,
                         min_gain=settings.fp32_min_gain)
    quant = {layer_of(k.name): "fp32" if layer_of(k.name) in kept else "int8" for k in space.quant_knobs}
    groups, removed = greedy_groups(profile, ratio=ratio, budget=budget, by=by)
    prune = {layer_of(k.name): ratio if layer_of(k.name) in groups else 0.0 for k in space.prune_knobs}
    text = (f"{by} budget {budget:.0%}: prune {ratio:g} on the {len(groups)} groups cheapest per {by[:-1]} "
            f"(~{removed:.0%} of {by}), int8" + (f" but fp32 {', '.join(kept)}" if kept else ""))
    return Seed(text, Plan(prune=prune, quant=quant), by, budget, tuple(groups), removed)


def seed_plans(space: Space, profile: Profile, settings: ProfileSettings) -> list[Seed]:
    """A seed for each budget, duplicates dropped, in budget order."""
    if not profile.ratios:
        return []
    budgets = [(b, "params") for b in settings.budgets] + ([(settings.mac_budget, "macs")]
                                                           if settings.mac_budget else [])
    seeds: dict[Plan, Seed] = {}
    for budget, by in budgets:
        seed = seed_plan(space, profile, settings, budget=budget, by=by)
        seeds.setdefault(seed.plan, seed)
    # Then each plan again with the kinds that name a seed value (share: 6 bits), after all plain ones so that
    # a small budget keeps the plain seeds. Without such kinds in space.kinds the seeds are as they always were.
    for seed in list(seeds.values()):
        plan = space.seeded(seed.plan)
        added = ", ".join(f"{k.name} {k.seed}" for k in space.kinds if k.seed is not None and plan.of(k.name))
        if plan not in seeds:
            seeds[plan] = replace(seed, text=f"{seed.text} + {added}", plan=plan)
    return list(seeds.values())


def enqueue_seeds(study: optuna.Study, space: Space, profile: Profile, settings: ProfileSettings, *,
                  budget: int | None = None) -> int:
    """Queue the seed plans not queued yet, as many as the budget has room for; returns how many.

    A study records the seeds it queued, so a resume with a larger budget queues the rest.
    """
    queued = list(study.user_attrs.get(ATTR) or [])
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    room = math.inf if budget is None else budget - len(study.get_trials(deepcopy=False, states=live))
    added = 0
    for seed in seed_plans(space, profile, settings):
        if added >= room:
            break
        if seed.text in queued:
            continue
        queued.append(seed.text)
        added += _enqueue(study, space, seed)
    if queued != list(study.user_attrs.get(ATTR) or []):
        study.set_user_attr(ATTR, queued)
    return added


def _enqueue(study: optuna.Study, space: Space, seed: Seed) -> int:
    try:
        space.check(seed.plan)
    except ValueError as exc:
        log.warning("seed plan skipped (%s): %s", seed.text, exc)
        return 0
    study.enqueue_trial(space.complete(seed.plan).params(), skip_if_exists=True,
                        user_attrs={"seed": seed.text, "seed_budget": [seed.by, seed.budget]})
    return 1


class SeedLadder:
    """After each trial: a seed that ended feasible with room to spare queues a larger one on its axis.

    The configured budgets are a guess made before anything was fine-tuned. When the largest seed of an
    axis (params or MACs) ends with at least ``ladder_headroom`` to spare under every constraint, the
    constraint allows more, so the next seed is drawn ``ladder_step`` further along that axis (the same
    greedy ranking; further steps while the groups would remove no more), until one ends infeasible or
    nothing more can be removed. Queued seeds take their place in the budget like any other trial.
    """

    def __init__(self, space: Space, profile: Profile, settings: ProfileSettings, *, budget: int | None) -> None:
        self.space, self.profile, self.settings, self.budget = space, profile, settings, budget

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        axis = trial.user_attrs.get("seed_budget")
        step = self.settings.ladder_step
        if step is None or axis is None or trial.state != TrialState.COMPLETE or not self.profile.ratios:
            return
        by, budget = axis
        violations = constraint_violations(trial)  # without constraints nothing says how much room is left
        if not violations or max(violations) > -self.settings.ladder_headroom:
            return
        tops = dict(study.user_attrs.get(LADDER_ATTR) or {})
        if budget < tops.get(by, max(self._configured(by), default=budget)):
            return  # a larger seed on this axis is queued or done; it decides
        current = seed_plan(self.space, self.profile, self.settings, budget=budget, by=by)
        nxt = budget
        while (nxt := round(nxt + step, 6)) < 1:
            seed = seed_plan(self.space, self.profile, self.settings, budget=nxt, by=by)
            if seed.removed > current.removed + 1e-9:
                break
        else:
            return
        live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        if self.budget is not None and len(study.get_trials(deepcopy=False, states=live)) >= self.budget:
            return
        study.set_user_attr(LADDER_ATTR, {**tops, by: nxt})
        if _enqueue(study, self.space, replace(seed, text=f"{seed.text} (after trial {trial.number})")):
            log.info("trial %d (seed, %s budget %.0f%%) left room under the constraints: queued the %s budget "
                     "%.0f%% seed", trial.number, by, 100 * budget, by, 100 * nxt)

    def _configured(self, by: str) -> list[float]:
        return list(self.settings.budgets) if by == "params" else [self.settings.mac_budget or 0.0]
