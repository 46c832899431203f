"""Size and speed before fine-tuning: a plan's structure and precisions fix both.

Fine-tuning changes weights, not shapes or kernels, so the pruned model exported and quantized
before any fine-tune step ships the same bytes and runs the same kernels as it will after
(calibration ranges move, the op sequence does not). Measuring that file costs seconds; the
fine-tune costs minutes. A plan that a feasible member already beats on every objective but
accuracy can enter the front only by being more accurate than that member, so when the member is
within ``max_member_drop`` points of the baseline (a compressed plan gains at most that much)
the plan is dropped before it is fine-tuned, and recorded PRUNED with the member that beat it.
A beating member further from the baseline becomes the plan's :class:`Rival`: the fine-tune goes
on, and the early-stopping rule ends it once the plan cannot finish more accurate than the rival.
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna

from search.deploy.targets.base import Source
from search.trials.onnx_export import export_onnx

if TYPE_CHECKING:
    from torch import nn

    from evaluators.base import Objective
    from search.trials.trial import SearchContext, TrialResult
    from spaces.base import Plan

ACCURACY = "accuracy"
Screen = Callable[[Mapping[str, float]], "Rival | None"]


@dataclass(frozen=True)
class Prescreen:
    """``search.prescreen``: measure size and speed before fine-tuning, and skip what is already beaten."""

    enabled: bool = True
    max_member_drop: float = 0.1  # points below the baseline a beating member may be and still skip a plan
    margin: float = 0.03          # the member must be better by this share: latency repeats within ~5 % paired

    def __post_init__(self) -> None:
        if self.max_member_drop < 0 or not 0 <= self.margin < 1:
            raise ValueError(f"search.prescreen needs max_member_drop >= 0 and margin in [0, 1); got "
                             f"max_member_drop={self.max_member_drop}, margin={self.margin}")


class DominatedPlan(optuna.TrialPruned):
    """A feasible member beats the plan on size and speed before it is fine-tuned; Optuna records it PRUNED."""

    def __init__(self, reason: str, *, member: int, figures: Mapping[str, float]) -> None:
        super().__init__(reason)
        self.reason, self.member, self.figures = reason, member, dict(figures)
        self.timings: dict[str, float] = {}  # the stages the trial ran, filled in by run_trial

    def record(self) -> dict[str, Any]:
        return {"rule": "prescreen", "beaten_by": self.member, **{k: round(v, 6) for k, v in self.figures.items()}}


def structure_figures(ctx: SearchContext, model: nn.Module, plan: Plan, out_dir: Path) -> dict[str, float]:
    """Every metric but accuracy, measured on ``model`` exported and quantized as it is now."""
    work = out_dir / "prescreen"
    work.mkdir(parents=True, exist_ok=True)
    try:
        # the kinds that act after fine-tuning change what ships, so they are applied here too, on a copy
        finished = ctx.space.finish(copy.deepcopy(model), plan)
        onnx_path = export_onnx(finished, ctx.space.example_input, work / "model_fp32.onnx")
        path = ctx.space.apply_graph(onnx_path, work / "model.onnx", plan, ctx.data.calib)
        path = ctx.target.build(Source(onnx=path, model=finished, precisions=ctx.space.precisions(plan),
                                       example=ctx.space.example_input, calib=ctx.data.calib))
        figures: dict[str, float] = {}
        for evaluator in ctx.evaluators:
            if ACCURACY not in evaluator.metrics:
                figures.update(evaluator.measure(path, ctx.data.val))
        return {k: float(v) for k, v in figures.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the figures are kept


def beaters(figures: Mapping[str, float], members: Sequence[TrialResult], objectives: Sequence[Objective],
            margin: float) -> list[TrialResult]:
    """The members better than ``figures`` by ``margin`` on every objective but accuracy, in member order."""
    others = [o for o in objectives if o.metric != ACCURACY]
    if not others or len(others) == len(objectives) or any(o.metric not in figures for o in others):
        return []  # no accuracy objective, or an objective the figures cannot tell: nothing to compare

    def better(member: Mapping[str, float], o: Objective) -> bool:
        if o.direction == "minimize":
            return member[o.metric] <= figures[o.metric] * (1 - margin)
        return member[o.metric] >= figures[o.metric] * (1 + margin)

    return [m for m in members if "accuracy_drop" in m.metrics and all(better(m.metrics, o) for o in others)]


def beating_member(figures: Mapping[str, float], members: Sequence[TrialResult], objectives: Sequence[Objective],
                   settings: Prescreen) -> TrialResult | None:
    """The first member near the baseline's accuracy that is better than ``figures`` on every other objective."""
    return next((m for m in beaters(figures, members, objectives, settings.margin)
                 if m.metrics["accuracy_drop"] <= settings.max_member_drop), None)


@dataclass(frozen=True)
class Rival:
    """The most accurate feasible member that beats a plan on every objective but accuracy.

    The plan reaches the front only by ending more accurate than it; the fine-tune's
    early-stopping rule (search/trials/early_stop.py) holds the plan to that.
    """

    number: int
    drop: float


def rival_of(figures: Mapping[str, float], members: Sequence[TrialResult], objectives: Sequence[Objective],
             settings: Prescreen) -> Rival | None:
    return most_accurate(beaters(figures, members, objectives, settings.margin))


def most_accurate(members: Sequence[TrialResult]) -> Rival | None:
    found = min(members, key=lambda m: m.metrics["accuracy_drop"], default=None)
    return None if found is None else Rival(found.number, float(found.metrics["accuracy_drop"]))


def screen_against(members: Callable[[], Sequence[TrialResult]], objectives: Sequence[Objective],
                   settings: Prescreen | None) -> Screen | None:
    """What ``run_trial`` calls with a plan's figures before fine-tuning; None when switched off.

    It raises :class:`DominatedPlan`, or returns the plan's :class:`Rival` (None when no member beats it).
    """
    if settings is None or not settings.enabled:
        return None

    def screen(figures: Mapping[str, float]) -> Rival | None:
        beating = beaters(figures, members(), objectives, settings.margin)  # once: both rules read it
        member = next((m for m in beating if m.metrics["accuracy_drop"] <= settings.max_member_drop), None)
        if member is not None:
            shown = ", ".join(f"{o.metric} {member.metrics[o.metric]:.4g} vs {figures[o.metric]:.4g}"
                              for o in objectives if o.metric != ACCURACY)
            raise DominatedPlan(f"before fine-tuning, trial {member.number} (accuracy drop "
                                f"{member.metrics['accuracy_drop']:.2f}) is better on {shown}",
                                member=member.number, figures=figures)
        return most_accurate(beating)
    return screen
