"""The structured-pruning knob: a channel ratio per torch-pruning group."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from spaces.base import PlanError, check_ratio

if TYPE_CHECKING:
    import optuna

IMPORTANCES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "random": lambda: tp.importance.RandomImportance(),
}


@dataclass(frozen=True)
class PruneRatio:
    """Fraction of output channels removed from one coupled group.

    Sampled from ``choices`` when given, else from ``[low, high]`` in ``step``s.
    """

    name: str
    choices: tuple[float, ...] | None = None
    low: float = 0.0
    high: float = 0.5
    step: float = 0.125

    def __post_init__(self) -> None:
        if self.choices is not None:
            if not self.choices:
                raise PlanError(f"{self.name}: ratio choices are empty; give at least one value in [0, 1)")
            object.__setattr__(self, "choices", tuple(check_ratio(self.name, r) for r in self.choices))
        else:
            check_ratio(self.name, self.low)
            check_ratio(self.name, self.high)
            if self.low > self.high or self.step <= 0:
                raise PlanError(f"{self.name}: ratio range needs low <= high and step > 0, got "
                                f"low={self.low}, high={self.high}, step={self.step}")

    def suggest(self, trial: optuna.trial.BaseTrial) -> float:
        if self.choices is not None:
            return float(trial.suggest_categorical(self.name, list(self.choices)))
        return trial.suggest_float(self.name, self.low, self.high, step=self.step)

    def allows(self, ratio: float) -> bool:
        if self.choices is not None:
            return ratio in self.choices
        steps = (ratio - self.low) / self.step  # only values on the grid Optuna samples from
        return self.low <= ratio <= self.high and abs(steps - round(steps)) < 1e-8


def prune(model: nn.Module, ratios: Mapping[str, float], example_input: torch.Tensor, *,
          ignored: Sequence[str] = (), round_to: int | None = None, importance: str = "l2") -> nn.Module:
    """A pruned copy of ``model``; the original is left untouched.

    ``ratios`` maps a group's root layer to the fraction of its channels to remove.
    ``round_to`` keeps channel counts multiples of it, which the int8 kernels run fastest.
    """
    if importance not in IMPORTANCES:
        raise PlanError(f"space.prune.importance={importance!r} is unknown; allowed: {', '.join(IMPORTANCES)}")
    pruned = copy.deepcopy(model).eval()
    active = {name: r for name, r in ratios.items() if r > 0}
    if not active:
        return pruned
    modules = dict(pruned.named_modules())
    missing = [n for n in active if n not in modules]
    if missing:
        raise PlanError(f"prune: no layer named {missing} in the model")
    # torch-pruning skips a group it would empty, so a ratio leaving less than one channel (one
    # multiple of round_to) pruned nothing at all: cap it to keep that minimum instead.
    keep = (round_to or 1) + 0.5
    widths = {n: getattr(modules[n], "out_channels", getattr(modules[n], "out_features", None)) for n in active}
    active = {n: r if not widths[n] else min(r, 1.0 - keep / widths[n]) for n, r in active.items()}
    active = {n: r for n, r in active.items() if r > 0}
    if not active:
        return pruned
    pruner = tp.pruner.MetaPruner(
        pruned, example_input,
        importance=IMPORTANCES[importance](),
        pruning_ratio=0.0,
        pruning_ratio_dict={modules[n]: r for n, r in active.items()},
        ignored_layers=[modules[n] for n in ignored],
        round_to=round_to,
    )
    pruner.step()
    return pruned
