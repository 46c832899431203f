"""Where each method's time went: trials stopped, skipped and reused, fine-tune cost, and fronts over time.

Every figure here reads the study's own records (trial states, user attributes and timestamps),
so it can be recomputed from the committed studies without running anything again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.inspect import pareto
from search.study import feasible
from search.trials.trial import TrialResult


@dataclass(frozen=True)
class Spend:
    completed: int
    early_stopped: int
    prescreened: int
    reused: int
    finetune_s: float        # every trial's fine-tune, stopped ones included
    per_completed_s: float   # the above over the completed trials: what a completed trial cost in fine-tuning
    steps: int               # fine-tune steps run, stopped trials included: the same count on a busy or idle machine
    loaded: int = 0          # completed trials that loaded a same-structure trial's fine-tuned weights
    against_rival: int = 0   # early stops held to a rival's drop, not the constraint's

    def row(self, name: str) -> str:
        per = self.steps / self.completed if self.completed else 0.0
        return (f"| {name} | {self.completed} | {self.early_stopped} | {self.prescreened} | {self.reused} | "
                f"{self.finetune_s / 60:.1f} min | {self.per_completed_s:.1f} s | {self.steps} | {per:.1f} |")


HEADER = ("| method | completed | stopped early | skipped before fine-tune | reused | fine-tune, all trials | "
          "fine-tune per completed trial | fine-tune steps | steps per completed trial |\n"
          "|---|---|---|---|---|---|---|---|---|")


def spend(trials: Sequence[FrozenTrial]) -> Spend:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    prescreened = [t for t in stopped if "prescreen" in t.user_attrs]

    def finetune_s(t: FrozenTrial) -> float:
        timings = t.user_attrs.get("result", {}).get("timings") or t.user_attrs.get("timings") or {}
        return float(timings.get("finetune", 0.0))

    def steps(t: FrozenTrial) -> int:
        if "early_stop" in t.user_attrs:
            return int(t.user_attrs["early_stop"]["step"])
        curve = t.user_attrs.get("result", {}).get("curve") or []
        return int(curve[-1][0]) if curve and "reused_from" not in t.user_attrs else 0

    total = sum(finetune_s(t) for t in (*done, *stopped))
    return Spend(completed=len(done), early_stopped=len(stopped) - len(prescreened), prescreened=len(prescreened),
                 reused=sum("reused_from" in t.user_attrs for t in done), finetune_s=total,
                 per_completed_s=total / len(done) if done else 0.0, steps=sum(steps(t) for t in (*done, *stopped)),
                 loaded=sum("finetune_from" in t.user_attrs for t in done),
                 against_rival=sum("rival" in t.user_attrs.get("early_stop", {}) for t in stopped))


def started_at(study: optuna.Study, profile_s: float) -> float:
    """The study's first trial start, moved back by the profile measured before it (epoch seconds)."""
    first = min(t.datetime_start.timestamp() for t in study.trials if t.datetime_start)
    return first - profile_s


def finished_by(study: optuna.Study, trials: Sequence[TrialResult], seconds: float, t0: float) -> list[TrialResult]:
    """The feasible results among ``trials`` whose trial completed within ``seconds`` of ``t0``."""
    by_number = {t.number: t for t in study.trials}
    return [r for r in trials if feasible(by_number[r.number])
            and by_number[r.number].datetime_complete.timestamp() - t0 <= seconds]


def time_to(study: optuna.Study, trials: Sequence[TrialResult], t0: float, *, size_ratio: float,
            max_drop: float) -> float | None:
    """Seconds from ``t0`` until a feasible member at least ``size_ratio`` smaller within ``max_drop`` completed."""
    by_number = {t.number: t for t in study.trials}
    hits = [by_number[r.number].datetime_complete.timestamp() - t0 for r in trials
            if feasible(by_number[r.number]) and r.metrics["size_ratio"] >= size_ratio
            and r.metrics["accuracy_drop"] <= max_drop]
    return min(hits) if hits else None


def hv_by(study: optuna.Study, trials: Sequence[TrialResult], seconds: float, t0: float, objectives,
          base: Mapping[str, float]) -> float:
    """Hypervolume (in-search latencies) of the feasible front completed within ``seconds``."""
    done = finished_by(study, trials, seconds, t0)
    return pareto.hypervolume(pareto.front(done, objectives), objectives, base)
